r"""Train a Recap-DiT (text-to-image DiT, the paper's Section 6) on an encode_latents output.

    python -m recap_jax.train_dit --config configs/recap_dit_cpu.py \
        --config.workdir=out/demo/dit --config.data.dir=out/demo/latents --config.text.encoder=/tmp/clip_tiny

The text encoder (--config.text.encoder) is frozen: a train_clip workdir or a Hugging Face
CLIPModel / CLIPTextModel folder. Every field is documented in recap_jax/dit/defaults.py.
Rerunning the same command resumes from the newest checkpoint at the same data position; SIGINT
saves and exits 130. Metrics: <workdir>/metrics.jsonl and TensorBoard under <workdir>/tensorboard.
Exit status: 0 done, 2 a usage error (one line; --debug for the traceback), 130 interrupted.
"""

from ml_collections import config_flags

from recap_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Recap-DiT config file (configs/recap_dit_*.py), e.g. configs/recap_dit_cpu.py; "
    "fields are overridden with --config.a.b=value.", lock_config=True)


def _job():
    from recap_jax.dit.trainer import train  # deferred past the flags (cli.job_main)
    return train


def _summary(result: dict) -> str:
    return str({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items() if k != "state"})


main = cli.job_main(_CONFIG, "configs/recap_dit_cpu.py", _job, _summary)


if __name__ == "__main__":
    cli.run_config_command(main, __doc__, __name__)
