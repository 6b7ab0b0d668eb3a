r"""Train CLIP on recaptioned data (the captioner's TFDS ArrayRecord output folders).

    python -m recap_jax.train_clip --config configs/clip_tiny.py \
        --config.workdir=/tmp/clip_tiny --config.data.folders=/data/recap_out \
        --config.data.tokenizer=/models/clip_tokenizer

Every field of the config file can be overridden with --config.<field>=value (each field is
documented in recap_jax/clip/defaults.py). Rerunning the same command resumes from the latest
checkpoint in --config.workdir. Metrics: <workdir>/metrics.jsonl and TensorBoard events under
<workdir>/tensorboard (`tensorboard --logdir WORKDIR`).
On a multi-host TPU pod run the same command on every host (jax.distributed starts by itself there:
config.distributed.mode=auto). Exit status: 0 done, 2 a usage error (one line; --debug for the traceback), 130 stopped by
SIGINT/SIGTERM after saving a checkpoint (run the same command again to continue).
"""

from collections.abc import Sequence

from ml_collections import config_flags

from recap_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file (configs/clip_*.py), e.g. configs/clip_tiny.py; "
    "fields are overridden with --config.a.b=value.", lock_config=True)


def main(argv: Sequence[str]) -> int:
    config = cli.command_config(argv, _CONFIG.value, "configs/clip_tiny.py")
    from recap_jax.parallel.distributed import initialize_distributed
    initialize_distributed(config.distributed)
    import jax

    from recap_jax.clip import trainer

    result = trainer.train(config)
    result.pop("params")
    if jax.process_index() == 0:
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()})
    return 0


if __name__ == "__main__":
    cli.run_config_command(main, __doc__, __name__)
