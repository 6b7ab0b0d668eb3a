r"""A tiny Recap-DiT on CPU (pixel space or a tiny autoencoder), for tests and the README's run.

    python -m recap_jax.train_dit --config configs/recap_dit_cpu.py --config.workdir=out/demo/dit \
        --config.data.dir=out/demo/latents --config.text.encoder=/tmp/clip_tiny
    python -m recap_jax.sample_dit --config configs/recap_dit_cpu.py --config.workdir=out/demo/dit \
        --config.sample.prompts=assets/dit_demo_prompts.txt --config.sample.out=out/demo/dit_samples

Every field: recap_jax/dit/defaults.py. The recipe is the paper's (AdamW, constant lr, no warm-up,
no decay, EMA, guidance 10) on a 2-block DiT, with a larger lr and a fast EMA so that 20 steps move.
"""

import ml_collections

from recap_jax.dit.defaults import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.mesh.data, config.mesh.fsdp = -1, 1
    config.model.size, config.model.patch_size = "tiny", 2
    config.text.max_tokens = 16
    config.data.num_threads = 2
    t = config.train
    t.global_batch_size, t.num_steps, t.learning_rate = 8, 20, 1e-3
    t.ema_decay = 0.9
    t.log_every, t.checkpoint_every = 10, 10
    config.sample.steps = 20
    config.sample.guidance_scale = 4.0
    return config
