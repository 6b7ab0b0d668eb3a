r"""Tiny CLIP on CPU in a few minutes (synthetic shapes; see docs/clip.md).

    python -m recap_jax.clip.synthetic --out /tmp/shapes
    python -m recap_jax.train_clip --config configs/clip_tiny.py \
        --config.workdir=/tmp/clip_tiny \
        --config.data.folders=/tmp/shapes/train --config.data.tokenizer=/tmp/shapes/tokenizer \
        --config.eval.datasets.heldout.folder=/tmp/shapes/heldout

Every field and its meaning: recap_jax/clip/defaults.py. Optional config argument (after the
file name, recap_jax.cli.parse_config_arg syntax): `folders=` captioner output folders, e.g.
`--config configs/clip_tiny.py:folders=/data/recap_a,/data/recap_b` (same as --config.data.folders).
"""

import ml_collections

from recap_jax.cli import parse_config_arg
from recap_jax.clip.defaults import base_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    args = parse_config_arg(arg, dict(folders=""), "configs/clip_tiny.py")
    return base_config(args["folders"])
