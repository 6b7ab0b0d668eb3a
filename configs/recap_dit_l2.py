r"""Recap-DiT L/2 as the paper trains it (Section 6: one DiT-L/2 run, p = 0, one epoch): 256 px
images as 32x32x4 KL-f8 latents, batch 2048, AdamW, constant lr 1e-4, no warm-up, no weight
decay, EMA of the weights.

    python -m recap_jax.train_dit --config configs/recap_dit_l2.py --config.workdir=gs://BUCKET/runs/dit_l2 \
        --config.data.dir=gs://BUCKET/latents256 --config.text.encoder=/models/recap_clip_or_hf_clip \
        --config.train.num_samples=NUMBER_OF_LATENTS   # one epoch, as the paper

Where the paper is silent, the choice made here (as configs/recap_dit_b4.py): 400K steps unless
train.num_samples sets one epoch; DiT's linear-beta DDPM with learned variance; EMA 0.9999; no
clipping; 77 text tokens; bfloat16 compute; block activations recomputed (remat) so that L/2's
256 tokens x 24 blocks fit batch 2048 on the slice `python -m recap_jax.plan` checks.
"""

import ml_collections

from recap_jax.dit.defaults import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.model.size, config.model.patch_size = "L", 2
    config.model.dtype, config.model.remat = "bfloat16", True
    config.data.org_caption_prob = 0.0  # the paper's L/2 run
    config.data.num_threads = 16
    t = config.train
    t.global_batch_size = 2048
    t.num_steps = 400_000
    t.learning_rate, t.schedule, t.warmup_steps, t.weight_decay = 1e-4, "constant", 0, 0.0
    t.ema_decay = 0.9999
    t.log_every, t.checkpoint_every, t.keep_checkpoints = 100, 5000, 3
    config.sample.guidance_scale, config.sample.steps, config.sample.sampler = 10.0, 250, "ddpm"
    config.sample.batch_size = 256
    return config
