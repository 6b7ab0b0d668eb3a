r"""The paper's CLIP evaluation suite in one command: ImageNet-1K zero-shot, COCO and Flickr30K
(Karpathy test) retrieval, Urban-1K long-caption retrieval and VG-Attribution; writes
<output_dir>/eval_suite.json and a Markdown table with the paper's Table 3 / 6 columns.

    python -m recap_jax.eval_suite --config configs/eval_suite.py \
        --config.model.checkpoint=/runs/recap_clip_b16_s2 --config.output_dir=/tmp/suite \
        --config.coco.annotations=/data/karpathy/dataset_coco.json --config.coco.images=/data/coco \
        --config.imagenet.folder=/data/imagenet --config.urban1k.folder=/data/Urban1k

Datasets whose paths are not set (or not there) are skipped with a line. See configs/eval_suite.py.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Suite config file, e.g. configs/eval_suite.py; fields are overridden with "
    "--config.a.b=value.", lock_config=True)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() first (multi-host TPU pods).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    if _DISTRIBUTED.value:
        import jax
        jax.distributed.initialize()
    from recap_jax.clip.suite import run as suite
    from recap_jax.errors import UserError

    try:
        suite.evaluate_model(_CONFIG.value)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
