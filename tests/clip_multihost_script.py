"""One process of the 2-host CLIP training check (run by test_clip_multihost.py).

argv: process_id num_processes port workdir data_root out.npz. Each process owns 4 CPU devices.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

process_id, num_processes, port, workdir, data_root, out = sys.argv[1:7]
if int(num_processes) > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=int(num_processes),
                               process_id=int(process_id))
else:  # the single-host reference uses 8 devices in one process
    jax.config.update("jax_num_cpu_devices", 8)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clip_helpers import tiny_config, write_shapes  # noqa: E402

from recap_jax.clip import trainer  # noqa: E402

assert jax.device_count() == 8, jax.devices()
shapes = write_shapes(data_root, num_train=128)
config = tiny_config(shapes, workdir, global_batch_size=32, num_steps=6, warmup_steps=2, log_every=2,
                     checkpoint_every=3)
config.eval.datasets.heldout.folder = shapes["heldout"]
config.eval.batch_size = 32
result = trainer.train(config)
if jax.process_index() == 0:
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_flatten_with_path(result["params"])[0]}
    flat["eval_t2i_r1"] = np.asarray(result["eval/heldout/text_to_image/R@1"])
    np.savez(out, **flat)
print("done", jax.process_index(), result["step"], flush=True)
