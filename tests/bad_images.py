"""Encoded test images of every awkward kind the web serves."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    return buffer.getvalue()


def good_jpeg(w=40, h=30, colour=(200, 30, 30)) -> bytes:
    return encode(Image.new("RGB", (w, h), colour), "JPEG", quality=95)


def cases() -> dict[str, tuple[bytes, str | None]]:
    """name -> (bytes, expected failure reason fragment, or None if it must decode)."""
    rgba = Image.new("RGBA", (20, 20), (0, 0, 255, 0))
    rgba.paste((255, 0, 0, 255), (0, 0, 10, 20))
    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([0, 255, 0] + [0, 0, 0] * 255)
    palette_alpha = palette.copy()
    palette_alpha.info["transparency"] = 0
    gray16 = Image.fromarray(np.full((12, 12), 32896, np.uint16))  # 32896 = 128 * 257
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 0, 255))]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    webp = io.BytesIO()
    frames[0].save(webp, "WEBP", save_all=True, append_images=frames[1:], duration=50, lossless=True)
    full = good_jpeg(64, 64)
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    noisy_png = encode(Image.fromarray(noise), "PNG")  # its compressed data, inverted, cannot inflate
    return {
        "zero_bytes": (b"", "empty"),
        "not_an_image": (b"<html>404 not found</html>", "not an image"),
        "truncated_jpeg": (full[: len(full) // 2], "truncated"),
        "corrupt_png": (noisy_png[:80] + bytes(255 - b for b in noisy_png[80:]), "corrupt"),
        "one_pixel": (encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"), None),
        "wide_banner": (encode(Image.new("RGB", (1500, 10), "white"), "PNG"), None),
        "extreme_aspect": (encode(Image.new("RGB", (5000, 2), "white"), "PNG"), "aspect"),
        "gray16": (encode(gray16, "PNG"), None),
        "cmyk_red": (encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95), None),
        "palette": (encode(palette, "PNG"), None),
        "palette_transparent": (encode(palette_alpha, "PNG"), None),
        "rgba_half_transparent": (encode(rgba, "PNG"), None),
        "la": (encode(Image.new("LA", (8, 8), (100, 255)), "PNG"), None),
        "one_bit": (encode(Image.new("1", (8, 8), 1), "PNG"), None),
        "animated_gif": (gif.getvalue(), None),
        "animated_webp": (webp.getvalue(), None),
        "bomb": (encode(Image.new("L", (9000, 9000), 0), "PNG"), "decompression bomb"),
    }
