#!/usr/bin/env bash
# After a preemption: wait for the slice to be READY again (recreate a deleted spot slice), reinstall
# if the workers were wiped, and launch again; the job skips the shards already written.
set -euo pipefail
. "$(dirname "$0")/env.sh"
state=$(gcloud_tpu describe "$TPU_NAME" --format='value(state)' 2>/dev/null || echo MISSING)
case "$state" in
  READY) ;;
  MISSING) "$(dirname "$0")/create_pod.sh" --spot; "$(dirname "$0")/install.sh" --copy ;;
  PREEMPTED|STOPPED) gcloud_tpu start "$TPU_NAME" ;;
  *) echo "slice is $state; try again later" >&2; exit 1 ;;
esac
on_all_workers "test -d $REPO_DIR/.venv" || "$(dirname "$0")/install.sh" --copy
"$(dirname "$0")/launch.sh" "$@"
