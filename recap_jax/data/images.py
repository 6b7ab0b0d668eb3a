"""Robust decoding of web images to RGB: everything either decodes correctly or raises ImageError.

Choices (documented in the README): animated images give their first frame; EXIF orientation is
applied; transparency is composited on white; 16-bit images are scaled (not clipped) to 8 bits;
CMYK goes through PIL's conversion; images over `max_pixels` (decompression bombs) and with an
aspect ratio over `max_aspect` (banners, 1-pixel lines) are refused before their pixels decode.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class ImageError(Exception):
    """An image that cannot be captioned; `reason` says why in a few words."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _to_8bit(image: Image.Image) -> Image.Image:
    """16/32-bit integer and float grayscale -> "L", by scaling the value range."""
    pixels = np.asarray(image)
    if image.mode == "F":
        scaled = np.clip(pixels, 0.0, 1.0) * 255 if pixels.max(initial=0) <= 1.0 else np.clip(pixels, 0, 255)
    else:
        top = 65535 if pixels.max(initial=0) <= 65535 else np.iinfo(np.int32).max
        scaled = np.clip(pixels.astype(np.float64), 0, top) * (255 / top)
    return Image.fromarray(np.round(scaled).astype(np.uint8), "L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> "RGB" (grayscale, palette, CMYK, alpha, 16-bit)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        return _to_8bit(image.convert("I") if image.mode.startswith("I;16") else image).convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(data: bytes, *, max_pixels: int = 64_000_000, max_aspect: float = 200.0) -> Image.Image:
    """Encoded bytes -> RGB PIL image, or ImageError."""
    if not data:
        raise ImageError("empty file")
    with warnings.catch_warnings():
        # We check the size ourselves (below) against our own, configurable limit.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:
            raise ImageError(f"decompression bomb: {e}") from None
        except UnidentifiedImageError:
            raise ImageError("not an image (unrecognised format)") from None
        except Exception as e:  # noqa: BLE001 - any decoder failure is a per-sample failure
            raise ImageError(f"cannot open: {type(e).__name__}: {e}") from None
        width, height = image.size
        if width < 1 or height < 1:
            raise ImageError(f"empty image {width}x{height}")
        if width * height > max_pixels:
            raise ImageError(f"decompression bomb: {width}x{height} exceeds input.max_pixels={max_pixels}")
        if max(width, height) / min(width, height) > max_aspect:
            raise ImageError(f"extreme aspect ratio {width}x{height} (over {max_aspect:g}:1)")
        try:
            image.seek(0)  # animated: first frame
            image.load()
            image = ImageOps.exif_transpose(image) or image
            return to_rgb(image)
        except Image.DecompressionBombError as e:
            raise ImageError(f"decompression bomb: {e}") from None
        except Exception as e:  # noqa: BLE001
            raise ImageError(f"truncated or corrupt: {type(e).__name__}: {e}") from None
