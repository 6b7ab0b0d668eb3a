r"""Encode a caption job's output into the latents dataset Recap-DiT trains on.

    python -m recap_jax.encode_latents --config configs/dit_latents_cpu.py \
        --config.input.dir=out/demo/captions --config.autoencoder.dir=/models/sd-vae-ft-ema \
        --config.output.dir=out/demo/latents

Images are decoded, resized and centre-cropped as DiT does (`image_size`), encoded by the KL-f8
autoencoder of a diffusers folder (`autoencoder.dir`; or `--config.autoencoder.kind=pixels` for
no autoencoder) and written with key, url, org_caption and re_caption as ArrayRecord shards plus
`latents.json`. Hosts split the units; a killed run, started again, redoes only unfinished units.
Exit status: 0 done, 2 a usage error (one line naming the field or file; --debug for the traceback).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from ml_collections import config_flags

from recap_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Latents config file, e.g. configs/dit_latents_cpu.py; fields are overridden "
    "with --config.a.b=value.", lock_config=True)


def main(argv: Sequence[str]) -> int:
    config = cli.command_config(argv, _CONFIG.value, "configs/dit_latents_cpu.py")
    from recap_jax.dit.latents import run
    print(json.dumps(run(config), indent=1), flush=True)
    return 0


if __name__ == "__main__":
    cli.run_config_command(main, __doc__, __name__)
