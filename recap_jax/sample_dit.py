r"""Generate images from text prompts with a trained Recap-DiT (train_dit's workdir).

    python -m recap_jax.sample_dit --config configs/recap_dit_cpu.py --config.workdir=/tmp/dit \
        --config.sample.prompts=prompts.txt --config.sample.out=/tmp/dit_samples

One PNG per prompt line (sample.out/00001.png for line 1, ...) plus a TFDS ArrayRecord dataset
(key, prompt, image) in sample.out. Guidance (sample.guidance_scale, the paper: 10), sampler
(sample.sampler ddpm|ddim, sample.steps, the paper: 250 DDPM steps) and seed (sample.seed) are
config fields (recap_jax/dit/defaults.py). Each image is seeded by sample.seed and its line number
only, so it does not depend on the batch size, device count or a resumed run. Rerunning the same
command finishes an interrupted run. Exit status: 0 done, 2 a usage error (one line).
"""

from ml_collections import config_flags

from recap_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Recap-DiT config file (configs/recap_dit_*.py), e.g. configs/recap_dit_cpu.py; "
    "fields are overridden with --config.a.b=value.", lock_config=True)


def _job():
    from recap_jax.dit.sample_job import run  # deferred past the flags (cli.job_main)
    return run


main = cli.job_main(_CONFIG, "configs/recap_dit_cpu.py", _job, str)


if __name__ == "__main__":
    cli.run_config_command(main, __doc__, __name__)
