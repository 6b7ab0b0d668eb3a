"""Recaption an image dataset with a LLaVA-LLaMA-3 captioner.

    python -m recap_jax.caption --config configs/demo.py
    python -m recap_jax.caption --config configs/v4_256.py --config.model.checkpoint=gs://... \
        --config.input.paths='gs://bucket/datacomp/{00000..01000}.tar' --config.output.dir=gs://...

Run the same command on every host of a pod; each host captions its own share of the input and
writes its own output shards. Run it again after a crash or preemption: finished shards are kept
and the rest is redone. Config fields are documented in recap_jax/captioning/defaults.py.
Exit status: 0 done, 2 usage error, 3 nothing captioned (or more than output.max_failure_share
failed), 130 interrupted (recap_jax/captioning/outcome.py).
"""

import json
import os
import sys

# transformers warns on import that PyTorch is missing; the captioner never needs it.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from absl import app, logging
from ml_collections import config_flags

from recap_jax.captioning import outcome
from recap_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Caption config file (configs/*.py).",
                                          lock_config=True)


def main(argv):
    del argv
    if logging.get_verbosity() == logging.INFO and "-v" not in " ".join(sys.argv):
        logging.set_verbosity(logging.WARNING)  # library INFO logs (Orbax) drown the progress lines
    if _CONFIG.value is None:
        print("error: --config is required, e.g. --config configs/demo.py", file=sys.stderr)
        return 2
    return execute(_CONFIG.value)


def execute(config) -> int:
    """Run the job on a config; print its summary and closing line; return the exit status."""
    from recap_jax.captioning.run import run
    try:
        summary = run(config)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return outcome.USAGE
    except KeyboardInterrupt:
        print("[caption] interrupted; run the same command again to continue", file=sys.stderr)
        return outcome.INTERRUPTED
    print(json.dumps(summary, indent=1))
    print(outcome.closing_line(summary, config))
    return outcome.exit_status(summary, config)


if __name__ == "__main__":
    app.run(main)
