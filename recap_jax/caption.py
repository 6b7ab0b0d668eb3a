"""Recaption an image dataset with a LLaVA-LLaMA-3 captioner.

    python -m recap_jax.caption --config configs/demo.py
    python -m recap_jax.caption --config configs/v4_256.py --config.model.checkpoint=gs://... \\
        --config.input.paths='gs://bucket/datacomp/{00000..01000}.tar' --config.output.dir=gs://...

Run the same command on every host of a pod; each host captions its own share of the input and
writes its own output shards. Run it again after a crash or preemption: finished shards are kept
and the rest is redone. Config fields are documented in recap_jax/captioning/defaults.py.
Exit status: 0 done, 2 a usage error (one line naming the field or file; --debug for the
traceback), 3 nothing captioned (or more than output.max_failure_share failed), 130 interrupted
(recap_jax/captioning/outcome.py).
"""

import json
import os
import sys
from collections.abc import Sequence

# transformers warns on import that PyTorch is missing; the captioner never needs it.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from ml_collections import config_flags  # noqa: E402

from recap_jax import cli  # noqa: E402
from recap_jax.captioning import outcome  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Caption config file (configs/*.py).",
                                          lock_config=True)


def main(argv: Sequence[str]) -> int:
    config = cli.command_config(argv, _CONFIG.value, "configs/demo.py")
    return report(config)  # the mesh is checked after jax.distributed starts, before anything is written


def report(config) -> int:
    """Run the job; print its summary and closing line; return the exit status."""
    from recap_jax.captioning.run import run  # deferred past the flags (cli.job_main)
    try:
        summary = run(config)
    except KeyboardInterrupt:
        print("[caption] interrupted; run the same command again to continue", file=sys.stderr)
        return outcome.INTERRUPTED
    print(json.dumps(summary, indent=1))
    print(outcome.closing_line(summary, config))
    return outcome.exit_status(summary, config)


if __name__ == "__main__":
    cli.run_config_command(main, __doc__, __name__)
