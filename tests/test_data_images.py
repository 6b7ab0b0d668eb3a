"""Every awkward image either decodes to the right RGB pixels or fails with a reason."""

import numpy as np
import pytest

from PIL import Image

from bad_images import cases, encode
from recap_jax.data.images import decode_image, image_size
from recap_jax.errors import ImageError

CASES = cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_decodes_or_fails_with_reason(name):
    data, failure = CASES[name]
    if failure is None:
        image = decode_image(data)
        assert image.mode == "RGB" and min(image.size) >= 1
    else:
        with pytest.raises(ImageError) as e:
            decode_image(data)
        assert failure in e.value.reason.lower()


def _pixel(name, xy=(0, 0)):
    return np.asarray(decode_image(CASES[name][0]))[xy[1], xy[0]].tolist()


def test_colours_survive_conversion():
    assert _pixel("gray16") == [128, 128, 128]  # 16-bit scaled, not clipped to 255
    r, g, b = _pixel("cmyk_red")
    assert r > 200 and g < 60 and b < 60
    assert _pixel("palette") == [0, 255, 0]
    assert _pixel("palette_transparent") == [255, 255, 255]  # transparent -> white
    assert _pixel("rgba_half_transparent", (2, 2)) == [255, 0, 0]
    assert _pixel("rgba_half_transparent", (15, 2)) == [255, 255, 255]
    assert _pixel("one_pixel") == [10, 20, 30]
    assert _pixel("one_bit") == [255, 255, 255]
    r, g, b = _pixel("animated_gif")  # first frame: red
    assert r > 200 and b < 60
    assert _pixel("animated_webp") == [255, 0, 0]


def test_pixel_limit_is_configurable():
    data, _ = CASES["wide_banner"]
    with pytest.raises(ImageError, match="max_pixels"):
        decode_image(data, max_pixels=1000)


def test_more_colours_survive_conversion():
    assert _pixel("gray8") == [77, 77, 77]
    assert _pixel("gray16_big_endian_white") == [255, 255, 255]
    assert _pixel("rgb16") == [255, 128, 0]  # 16-bit RGB scaled to 8 bits
    assert _pixel("rgba16_transparent") == [255, 255, 255]
    assert _pixel("la") == [100, 100, 100]
    assert _pixel("la_transparent") == [255, 255, 255]
    assert _pixel("gif_transparent") == [255, 255, 255]
    assert _pixel("float_tiff") == [128, 128, 128]
    assert _pixel("png_named_jpg_ok") == [0, 0, 255]


def test_exif_orientation_is_applied():
    image = decode_image(CASES["exif_rotated"][0])
    assert image.size == (10, 20)  # stored 20x10, EXIF says rotate 90 degrees clockwise
    top, bottom = np.asarray(image)[2, 5], np.asarray(image)[17, 5]
    assert top[0] > 200 and top[2] < 60  # the stored left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_size_limits_refuse_before_decoding():
    data, _ = CASES["one_pixel"]
    with pytest.raises(ImageError, match="too small"):
        decode_image(data, min_side=2)
    assert image_size(decode_image(CASES["wide_banner"][0])) == (1500, 10)
    with pytest.raises(ImageError, match="aspect"):
        decode_image(CASES["wide_banner"][0], max_aspect=100)
    # 10^10 pixels claimed by the header: refused at once, without allocating the pixels.
    with pytest.raises(ImageError, match="decompression bomb"):
        decode_image(CASES["bomb_header_only"][0], max_pixels=10**11)


def test_jpeg_draft_decoding_keeps_the_stored_size():
    data = encode(Image.new("RGB", (1600, 1200), (0, 128, 255)), "JPEG", quality=90)
    full, draft = decode_image(data), decode_image(data, draft_size=336)
    assert full.size == (1600, 1200) and draft.size == (800, 600)  # 1/2: 1/4 would make 300 < 336
    assert image_size(draft) == image_size(full) == (1600, 1200)
    assert np.abs(np.asarray(draft, np.int16)[5, 5] - np.asarray(full, np.int16)[5, 5]).max() <= 3
    rotated = decode_image(CASES["exif_rotated"][0], draft_size=4)
    assert image_size(rotated) == (10, 20) and rotated.size == (5, 10)  # half scale, rotated
