"""Fine-tune a LLaVA-LLaMA-3 captioner: LLaVA-1.5's two stages and caption tuning.

    python -m recap_jax.finetune --config configs/finetune_cpu.py
    python -m recap_jax.finetune --config configs/llava_stage2_v4.py \
        --config.model.checkpoint=gs://.../stage1/export --config.data.path=gs://.../llava_v1_5_mix665k.json \
        --config.data.image_folder=gs://.../images --config.workdir=gs://.../stage2

Run the same command on every host of a pod. Run it again after a crash or preemption: it
resumes from the last checkpoint in the workdir at the same data position. The result is written
to <workdir>/export (for `python -m recap_jax.caption --config.model.checkpoint=...`) and
<workdir>/export_hf (a llava-hf folder). Config fields: recap_jax/training/defaults.py.
"""

import json
import sys

from absl import app, logging
from ml_collections import config_flags

from recap_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Fine-tuning config file (configs/*.py).",
                                          lock_config=True)


def main(argv):
    del argv
    if logging.get_verbosity() == logging.INFO and "-v" not in " ".join(sys.argv):
        logging.set_verbosity(logging.WARNING)  # library INFO logs (Orbax) drown the progress lines
    if _CONFIG.value is None:
        print("error: --config is required, e.g. --config configs/finetune_cpu.py", file=sys.stderr)
        return 2
    from recap_jax.training.trainer import run
    try:
        summary = run(_CONFIG.value)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    app.run(main)
