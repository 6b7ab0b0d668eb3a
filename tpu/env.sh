# Settings shared by the tpu/ scripts; override any of them in the environment.
: "${TPU_NAME:=recap-v4-256}"
: "${ZONE:=us-central2-b}"
: "${PROJECT:=$(gcloud config get-value project 2>/dev/null)}"
: "${ACCELERATOR_TYPE:=v4-256}"
: "${RUNTIME_VERSION:=tpu-ubuntu2204-base}"
: "${REPO_URL:=}"                      # where workers clone recap_jax from (or use tpu/install.sh --copy)
: "${REPO_DIR:=~/recap_jax}"
: "${CONFIG:=configs/v4_256.py}"
: "${CONFIG_ARGS:=}"                   # e.g. input=gs://b/datacomp,output=gs://b/recap,checkpoint=gs://b/ckpt
: "${LOG:=~/recap_caption.log}"
gcloud_tpu() { gcloud compute tpus tpu-vm "$@" --zone "$ZONE" --project "$PROJECT"; }
on_all_workers() { gcloud_tpu ssh "$TPU_NAME" --worker=all --command "$1"; }
