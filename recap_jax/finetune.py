"""Fine-tune a LLaVA-LLaMA-3 captioner: LLaVA-1.5's two stages and caption tuning.

    python -m recap_jax.finetune --config configs/finetune_cpu.py
    python -m recap_jax.finetune --config configs/llava_stage2_v4.py \\
        --config.model.checkpoint=gs://.../stage1/export --config.data.path=gs://.../llava_v1_5_mix665k.json \\
        --config.data.image_folder=gs://.../images --config.workdir=gs://.../stage2

Run the same command on every host of a pod. Run it again after a crash or preemption: it
resumes from the last checkpoint in the workdir at the same data position. The result is written
to <workdir>/export (for `python -m recap_jax.caption --config.model.checkpoint=...`) and
<workdir>/export_hf (a llava-hf folder). Config fields: recap_jax/finetuning/defaults.py.
Exit status: 0 done, 2 a usage error (one line naming the field or file; --debug for the traceback).
"""

import json
from collections.abc import Sequence

from ml_collections import config_flags

from recap_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Fine-tuning config file (configs/*.py).",
                                          lock_config=True)


def main(argv: Sequence[str]) -> int:
    config = cli.command_config(argv, _CONFIG.value, "configs/finetune_cpu.py")
    from recap_jax.finetuning.trainer import run  # deferred past the flags (cli.job_main)
    print(json.dumps(run(config), indent=1))
    return 0


if __name__ == "__main__":
    cli.run_config_command(main, __doc__, __name__)
