"""The bundled offline demo: a tiny random captioner on the images in assets/demo_images.

    python -m recap_jax.caption --config configs/demo.py

No TPU, no downloads: the tiny checkpoint is built on first use under out/demo/. Its captions are
random words; the pipeline (decode, prefill, continuous-batching decode, output shards) is real.
"""

import os

from recap_jax.captioning.defaults import base_config

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config():
    c = base_config()
    c.model.checkpoint = os.path.join(_REPO, "out", "demo", "tiny-model")
    c.model.build_tiny_if_missing = True
    c.input.format = "folder"
    c.input.paths = os.path.join(_REPO, "assets", "demo_images")
    c.input.files_per_unit = 2
    c.input.num_workers = 2
    c.output.dir = os.path.join(_REPO, "out", "demo", "captions")
    c.decode.max_new_tokens = 24
    c.decode.batch_size = 4
    c.decode.prefill_batch = 2
    c.decode.prompt_buckets = (64,)
    c.progress_every_s = 2.0
    return c
