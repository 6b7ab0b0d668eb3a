r"""Recap-CLIP L/16 as the paper trains it: CLIPA stage 1 (112 px) then stage 2 (224 px).

    # stage 1 (on every host of a pod):
    python -m recap_jax.train_clip --distributed \
      --config "configs/recap_clip_l16.py:stage=1;workdir=gs://BUCKET/runs/l16_s1;folders=gs://BUCKET/recap/a,gs://BUCKET/recap/b;tokenizer=/home/USER/clip_tokenizer"
    # stage 2, initialised from stage 1 (position embeddings resampled to the 224 px grid):
    python -m recap_jax.train_clip --distributed \
      --config "configs/recap_clip_l16.py:stage=2;workdir=gs://BUCKET/runs/l16_s2;init=gs://BUCKET/runs/l16_s1;folders=...;tokenizer=..."

Argument keys (';'-separated): stage=1|2, text=small|base|large|huge (Table 4's text towers;
default: Table 2's pairing), workdir, folders, tokenizer, init (stage 2), eval. The recipe is in
recap_jax/clip/clipa.py; any field can still be overridden with --config.a.b=value (sample
counts: --config.train.num_samples, the batch: --config.train.global_batch_size).
"""

import importlib.util
import os

import ml_collections


def _base_config() -> ml_collections.ConfigDict:
    """configs/clip_tiny.py's fields (each documented there), loaded by path."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "clip_tiny.py")
    spec = importlib.util.spec_from_file_location("clip_tiny_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    from recap_jax.clip import clipa

    return clipa.apply_recipe(_base_config(), "L/16", arg)
