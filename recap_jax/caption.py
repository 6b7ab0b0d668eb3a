"""Recaption an image dataset with a LLaVA-LLaMA-3 captioner.

    python -m recap_jax.caption --config configs/demo.py
    python -m recap_jax.caption --config configs/v4_256.py --config.model.checkpoint=gs://... \\
        --config.input.paths='gs://bucket/datacomp/{00000..01000}.tar' --config.output.dir=gs://...

Run the same command on every host of a pod; each host captions its own share of the input and
writes its own output shards. Run it again after a crash or preemption: finished shards are kept
and the rest is redone. Config fields are documented in recap_jax/captioning/defaults.py.
Exit status: 0 done, 2 a usage error (one line naming the field or file; --debug for the traceback).
"""

import json
from collections.abc import Sequence

from ml_collections import config_flags

from recap_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Caption config file (configs/*.py).",
                                          lock_config=True)


def main(argv: Sequence[str]) -> int:
    config = cli.command_config(argv, _CONFIG.value, "configs/demo.py")
    import jax

    from recap_jax.captioning.run import run
    from recap_jax.parallel.mesh import mesh_axis_sizes
    mesh_axis_sizes(dict(config.mesh), jax.local_device_count())  # before anything is written
    summary = run(config)
    print(json.dumps(summary, indent=1))
    print(f"[caption] output: {config.output.dir} (read it with "
          f"tfds.builder_from_directory(...).as_data_source('train'))")
    return 0


if __name__ == "__main__":
    cli.run_config_command(main, __doc__, __name__)
