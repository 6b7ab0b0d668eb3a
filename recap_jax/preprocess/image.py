"""Image pre-processing in both LLaVA modes, numerically equal to the HF (PIL) image processors.

- "pad": LLaVA-1.5's `image_aspect_ratio="pad"` (llava-hf `do_pad=True`): pad the image to a
  square with the processor's mean colour, then resize. No part of the image is lost.
- "crop": llava-hf's CLIP default: resize the shortest edge, then centre-crop.
Input is an RGB PIL image (see `recap_jax.data.images.decode_image` for robust decoding);
output is float32 [H, W, 3], normalised, channels last (the layout the vision tower takes):
`preprocess_image` on the host, or `resize_image` (uint8) on the host and `normalise_on_device`
inside the jitted prefill (the caption job), with the same values.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MODES = ("pad", "crop")


@dataclasses.dataclass(frozen=True)
class ImageSettings:
    """How a checkpoint wants its images; read from `preprocessor_config.json`."""
    size: int = 336  # side of the square the vision tower takes
    mode: str = "pad"  # "pad" (pad to square with the mean colour) or "crop" (resize + centre-crop)
    resample: int = Image.Resampling.BICUBIC
    rescale_factor: float = 1 / 255
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"image mode {self.mode!r}: expected one of {MODES}")

    @property
    def pad_colour(self) -> tuple[int, ...]:
        return tuple(int(m * 255) for m in self.mean)

    def to_json_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json_dict(cls, d: dict[str, Any]) -> ImageSettings:
        return cls(**{**d, "mean": tuple(d["mean"]), "std": tuple(d["std"])})

    @classmethod
    def from_hf_processor(cls, d: dict[str, Any], *, pad: bool | None = None) -> ImageSettings:
        """A HF `preprocessor_config.json` dict; `pad` overrides its `do_pad` (the original
        LLaVA layout says `image_aspect_ratio: pad` in the model config instead)."""
        crop = d.get("crop_size", d.get("size"))
        side = crop if isinstance(crop, int) else (crop.get("height") or crop.get("shortest_edge"))
        size = d.get("size")
        resize_to = size if isinstance(size, int) else (size or {}).get("shortest_edge", side)
        if resize_to != side:
            raise ValueError(f"preprocessor_config: resize to {resize_to} then crop {side} is not supported; "
                             "LLaVA checkpoints resize the shortest edge to the crop size")
        do_pad = bool(d.get("do_pad", False)) if pad is None else pad
        return cls(size=int(side), mode="pad" if do_pad else "crop",
                   resample=int(d.get("resample", Image.Resampling.BICUBIC)),
                   rescale_factor=float(d.get("rescale_factor", 1 / 255)),
                   mean=tuple(d.get("image_mean", CLIP_MEAN)), std=tuple(d.get("image_std", CLIP_STD)))


def pad_to_square(image: Image.Image, colour: tuple[int, ...]) -> Image.Image:
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), colour)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def resize_shortest_edge(image: Image.Image, size: int, resample: int) -> Image.Image:
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_long = int(size * long / short)
    new_size = (size, new_long) if width <= height else (new_long, size)
    return image.resize(new_size, resample=resample)


def centre_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    height, width = pixels.shape[:2]
    top, left = (height - size) // 2, (width - size) // 2
    return pixels[top:top + size, left:left + size]


def resize_image(image: Image.Image, settings: ImageSettings) -> np.ndarray:
    """RGB PIL image -> uint8 [size, size, 3]: the processor's pad/resize/crop, not yet normalised
    (what the caption job hands the device: a quarter of float32's bytes)."""
    if image.mode != "RGB":
        raise ValueError(f"preprocess_image takes RGB images, got mode {image.mode!r}")
    if settings.mode == "pad":
        image = pad_to_square(image, settings.pad_colour)
    image = resize_shortest_edge(image, settings.size, settings.resample)
    return centre_crop(np.asarray(image), settings.size)


def normalise_pixels(pixels: np.ndarray, settings: ImageSettings) -> np.ndarray:
    """uint8 [..., 3] (from `resize_image`) -> normalised float32, on the host."""
    table = normalise_table(settings)
    out = np.empty(pixels.shape, np.float32)
    for channel in range(3):
        np.take(table[channel], pixels[..., channel], out=out[..., channel])
    return out


def normalise_on_device(pixels: jax.Array, table: np.ndarray) -> jax.Array:
    """uint8 [..., 3] -> normalised float32 inside a jitted function: `table` is
    `normalise_table(settings)`, so the values are bit-identical to `normalise_pixels`'.
    `normalise_by_lookup` on CPU, `normalise_by_matching` elsewhere (both exact)."""
    return jax.lax.platform_dependent(pixels, table, cpu=normalise_by_lookup, default=normalise_by_matching)


def normalise_by_lookup(pixels: jax.Array, table: np.ndarray) -> jax.Array:
    """`table`'s entry for each value: a gather, fast on CPU; a TPU gathers element by element
    (docs/tpu_plan.md has its compiled cost)."""
    return jnp.asarray(table.T)[pixels.astype(jnp.int32), jnp.arange(3)]


def normalise_by_matching(pixels: jax.Array, table: np.ndarray) -> jax.Array:
    """`table`'s entry for each value as a sum over the table of the value's one match: the other
    255 terms are +0.0, so the sum is the entry exactly; elementwise work a TPU fuses (slow on CPU)."""
    match = pixels[..., None] == jnp.arange(256, dtype=pixels.dtype)  # [..., 3, 256]
    return jnp.sum(jnp.where(match, jnp.asarray(table), 0.0), axis=-1)


def preprocess_image(image: Image.Image, settings: ImageSettings) -> np.ndarray:
    """RGB PIL image -> normalised float32 [size, size, 3]."""
    return normalise_pixels(resize_image(image, settings), settings)


def normalise_table(settings: ImageSettings) -> np.ndarray:
    """[3, 256] float32: channel c, uint8 value v -> the normalised value.

    Each output value depends only on (value, channel), so a lookup gives HF's arithmetic
    exactly: rescale in float64, cast to float32, then subtract the mean and divide by the std in
    float32. (float32 arithmetic on the device would not: f32(v) * f32(1/255) differs from the
    float64 rescale in the last bit for half the values, and XLA's CPU division differs too.)"""
    return _normalise_table(float(settings.rescale_factor), tuple(settings.mean), tuple(settings.std))


@functools.lru_cache(maxsize=16)
def _normalise_table(rescale_factor: float, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    values = (np.arange(256, dtype=np.float64) * rescale_factor).astype(np.float32)[:, None]
    table = (values - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    table = np.ascontiguousarray(table.T)
    table.setflags(write=False)  # shared by every caller (cached)
    return table
