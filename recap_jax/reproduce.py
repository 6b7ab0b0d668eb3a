"""The paper in miniature on one CPU: fine-tune a captioner, recaption a noisy web, train
Recap-CLIPs at several p, evaluate, and write the Table 3-shaped table, a plot and a JSON.

    python -m recap_jax.reproduce --config configs/mini_paper.py           # default size
    python -m recap_jax.reproduce --config configs/mini_paper.py --quick   # the small size (tests)

Rerunning continues: finished stages are skipped, interrupted jobs resume from their checkpoints.
Outputs: <workdir>/table.md, plot.png, results.json (docs/mini_paper.md).
"""

from collections.abc import Sequence

from absl import flags
from ml_collections import config_flags

from recap_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/mini_paper.py", lock_config=False)
_QUICK = flags.DEFINE_bool("quick", False, "the small size of config.quick (a few minutes)")


def main(argv: Sequence[str]) -> int:
    config = cli.command_config(argv, _CONFIG.value, "configs/mini_paper.py")
    from recap_jax.mini_paper.run import apply_quick, run  # deferred past the flags (cli.job_main)

    run(apply_quick(config) if _QUICK.value else config)
    return 0


if __name__ == "__main__":
    cli.run_config_command(main, __doc__, __name__)
