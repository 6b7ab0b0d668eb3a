r"""Recap-CLIP S/16 as the paper trains it: CLIPA stage 1 (112 px) then stage 2 (224 px).

    # stage 1 (on every host of a pod; jax.distributed starts by itself on a TPU slice):
    python -m recap_jax.train_clip \
      --config "configs/recap_clip_s16.py:stage=1,workdir=gs://BUCKET/runs/s16_s1,folders=gs://BUCKET/recap/a,gs://BUCKET/recap/b,tokenizer=/home/USER/clip_tokenizer"
    # stage 2, initialised from stage 1 (position embeddings resampled to the 224 px grid):
    python -m recap_jax.train_clip \
      --config "configs/recap_clip_s16.py:stage=2,workdir=gs://BUCKET/runs/s16_s2,init=gs://BUCKET/runs/s16_s1,folders=gs://BUCKET/recap/a,tokenizer=/home/USER/clip_tokenizer"

Config argument (recap_jax.cli.parse_config_arg: key=value pairs separated by ','): stage=1|2,
text=small|base|large|huge (Table 4's text towers; default: Table 2's pairing), workdir, folders,
tokenizer, init (stage 2), eval. The recipe is recap_jax/clip/clipa.py; any field can still be
overridden with --config.a.b=value (e.g. --config.train.global_batch_size: the sample-based
schedule is kept).
"""

import ml_collections

from recap_jax.clip.clipa import recipe_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    return recipe_config("S/16", arg, "configs/recap_clip_s16.py")
