#!/usr/bin/env bash
# Start the caption job on every worker, in the background, logging to $LOG on each worker.
# Safe to run again: finished output shards are kept and the rest is redone (resume).
set -euo pipefail
. "$(dirname "$0")/env.sh"
config="$CONFIG"
[ -n "$CONFIG_ARGS" ] && config="$CONFIG:$CONFIG_ARGS"
on_all_workers "cd $REPO_DIR && . .venv/bin/activate && pkill -f recap_jax.caption || true; nohup python -m recap_jax.caption --config '$config' $* > $LOG 2>&1 &"
echo "launched on all workers of $TPU_NAME; watch with tpu/watch.sh"
