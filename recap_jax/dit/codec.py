"""Codecs between images and what the DiT diffuses (INTERFACES.md):

    codec = load_codec("pixels")            # or a diffusers AutoencoderKL folder (the kl-f8 codec)
    latents = codec.encode(images)          # images float [-1, 1] NHWC -> scaled latents [h, w, c]
    images = codec.decode(latents)          # -> images [-1, 1]
    codec.latent_shape(image_size)          # (h, w, c)

`pixels`: the image itself (c = 3), for small images and tests. `kl-f8`: the latent-diffusion
KL autoencoder (`dit/kl_codec.py`), latents multiplied by its config's scale factor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from recap_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class PixelCodec:
    """No autoencoder: the latent is the image in [-1, 1]."""
    kind: str = "pixels"
    scale_factor: float = 1.0
    autoencoder_dir: str | None = None

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        return image_size, image_size, 3

    def encode(self, images: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        return np.asarray(images, np.float32)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(latents, np.float32), -1.0, 1.0)


def _load_kl_f8(folder: str, field: str) -> Any:
    from recap_jax.dit.kl_codec import load_kl_codec
    return load_kl_codec(folder, field)


# kind -> loader(folder, field); "pixels" needs no folder.
CODECS: dict[str, Callable[[str, str], Any]] = {
    "pixels": lambda folder, field: PixelCodec(),
    "kl-f8": _load_kl_f8,
}


def load_codec(kind_or_dir: str, field: str = "autoencoder.dir") -> Any:
    """"pixels", or a diffusers AutoencoderKL folder (the `kl-f8` codec); ConfigError naming `field`."""
    if kind_or_dir in CODECS and kind_or_dir != "kl-f8":
        return CODECS[kind_or_dir]("", field)
    if not kind_or_dir:
        raise ConfigError(f"{field}: required (a diffusers AutoencoderKL folder, or \"pixels\")")
    return CODECS["kl-f8"](kind_or_dir, field)


def to_model_range(pixels: np.ndarray) -> np.ndarray:
    """uint8 images -> float32 in [-1, 1] (DiT's Normalize(mean=0.5, std=0.5))."""
    return np.asarray(pixels, np.float32) / 127.5 - 1.0


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Images in [-1, 1] -> uint8, as DiT saves its samples."""
    return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
