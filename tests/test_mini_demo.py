"""The README's first command: the shipped miniature-world captioner (recap_jax/assets/mini_captioner,
made by `recap_jax.reproduce`, docs/mini_paper.md) captions the bundled demo images and describes
each world image (`world_COLOUR_SHAPE.png`, drawn from the held-out split).

On 100 held-out scenes this captioner names the main object's colour in 99% and colour and shape
together in 88% (docs/mini_paper.md); on the four demo world images it names every colour and
three of the four shapes. So this asserts the colour and background of every world image, the
right shape for at least three of them, and that the captions are full descriptions."""

from __future__ import annotations

import pathlib

from caption_helpers import REPO, caption_in_process
from configs_loader import load
from recap_jax.clip import mini_world
from recap_jax.mini_paper.stages import read_captions


def test_demo_captions_name_the_world_images_main_object(tmp_path: pathlib.Path):
    c = load("demo.py")
    assert pathlib.Path(c.model.checkpoint).is_dir() and not c.model.build_tiny_if_missing  # shipped, no download
    c.output.dir = str(tmp_path / "captions")
    c.distributed.mode = "off"
    c.progress_every_s = 60.0
    assert caption_in_process(c) == 0
    rows = read_captions(c.output.dir)
    images = sorted(p.stem for p in (REPO / "assets" / "demo_images").iterdir() if p.suffix != ".txt")
    assert sorted(rows) == images  # every demo image captioned, the old ones too
    world = [name for name in images if name.startswith("world_")]
    assert len(world) >= 4
    backgrounds = {"world_green_square": "water", "world_orange_star": "snow", "world_red_triangle": "snow",
                   "world_white_triangle": "road"}  # the scenes' truth (assets/demo_images)
    right_shapes = 0
    for name in world:
        _, colour, shape = name.split("_")
        text = rows[name]["re_caption"]
        assert text.startswith(f"a large {colour} "), (name, text)
        assert text.endswith(f"on a {backgrounds[name]} background"), (name, text)
        words = text.split()
        assert any(s in words[3:5] for s in mini_world.SHAPES), (name, text)  # some shape is named
        assert len(words) > len(rows[name]["org_caption"].split())
        right_shapes += shape in words[3:5]
    assert right_shapes >= 3, {name: rows[name]["re_caption"] for name in world}
