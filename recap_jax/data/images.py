"""Robust decoding of web images to RGB: everything either decodes correctly or raises ImageError.

Choices (see docs/data.md):
- animated GIF/WebP/PNG: the first frame;
- EXIF orientation is applied (a broken EXIF block is ignored, the pixels are still good);
- transparency (RGBA, LA, PA, palette with a transparent index) is composited on WHITE: the RGB
  values under transparent pixels are often garbage, and white is what a web page shows;
- 16-bit and 32-bit grayscale are scaled (value * 255 / 65535), not clipped; 16-bit RGB(A) PNGs
  already open as 8-bit (Pillow keeps the high byte, which is the same scaling);
- CMYK goes through Pillow's plain conversion, the same one LLaVA's training loader used
  (`Image.open(...).convert("RGB")`); ICC profiles are not applied, for the same reason;
- images over `max_pixels` (decompression bombs), with a side under `min_side`, or with an aspect
  ratio over `max_aspect` are refused from the header alone, before their pixels are decoded.
  LLaVA pads to a square, so long banners up to `max_aspect`:1 are captioned.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from recap_jax.errors import ImageError

# We enforce our own, configurable pixel limit (below), so Pillow's warning is noise. Set once here:
# `warnings.catch_warnings` inside `decode_image` would race between the decoding threads.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MAX_ASPECT = 200.0
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")



def image_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of the image as stored (after EXIF rotation), also when `decode_image`
    decoded a JPEG at reduced scale (`draft_size`)."""
    return image.info.get("original_size", image.size)


def _to_8bit_gray(image: Image.Image) -> Image.Image:
    """16/32-bit integer and float grayscale -> "L", by scaling the value range (not clipping)."""
    pixels = np.asarray(image)
    if image.mode == "F":
        # Floats are either in [0, 1] (normalised) or in [0, 255].
        scale = 255.0 if pixels.max(initial=0.0) <= 1.0 else 1.0
        scaled = np.clip(np.nan_to_num(pixels) * scale, 0, 255)
    else:
        top = 65535 if pixels.max(initial=0) <= 65535 else np.iinfo(np.int32).max
        scaled = np.clip(pixels.astype(np.float64), 0, top) * (255 / top)
    return Image.fromarray(np.round(scaled).astype(np.uint8), "L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> "RGB" (grayscale, 1-bit, palette, CMYK, alpha, 16-bit, float)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        gray = image.convert("I") if image.mode.startswith("I;16") else image
        return _to_8bit_gray(gray).convert("RGB")
    has_alpha = image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def check_size(width: int, height: int, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = 1,
               max_aspect: float = DEFAULT_MAX_ASPECT) -> None:
    """Raises ImageError for a size we refuse to decode."""
    if width < 1 or height < 1:
        raise ImageError(f"empty image {width}x{height}")
    if width * height > max_pixels:
        raise ImageError(f"decompression bomb: {width}x{height} exceeds input.max_pixels={max_pixels}")
    if min(width, height) < min_side:
        raise ImageError(f"too small: {width}x{height} (a side under {min_side} pixels)")
    if max(width, height) / min(width, height) > max_aspect:
        raise ImageError(f"extreme aspect ratio {width}x{height} (over {max_aspect:g}:1)")


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = 1,
                 max_aspect: float = DEFAULT_MAX_ASPECT, draft_size: int | None = None) -> Image.Image:
    """Encoded bytes -> an RGB Pillow image (pixels loaded), or ImageError with a short reason.

    `draft_size`: let the JPEG decoder scale down by 1/2, 1/4 or 1/8 while both sides stay at
    least `draft_size` (e.g. 2 x the model's input size). About 5x faster on large photos, but
    the pixels differ slightly from a full decode + resize; off by default. `image_size` still
    gives the stored size.
    """
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        # Lazy: reads only the header, so the size checks below run before any pixel is decoded.
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:  # Pillow's own hard limit (2 x MAX_IMAGE_PIXELS)
        raise ImageError(f"decompression bomb: {e}") from None
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised format)") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure is a per-sample failure
        raise ImageError(f"truncated or corrupt header: {type(e).__name__}: {e}") from None
    check_size(*image.size, max_pixels=max_pixels, min_side=min_side, max_aspect=max_aspect)
    stored_size = image.size
    try:
        image.seek(0)  # animated: first frame
        if draft_size and image.format == "JPEG":
            image.draft("RGB", (draft_size, draft_size))
        image.load()
    except Image.DecompressionBombError as e:
        raise ImageError(f"decompression bomb: {e}") from None
    except Exception as e:  # noqa: BLE001
        raise ImageError(f"truncated or corrupt: {type(e).__name__}: {e}") from None
    decoded_size = image.size
    try:
        image = ImageOps.exif_transpose(image) or image
    except Exception:  # noqa: BLE001 - a malformed EXIF block; the pixels themselves are fine
        pass
    if image.size != decoded_size:  # rotated by 90 degrees
        stored_size = stored_size[::-1]
    try:
        rgb = to_rgb(image)
    except Exception as e:  # noqa: BLE001
        raise ImageError(f"unsupported colour mode {image.mode}: {type(e).__name__}: {e}") from None
    rgb.info["original_size"] = stored_size
    return rgb
