"""Compiled per-chip memory of the 8B LLaVA stage-2 train step on a TPU v4 slice, without a TPU.

    python benchmarks/finetune_tpu_memory.py [--topology v4-8] [--config configs/llava_stage2_v4.py]

The finetune job's own jitted step (`recap_jax.training.step.make_train_step`, AdamW, donation of
the state, the config's mesh and accum_steps) over the built-in LLaVA-LLaMA-3-8B
(`recap_jax.planning.model_spec`), compiled ahead of time for the slice's devices described by
libtpu (`recap_jax.planning.chips.compile_slice`, as `python -m recap_jax.plan` does); params,
optimizer state and batch are ShapeDtypeStructs (no weights). Reads `compiled.memory_analysis()`:
arguments + outputs not aliasing a donated argument + temporaries + code, per chip. Writes
benchmarks/results/finetune_tpu_memory.json (--out).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import re
import time

HERE = pathlib.Path(__file__).resolve().parent


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("finetune_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topology", default="v4-8")
    parser.add_argument("--config", default=str(HERE.parent / "configs" / "llava_stage2_v4.py"))
    parser.add_argument("--accum_steps", type=int, default=0, help="override the config's (0: keep)")
    parser.add_argument("--remat", default="", help="override the config's train.remat ('': keep)")
    parser.add_argument("--loss_chunk", type=int, default=-1, help="override the config's train.loss_chunk (-1: keep)")
    parser.add_argument("--out", default=str(HERE / "results" / "finetune_tpu_memory.json"))
    args = parser.parse_args()
    os.environ["JAX_PLATFORMS"] = "cpu"  # libtpu only describes the devices; nothing runs on a TPU

    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    from recap_jax.conversion.llava import abstract_params
    from recap_jax.models.config import llava_config_from_hf
    from recap_jax.models.llava import LlavaModel
    from recap_jax.parallel import mesh as mesh_lib
    from recap_jax.planning.chips import compile_slice
    from recap_jax.planning.hlo import compiled_stats
    from recap_jax.planning.model_spec import BUILTIN_MODELS
    from recap_jax.training import optimizer as optimizer_lib, step as step_lib
    from recap_jax.training.trainer import BATCH_AXES

    config = load_config(args.config)
    if args.accum_steps:
        config.train.accum_steps = args.accum_steps
    if args.remat:
        config.train.remat = args.remat
    if args.loss_chunk >= 0:
        config.train.loss_chunk = args.loss_chunk
    t = config.train
    tpu = compile_slice(args.topology)
    devices = list(tpu.devices)
    mesh = mesh_lib.make_mesh(dict(config.mesh), devices=devices)
    llava = llava_config_from_hf(BUILTIN_MODELS["llava-llama-3-8b"])
    model = LlavaModel(llava, dtype=jnp.bfloat16, remat=t.remat)
    boxed = abstract_params(llava, jnp.dtype(jnp.bfloat16))
    shardings = mesh_lib.params_shardings(mesh, boxed)
    shapes = nn.unbox(boxed)
    params = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
    trainable, frozen = step_lib.split_params(params, t.trainable)
    optimizer = optimizer_lib.make_optimizer(optimizer_lib.settings_from_config(t, num_steps=1000))
    state_shapes = jax.eval_shape(lambda p: step_lib.init_state(p, optimizer), trainable)
    # The state shares the params' logical sharding: f32 master weights and both Adam moments.
    by_path = {jax.tree_util.keystr(k): v.sharding for k, v in jax.tree_util.tree_leaves_with_path(trainable)}

    def state_sharding(path, leaf):
        key = jax.tree_util.keystr(path)
        match = next((sh for p, sh in by_path.items() if key.endswith(p)), None)
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=match or mesh_lib.replicated(mesh))

    state = jax.tree_util.tree_map_with_path(state_sharding, state_shapes)
    rows = t.global_batch_size // t.accum_steps
    length, side = config.data.max_length, llava.vision.image_size
    shapes_of = {"tokens": ((t.accum_steps, rows, length), jnp.int32),
                 "targets": ((t.accum_steps, rows, length), jnp.int32),
                 "weights": ((t.accum_steps, rows, length), jnp.float32),
                 "pixels": ((t.accum_steps, rows, side, side, 3), jnp.float32)}
    batch = {k: jax.ShapeDtypeStruct(s, d, sharding=mesh_lib.logical_sharding(mesh, BATCH_AXES[k]))
             for k, (s, d) in shapes_of.items()}
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    step = jax.jit(step_lib.make_train_step(model, optimizer, t.loss_chunk), donate_argnums=(0,),
                   out_shardings=(state_shardings, mesh_lib.replicated(mesh)))
    gib = 1024 ** 3
    result = {"topology": tpu.name, "chips": tpu.num_chips, "chip_hbm_gib": round(tpu.chip.hbm_bytes / gib, 1),
              "mesh": dict(mesh.shape), "trainable": t.trainable, "global_batch_size": t.global_batch_size,
              "accum_steps": t.accum_steps, "rows_per_micro_batch": rows,
              "remat": t.remat, "loss_chunk": t.loss_chunk, "max_length": length}
    start = time.time()
    try:
        with mesh:
            compiled = step.lower(state, frozen, batch).compile()
    except Exception as e:  # noqa: BLE001 - the TPU compiler refuses programs larger than HBM
        message = str(e)
        if "RESOURCE_EXHAUSTED" not in message:
            raise
        # "... required for HLO temporaries (1.21T) exceeds available HBM (30.75G)": its own figure.
        found = re.search(r"HLO temporaries \(([\d.]+[KMGT]?)\)", message)
        result.update(fits=False, compiler_error=message.splitlines()[0][:300],
                      temporaries=found.group(1) if found else None, compile_seconds=round(time.time() - start, 1))
    else:
        stats = compiled_stats(compiled)
        result.update(per_chip_gib=round(stats.peak_bytes / gib, 2),
                      arguments_gib=round(stats.argument_bytes / gib, 2),
                      temporaries_gib=round(stats.temp_bytes / gib, 2),
                      compile_seconds=round(time.time() - start, 1),
                      fits=stats.peak_bytes + gib <= tpu.chip.hbm_bytes)  # 1 GiB runtime reserve, as `plan`
    print(json.dumps(result, indent=1))
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
