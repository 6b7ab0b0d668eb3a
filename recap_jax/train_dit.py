r"""Train a Recap-DiT (text-to-image DiT, the paper's Section 6) on an encode_latents output.

    python -m recap_jax.train_dit --config configs/recap_dit_cpu.py \
        --config.workdir=/tmp/dit --config.data.dir=/tmp/latents --config.text.encoder=/tmp/clip_run

The text encoder (--config.text.encoder) is frozen: a train_clip workdir or a Hugging Face
CLIPModel / CLIPTextModel folder. Every field is documented in recap_jax/dit/defaults.py.
Rerunning the same command resumes from the newest checkpoint at the same data position; SIGINT
saves and exits 130. Metrics: <workdir>/metrics.jsonl and TensorBoard under <workdir>/tensorboard.
Exit status: 0 done, 2 a usage error (one line; --debug for the traceback), 130 interrupted.
"""

from collections.abc import Sequence

from ml_collections import config_flags

from recap_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Recap-DiT config file (configs/recap_dit_*.py), e.g. configs/recap_dit_cpu.py; "
    "fields are overridden with --config.a.b=value.", lock_config=True)


def main(argv: Sequence[str]) -> int:
    config = cli.command_config(argv, _CONFIG.value, "configs/recap_dit_cpu.py")
    from recap_jax.parallel.distributed import initialize_distributed
    initialize_distributed(config.distributed)
    import jax

    from recap_jax.dit import trainer

    result = trainer.train(config)
    result.pop("state")
    if jax.process_index() == 0:
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()})
    return 0


if __name__ == "__main__":
    cli.run_config_command(main, __doc__, __name__)
