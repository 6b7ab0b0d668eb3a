"""The `kl-f8` codec: images <-> scaled latents through the latent-diffusion KL autoencoder
(Stable Diffusion's / DiT's VAE, `models/autoencoder_kl.py`), loaded from a diffusers folder."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from recap_jax.conversion.autoencoder_kl import load_autoencoder
from recap_jax.errors import ConfigError
from recap_jax.models import autoencoder_kl as ae


@dataclasses.dataclass(frozen=True)
class KLCodec:
    """`encode(images [-1, 1] NHWC) -> scaled latents`, `decode(latents) -> images [-1, 1]`."""
    cfg: ae.AutoencoderKLConfig
    params: Any
    autoencoder_dir: str
    kind: str = "kl-f8"

    @property
    def scale_factor(self) -> float:
        return self.cfg.scaling_factor

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        try:
            return ae.latent_shape(self.cfg, image_size)
        except ValueError as e:
            raise ConfigError(f"image_size: {e}") from None

    def encode(self, images: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """The posterior mean, or (DiT's `latent_dist.sample()`) mean + std * `noise`, scaled."""
        if noise is None:
            return np.asarray(_encode_mean(self.cfg, self.params, jnp.asarray(images, jnp.float32)))
        return np.asarray(_encode_sample(self.cfg, self.params, jnp.asarray(images, jnp.float32),
                                         jnp.asarray(noise, jnp.float32)))

    def decode(self, latents: np.ndarray) -> np.ndarray:
        return np.asarray(jnp.clip(_decode(self.cfg, self.params, jnp.asarray(latents, jnp.float32)), -1, 1))


@functools.partial(jax.jit, static_argnums=0)
def _encode_mean(cfg, params, images):
    return ae.encode_scaled(ae.AutoencoderKL(cfg), params, images)


@functools.partial(jax.jit, static_argnums=0)
def _encode_sample(cfg, params, images, noise):
    return ae.encode_scaled(ae.AutoencoderKL(cfg), params, images, noise)


@functools.partial(jax.jit, static_argnums=0)
def _decode(cfg, params, latents):
    return ae.decode_scaled(ae.AutoencoderKL(cfg), params, latents)


def load_kl_codec(folder: str, field: str = "autoencoder.dir") -> KLCodec:
    """The codec of a diffusers-layout AutoencoderKL folder (config.json + *.safetensors)."""
    cfg, params = load_autoencoder(folder, field)
    return KLCodec(cfg, jax.device_put(params), folder)
