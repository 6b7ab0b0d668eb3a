#!/usr/bin/env bash
# Install recap_jax with jax[tpu] on every worker. Usage: tpu/install.sh [--copy]
#   --copy: send this checkout (git archive of HEAD) instead of cloning REPO_URL.
set -euo pipefail
. "$(dirname "$0")/env.sh"
if [ "${1:-}" = "--copy" ]; then
  archive=$(mktemp --suffix .tar.gz)
  git -C "$(dirname "$0")/.." archive --format=tar.gz -o "$archive" HEAD
  gcloud_tpu scp "$archive" "$TPU_NAME":/tmp/recap_jax.tar.gz --worker=all
  on_all_workers "rm -rf $REPO_DIR && mkdir -p $REPO_DIR && tar -xzf /tmp/recap_jax.tar.gz -C $REPO_DIR"
else
  [ -n "$REPO_URL" ] || { echo "set REPO_URL or pass --copy" >&2; exit 2; }
  on_all_workers "rm -rf $REPO_DIR && git clone --depth 1 $REPO_URL $REPO_DIR"
fi
on_all_workers "cd $REPO_DIR && python3 -m venv .venv && . .venv/bin/activate && pip install -q -U pip && pip install -q -e '.[tpu]' && python -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.devices()[0].device_kind)'"
