"""LLaVA-1.5 stage 2 (visual instruction tuning) with LLaMA-3-8B on a TPU v4 slice.

    python -m recap_jax.finetune --config configs/llava_stage2_v4.py \
        --config.model.checkpoint=gs://BUCKET/runs/stage1/export \
        --config.data.path=gs://BUCKET/LLaVA-Instruct/llava_v1_5_mix665k.json \
        --config.data.image_folder=gs://BUCKET/LLaVA-Instruct/images --config.workdir=gs://BUCKET/runs/stage2

LLaVA-1.5's published stage-2 recipe: the 665K instruction mix, projector + LLM trained (vision
tower frozen), batch 128, learning rate 2e-5, 1 epoch, 3% warm-up then cosine, no weight decay.
The 8B LLM with f32 master weights and AdamW state (~96 GB) is sharded over all chips (fsdp), so
it needs 8 chips or more; rematerialised decoder layers (train.remat="full"), a chunked loss and
8 micro-batches of 16 conversations of up to 2048 tokens (one per chip on a v4-32) keep the step
within a v4 chip's HBM (docs/finetune.md, Speed).
"""

from recap_jax.training.defaults import tpu_pod_config


def get_config():
    c = tpu_pod_config()
    c.workdir = "gs://YOUR_BUCKET/runs/llava-llama3-stage2"
    c.model.checkpoint = "gs://YOUR_BUCKET/runs/llava-llama3-stage1/export"
    c.data.format = "llava_json"
    c.data.path = "gs://YOUR_BUCKET/LLaVA-Instruct/llava_v1_5_mix665k.json"
    c.data.image_folder = "gs://YOUR_BUCKET/LLaVA-Instruct/images"
    c.train.trainable = "projector+llm"
    c.train.num_steps = -1  # one epoch: 665K / 128 = 5,197 steps
    c.train.global_batch_size = 128
    c.train.accum_steps = 8  # 16 rows per micro-batch: one per chip on a v4-32
    c.train.learning_rate = 2e-5
    return c
