"""DiT's image preparation (ADM's `center_crop_arr`): the square crop every image of Recap-DiT
goes through, for the latents (`encode_latents`) and for the FID reference images (`eval_dit`).

Halve the image with a box filter while its shorter side is at least twice the target, resize
the shorter side to `size` bicubically, then cut the centre square (offsets rounded down).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from recap_jax.data import images as image_lib


def center_crop(image: Image.Image, size: int) -> np.ndarray:
    """An RGB PIL image -> uint8 [size, size, 3]."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(side // 2 for side in image.size), resample=Image.Resampling.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(side * scale) for side in image.size), resample=Image.Resampling.BICUBIC)
    pixels = np.asarray(image.convert("RGB"))
    top, left = (pixels.shape[0] - size) // 2, (pixels.shape[1] - size) // 2
    return np.ascontiguousarray(pixels[top:top + size, left:left + size])


def prepare_encoded(data: bytes, size: int, max_pixels: int = image_lib.DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded image bytes -> uint8 [size, size, 3] (robust decoding; ImageError if it cannot be)."""
    return center_crop(image_lib.decode_image(data, max_pixels=max_pixels), size)
