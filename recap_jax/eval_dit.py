r"""Evaluate a Recap-DiT run as the paper's Table 7 does: FID and CLIP score per prompt set.

    python -m recap_jax.eval_dit --config configs/recap_dit_cpu.py \
        --config.eval.reference_dir=/data/coco_val2014 --config.eval.clip=/models/clip-vit-base-patch32 \
        --config.eval.inception_weights=/models/pt_inception-2015-12-05.safetensors \
        --config.eval.prompt_sets=raw=coco_raw.txt,recap=coco_recap.txt

Images come from the run in `workdir` (`recap_jax.dit.sample.generate`, the sample.* fields;
each prompt seeded by its line number). FID uses InceptionV3 pool features from the weights file
`eval.inception_weights` (or `--config.eval.fid_features=clip`: the CLIP model's image features);
the CLIP score is 100 x cosine, floored at 0, with `eval.clip` (a HF CLIPModel folder or a
train_clip workdir). Writes table.md, results.json and grid.png to `eval.out`
(default WORKDIR/eval). Exit status: 0 done, 2 a usage error (one line naming the field or file).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from ml_collections import config_flags

from recap_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Recap-DiT config file, e.g. configs/recap_dit_cpu.py; fields are overridden "
    "with --config.a.b=value.", lock_config=True)


def main(argv: Sequence[str]) -> int:
    config = cli.command_config(argv, _CONFIG.value, "configs/recap_dit_cpu.py")
    from recap_jax.dit.evaluate import evaluate
    from recap_jax.errors import ConfigError
    for field in ("workdir", "sample", "eval"):
        if field not in config:
            raise ConfigError(f"--config: no field {field!r}; a Recap-DiT config (configs/recap_dit_cpu.py) is expected")
    results = evaluate(config)
    print(json.dumps(results, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    cli.run_config_command(main, __doc__, __name__)
