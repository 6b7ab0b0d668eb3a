r"""Zero-shot image<->text retrieval (recall@1/5/10, CLIP_benchmark definitions) of a CLIP model.

    python -m recap_jax.eval_retrieval --config configs/clip_eval.py \
        --config.model.checkpoint=/tmp/clip_tiny \
        --config.datasets.main.folder=/data/coco_karpathy --config.datasets.main.split=test \
        --config.datasets.main.caption_fields=captions/text

The model is either a train_clip workdir (--config.model.checkpoint) or a Hugging Face CLIPModel
folder (--config.model.hf_dir). Datasets are TFDS/ArrayRecord folders with one record per image
and one or more caption fields. See configs/clip_eval.py for every field. Exit status: 0 done,
2 a usage error (one line naming the field or file; --debug for the traceback).
"""

from __future__ import annotations

from collections.abc import Sequence

from ml_collections import config_flags

from recap_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Evaluation config file, e.g. configs/clip_eval.py; fields are overridden "
    "with --config.a.b=value.", lock_config=True)


def main(argv: Sequence[str]) -> int:
    config = cli.command_config(argv, _CONFIG.value, "configs/clip_eval.py")
    from recap_jax.parallel.distributed import initialize_distributed
    initialize_distributed(config.distributed)
    from recap_jax.clip.retrieval_job import evaluate_config
    evaluate_config(config)
    return 0


if __name__ == "__main__":
    cli.run_config_command(main, __doc__, __name__)
