r"""Train CLIP on recaptioned data (the captioner's TFDS ArrayRecord output folders).

    python -m recap_jax.train_clip --config configs/clip_tiny.py \
        --config.workdir=/tmp/clip_tiny --config.data.folders=/data/recap_out \
        --config.data.tokenizer=/models/clip_tokenizer

Every field of the config file can be overridden with --config.<field>=value (see the comments in
configs/clip_tiny.py for what each field means). Rerunning the same command resumes from the
latest checkpoint in --config.workdir. Metrics: <workdir>/metrics.jsonl.
On a multi-host TPU pod run the same command on every host (jax.distributed is initialised
automatically when --distributed is set).
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file (configs/clip_*.py), e.g. configs/clip_tiny.py; "
    "fields are overridden with --config.a.b=value.", lock_config=True)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() first (multi-host TPU pods).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax

    if not flags.FLAGS["verbosity"].present:  # Orbax logs every file it writes at INFO
        logging.set_verbosity(logging.WARNING)
    if _DISTRIBUTED.value:
        jax.distributed.initialize()
    from recap_jax.clip import trainer
    from recap_jax.errors import UserError

    try:
        result = trainer.train(_CONFIG.value)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    result.pop("params", None)
    if jax.process_index() == 0:
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()})


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
