r"""Latents for Recap-DiT from a caption job's output, on a CPU (the demo sizes: 64 px).

    python -m recap_jax.encode_latents --config configs/dit_latents_cpu.py \
        --config.autoencoder.dir=/models/sd-vae-ft-ema --config.image_size=256

The paper's setting is 256 px images through Stable Diffusion's KL-f8 VAE -> 32x32x4 latents
(`--config.image_size=256`); `--config.autoencoder.kind=pixels` keeps the images themselves.
"""

import os

import ml_collections

from recap_jax.dit.defaults import latents_config

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config() -> ml_collections.ConfigDict:
    c = latents_config()
    c.input.dir = os.path.join(_REPO, "out", "demo", "captions")
    c.output.dir = os.path.join(_REPO, "out", "demo", "latents")
    return c
