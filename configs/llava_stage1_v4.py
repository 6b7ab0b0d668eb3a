"""LLaVA-1.5 stage 1 (feature alignment) with LLaMA-3-8B on a TPU v4 slice: the projector alone.

    python -m recap_jax.finetune --config configs/llava_stage1_v4.py \
        --config.model.checkpoint=gs://BUCKET/ckpt/llava-llama3-init \
        --config.data.path=gs://BUCKET/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json \
        --config.data.image_folder=gs://BUCKET/LLaVA-Pretrain/images --config.workdir=gs://BUCKET/runs/stage1

LLaVA-1.5's published stage-1 recipe: 558K LAION/CC/SBU caption pairs (in LLaVA's JSON format),
batch 256, learning rate 1e-3, 1 epoch, 3% warm-up then cosine, no weight decay; the vision tower
and the LLM stay frozen. Run it on every worker of the slice (tpu/launch.sh does).
"""

from recap_jax.training.defaults import tpu_pod_config


def get_config():
    c = tpu_pod_config()
    c.workdir = "gs://YOUR_BUCKET/runs/llava-llama3-stage1"
    # A converted checkpoint of CLIP ViT-L/14-336 + LLaMA-3-8B-Instruct with a fresh projector.
    c.model.checkpoint = "gs://YOUR_BUCKET/checkpoints/llava-llama3-8b-init"
    c.data.format = "llava_json"
    c.data.path = "gs://YOUR_BUCKET/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json"
    c.data.image_folder = "gs://YOUR_BUCKET/LLaVA-Pretrain/images"
    c.train.trainable = "projector"
    c.train.num_steps = -1  # one epoch: 558K / 256 = 2,180 steps
    c.train.global_batch_size = 256
    c.train.accum_steps = 1
    c.train.learning_rate = 1e-3
    return c
