#!/usr/bin/env bash
# Create the TPU VM slice. Spot/preemptible capacity is cheapest; the caption job resumes after
# preemption (tpu/resume.sh). Usage: tpu/create_pod.sh [--spot]
set -euo pipefail
. "$(dirname "$0")/env.sh"
extra=()
[ "${1:-}" = "--spot" ] && extra+=(--spot)
gcloud_tpu create "$TPU_NAME" --accelerator-type "$ACCELERATOR_TYPE" --version "$RUNTIME_VERSION" "${extra[@]}"
gcloud_tpu describe "$TPU_NAME" --format='value(state,health)'
