r"""The paper's CLIP evaluation suite in one command: ImageNet-1K zero-shot, COCO and Flickr30K
(Karpathy test) retrieval, Urban-1K long-caption retrieval and VG-Attribution; writes
<output_dir>/eval_suite.json and a Markdown table with the paper's Table 3 / 6 columns.

    python -m recap_jax.eval_suite --config configs/eval_suite.py \
        --config.model.checkpoint=/runs/recap_clip_b16_s2 --config.output_dir=/tmp/suite \
        --config.coco.annotations=/data/karpathy/dataset_coco.json --config.coco.images=/data/coco \
        --config.imagenet.folder=/data/imagenet --config.urban1k.folder=/data/Urban1k

Datasets whose paths are left unset are skipped with a line; a path that is set but not there is
an error naming the field (exit 2). See configs/eval_suite.py.
Exit status: 0 done, 2 a usage error (one line naming the field or file; --debug for the traceback).
"""

from ml_collections import config_flags

from recap_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Suite config file, e.g. configs/eval_suite.py; fields are overridden with "
    "--config.a.b=value.", lock_config=True)


def _evaluate():
    from recap_jax.clip.suite.run import evaluate_model  # deferred past the flags (cli.job_main)
    return evaluate_model


main = cli.job_main(_CONFIG, "configs/eval_suite.py", _evaluate)


if __name__ == "__main__":
    cli.run_config_command(main, __doc__, __name__)
