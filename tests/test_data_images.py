"""Every awkward image either decodes to the right RGB pixels or fails with a reason."""

import numpy as np
import pytest

from bad_images import cases
from recap_jax.data.images import ImageError, decode_image

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
