r"""Latents for Recap-DiT from a caption job's output, on a CPU (the demo sizes).

    python -m recap_jax.encode_latents --config configs/dit_latents_cpu.py \
        --config.autoencoder.dir=/models/sd-vae-ft-ema

The paper's setting is 256 px images through Stable Diffusion's KL-f8 VAE -> 32x32x4 latents
(`--config.image_size=256`); `--config.autoencoder.kind=pixels` keeps the images themselves.
"""

import os

import ml_collections

from recap_jax.parallel.distributed import distributed_config

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.input = ml_collections.ConfigDict(dict(
        dir=os.path.join(_REPO, "out", "demo", "captions"),  # a caption job's output (with its images)
        split="",  # "" = train
        records_per_unit=256,  # records per work unit (= per output shard, the unit of resumption)
        max_pixels=64_000_000,  # larger images are listed as failures (decompression bombs)
        num_workers=2,  # image-decoding threads
    ))
    c.autoencoder = ml_collections.ConfigDict(dict(
        kind="kl-f8",  # "kl-f8" (the latent-diffusion autoencoder of `dir`) or "pixels" (no autoencoder)
        dir="",  # a diffusers AutoencoderKL folder (config.json + *.safetensors), e.g. sd-vae-ft-ema
        posterior="sample",  # "sample" (DiT's latent_dist.sample(), noise seeded by seed and key) or "mean"
    ))
    c.image_size = 256  # DiT's centre crop side; latents are image_size / 8 for KL-f8
    c.batch_size = 8  # images per autoencoder call
    c.seed = 0  # of the posterior samples
    c.output = ml_collections.ConfigDict(dict(
        dir=os.path.join(_REPO, "out", "demo", "latents"),
        overwrite=False,  # delete what an earlier run wrote in output.dir and start anew
        lease_stale_s=600.0,  # a lease without heartbeat for this long may be taken over
        lease_heartbeat_s=60.0,
    ))
    c.distributed = distributed_config()
    return c
