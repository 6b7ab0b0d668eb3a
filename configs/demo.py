"""The bundled offline demo: the miniature-world captioner on the images in assets/demo_images.

    python -m recap_jax.caption --config configs/demo.py

No TPU, no downloads. The captioner (recap_jax/assets/mini_captioner, ~1 MB, an Orbax bundle) is
the one `python -m recap_jax.reproduce --config configs/mini_paper.py` fine-tunes on the
miniature world's descriptions (docs/mini_paper.md says how it was made): it names the shapes,
colours and backgrounds of that world (the `world_*.png` images); on other images it says the
nearest thing it knows. `--config.model.checkpoint=$PWD/out/demo/tiny-model
--config.model.build_tiny_if_missing=true` gives the tiny random stand-in instead.
"""

import os

from recap_jax.captioning.defaults import base_config

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINI_CAPTIONER = os.path.join(_REPO, "recap_jax", "assets", "mini_captioner")


def get_config():
    c = base_config()
    c.model.checkpoint = MINI_CAPTIONER
    c.input.format = "folder"
    c.input.paths = os.path.join(_REPO, "assets", "demo_images")
    c.input.files_per_unit = 2
    c.input.num_workers = 2
    c.output.dir = os.path.join(_REPO, "out", "demo", "captions")
    c.prompt = "describe this image"  # the instruction the miniature captioner was fine-tuned with
    c.decode.max_new_tokens = 24
    c.decode.batch_size = 4
    c.decode.prefill_batch = 2
    c.decode.prompt_buckets = (64,)
    c.progress_every_s = 2.0
    return c
