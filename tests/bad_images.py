"""Encoded test images of every awkward kind the web serves."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    return buffer.getvalue()


def good_jpeg(w=40, h=30, colour=(200, 30, 30)) -> bytes:
    return encode(Image.new("RGB", (w, h), colour), "JPEG", quality=95)


def raw_png(width: int, height: int, bit_depth: int, colour_type: int, pixels: bytes | None = None) -> bytes:
    """A PNG written by hand: for 16-bit colour (Pillow cannot write it) and for lying headers."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    body = b""
    if pixels is not None:
        row = len(pixels) // height
        body = chunk(b"IDAT", zlib.compress(b"".join(b"\0" + pixels[i * row:(i + 1) * row] for i in range(height))))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + body + chunk(b"IEND", b"")


def exif_rotated_jpeg() -> bytes:
    """Stored 20x10 (left half red, right half blue) with EXIF orientation 6 (rotate 90 degrees clockwise)."""
    image = Image.new("RGB", (20, 10), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


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
        # A 100000 x 100000 header with no pixel data: refused from the header, nothing allocated.
        "bomb_header_only": (raw_png(100_000, 100_000, 8, 2), "decompression bomb"),
        "tall_extreme_aspect": (encode(Image.new("RGB", (1, 300), "white"), "PNG"), "aspect"),
        "gray8": (encode(Image.new("L", (8, 8), 77), "PNG"), None),
        "gray16_big_endian_white": (raw_png(4, 4, 16, 0, np.full((4, 4), 65535, ">u2").tobytes()), None),
        "rgb16": (raw_png(4, 4, 16, 2, np.tile(np.array([65535, 32896, 0], ">u2"), (4, 4, 1)).tobytes()), None),
        "rgba16_transparent": (raw_png(4, 4, 16, 6, np.zeros((4, 4, 4), ">u2").tobytes()), None),
        "la_transparent": (encode(Image.new("LA", (8, 8), (0, 0)), "PNG"), None),
        "float_tiff": (encode(Image.fromarray(np.full((6, 6), 0.5, np.float32)), "TIFF"), None),
        "exif_rotated": (exif_rotated_jpeg(), None),
        "gif_transparent": (encode(palette_alpha, "GIF"), None),
        "jpeg_header_only": (full[:200], "truncated"),
        "png_named_jpg_ok": (encode(Image.new("RGB", (5, 5), (0, 0, 255)), "PNG"), None),
        "text_with_jpeg_magic": (b"\xff\xd8\xff\xe0 this is not really a jpeg", "corrupt"),
    }
