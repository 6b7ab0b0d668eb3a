#!/usr/bin/env bash
# The last progress line of every worker (units, images/s, tokens/s, ETA), and whether it runs.
set -euo pipefail
. "$(dirname "$0")/env.sh"
on_all_workers "printf '%s ' \$(hostname); (pgrep -f recap_jax.caption >/dev/null && printf 'running ' || printf 'STOPPED '); grep -E '^\[caption\]|error' $LOG | tail -n 1"
