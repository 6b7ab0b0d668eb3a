"""Fine-tune a tiny captioner on CPU: the bundled demo images with their captions as LLaVA JSON.

    python -m recap_jax.finetune --config configs/finetune_cpu.py
    python -m recap_jax.caption --config configs/demo.py \
        --config.model.checkpoint=out/finetune_demo/export --config.output.dir=out/finetune_demo/captions

No downloads: the tiny random checkpoint of the caption demo is built on first use. Point
model.checkpoint, data.* and workdir at your own files to fine-tune something real.
"""

import os

from recap_jax.finetuning.defaults import base_config

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config():
    c = base_config()
    c.workdir = os.path.join(_REPO, "out", "finetune_demo")
    c.model.checkpoint = os.path.join(_REPO, "out", "demo", "tiny-model")
    c.model.build_tiny_if_missing = True
    c.data.format = "llava_json"
    c.data.path = os.path.join(_REPO, "assets", "demo_finetune.json")
    c.data.image_folder = os.path.join(_REPO, "assets", "demo_images")
    c.data.max_length = 128
    c.data.length_buckets = (64,)
    c.data.num_workers = 2
    c.train.trainable = "all"
    c.train.num_steps = 100
    c.train.global_batch_size = 5
    c.train.learning_rate = 5e-3
    c.train.checkpoint_every = 50
    c.train.log_every = 10
    c.mesh.fsdp = 1
    c.mesh.data = -1
    c.distributed.mode = "off"
    return c
