"""The fine-tuning job: converted checkpoint + data -> trained params -> export folders.

Follow one step:
1. `BatchMaker` encodes the next records' conversations (every host), decodes this host's images
   in threads, a prefetch thread keeps the next batches ready.
2. The host rows become one global array per field, [grad_accum_steps, rows, ...], sharded over
   the mesh's batch axes; the jitted step scans the micro-batches, summing gradients of the
   trainable params, and applies AdamW.
3. Every `train.checkpoint_every` steps Orbax saves step + trainable params + optimizer state and
   the data position; a rerun restores them and reads on from that position (exact resume).
4. At the end the merged params are exported to <workdir>/export and <workdir>/export_hf.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from recap_jax.captioning.tiny_demo import build_tiny_checkpoint
from recap_jax.captioning import model_loading
from recap_jax.conversion import bundle
from recap_jax.conversion.llava import abstract_params
from recap_jax.errors import ConfigError
from recap_jax.models.layers import dtype_from_name
from recap_jax.models.llama import REMAT_CHOICES
from recap_jax.models.llava import LlavaModel
from recap_jax.parallel import mesh as mesh_lib
from recap_jax.parallel.distributed import check_distributed_config, initialize_distributed
from recap_jax.training import export, step as step_lib
from recap_jax.training.batches import BatchMaker, FailureLog, Position, prefetch
from recap_jax.training.conversation import ConversationEncoder
from recap_jax.training.records import make_reader

BATCH_AXES = {"tokens": (None, "batch", "length"), "targets": (None, "batch", "length"),
              "weights": (None, "batch", "length"), "pixels": (None, "batch", None, None, None)}


def validate(config: ml_collections.ConfigDict) -> None:
    """Fail at start-up, naming the field."""
    if not config.workdir:
        raise ConfigError("workdir: required (checkpoints, failures and the export go there)")
    m = config.model
    if bool(m.get("vision_dir")) != bool(m.get("llm_dir")):
        raise ConfigError("model.vision_dir and model.llm_dir: give both (stage 1 from parts) or neither")
    if m.get("vision_dir") and m.checkpoint:
        raise ConfigError("model.checkpoint: give it or model.vision_dir + model.llm_dir, not both")
    if m.get("vision_dir"):
        for field in ("vision_dir", "llm_dir"):
            if "://" not in m[field] and not epath.Path(m[field]).is_dir():
                raise ConfigError(f"model.{field}: {m[field]} is not a folder")
    elif not config.model.checkpoint:
        raise ConfigError("model.checkpoint: required (a `python -m recap_jax.convert` output folder), "
                          "or model.vision_dir + model.llm_dir for stage 1 from parts")
    elif ("://" not in config.model.checkpoint and not config.model.build_tiny_if_missing
            and not epath.Path(config.model.checkpoint).exists()):
        raise ConfigError(f"model.checkpoint: {config.model.checkpoint} does not exist")
    if config.model.dtype not in bundle.DTYPES:
        raise ConfigError(f"model.dtype={config.model.dtype!r}: expected one of {sorted(bundle.DTYPES)}")
    dtype_from_name(config.model.compute_dtype, "model.compute_dtype")
    t = config.train
    if t.trainable not in step_lib.TRAINABLE:
        raise ConfigError(f"train.trainable={t.trainable!r}: expected one of {sorted(step_lib.TRAINABLE)}")
    if t.global_batch_size < 1 or t.grad_accum_steps < 1:
        raise ConfigError("train.global_batch_size and train.grad_accum_steps must be >= 1")
    if t.remat not in REMAT_CHOICES:
        raise ConfigError(f"train.remat={t.remat!r}: expected one of {list(REMAT_CHOICES)}")
    if t.loss_chunk < 0:
        raise ConfigError(f"train.loss_chunk={t.loss_chunk}: must be >= 0 (0 = no chunking)")
    check_distributed_config(config.distributed)
    rows = t.global_batch_size // max(jax.process_count(), 1)
    if t.global_batch_size % (t.grad_accum_steps * jax.process_count()):
        raise ConfigError(f"train.global_batch_size={t.global_batch_size} must divide by "
                          f"train.grad_accum_steps x hosts = {t.grad_accum_steps * jax.process_count()}")
    if rows // t.grad_accum_steps < 1:
        raise ConfigError("train.grad_accum_steps: leaves no rows per micro-batch")
    if t.learning_rate <= 0:
        raise ConfigError(f"train.learning_rate={t.learning_rate}: must be > 0")
    if t.checkpoint_every < 1:
        raise ConfigError(f"train.checkpoint_every={t.checkpoint_every}: must be >= 1")


def _absolute_paths(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Local paths made absolute (Orbax refuses relative ones)."""
    config = ml_collections.ConfigDict(config.to_dict())
    for holder, field in ((config, "workdir"), (config.model, "checkpoint"), (config.model, "vision_dir"),
                          (config.model, "llm_dir")):
        value = getattr(holder, field)
        if value and "://" not in value:
            setattr(holder, field, os.path.abspath(value))
    return config


def _log(message: str) -> None:
    if jax.process_index() == 0:
        print(f"[finetune] {message}", flush=True)


def _num_steps(config, reader) -> int:
    t = config.train
    if t.num_steps > 0:
        return int(t.num_steps)
    if t.num_steps != -1:
        raise ConfigError(f"train.num_steps={t.num_steps}: > 0, or -1 for one epoch of a llava_json file")
    try:
        records = len(reader)
    except TypeError:
        raise ConfigError(f"train.num_steps: data.format={config.data.format!r} has no known length; "
                          "set the number of steps") from None
    return max(records // t.global_batch_size, 1)


def device_batch(arrays: dict[str, np.ndarray], accum: int, mesh) -> dict[str, jax.Array]:
    """This host's rows [R, ...] -> global arrays [accum, B / accum, ...] sharded by batch."""
    out = {}
    for name, local in arrays.items():
        local = local.reshape((accum, local.shape[0] // accum) + local.shape[1:])
        sharding = mesh_lib.logical_sharding(mesh, BATCH_AXES[name])
        global_shape = (accum, local.shape[1] * jax.process_count()) + local.shape[2:]
        out[name] = jax.make_array_from_process_local_data(sharding, local, global_shape)
    return out


class _Metrics:
    """metrics.jsonl in the workdir (process 0) and a progress line per entry."""

    def __init__(self, workdir: epath.Path):
        self.path = workdir / "metrics.jsonl"

    def write(self, entry: dict[str, Any]) -> None:
        if jax.process_index() != 0:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(entry) + "\n")
        _log(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in entry.items()))


def _start_params(config: ml_collections.ConfigDict, mesh) -> tuple[bundle.CaptionerSpec, dict]:
    """(spec, params placed on the mesh) of the converted checkpoint, or of the stage-1 parts."""
    m = config.model
    if m.get("vision_dir"):
        from recap_jax.conversion import parts

        spec, tensors = parts.read_parts(m.vision_dir, m.llm_dir, m.template or "llama3_llava")
    else:
        spec, _ = model_loading.read_converted_spec(m.checkpoint, m.tokenizer or None)
        if m.template:
            spec.template = m.template
    shardings = mesh_lib.params_shardings(mesh, abstract_params(spec.config, jnp.dtype(bundle.param_dtype(m.dtype))))
    if m.get("vision_dir"):
        host = parts.params_from_parts(spec, tensors, bundle.param_dtype(m.dtype), m.projector_seed)
        return spec, jax.device_put(host, shardings)
    return spec, model_loading.restore_params(m.checkpoint, spec.config, m.dtype, shardings)


def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Fine-tune as `config` says; returns a summary (steps, last loss, export folders)."""
    validate(config)
    initialize_distributed(config.distributed)
    config = _absolute_paths(config)
    workdir = epath.Path(config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t, m = config.train, config.model
    mesh = mesh_lib.make_mesh(dict(config.mesh))
    splits = mesh.shape["data"] * mesh.shape["fsdp"]
    if (t.global_batch_size // t.grad_accum_steps) % splits:
        raise ConfigError(f"train.global_batch_size / train.grad_accum_steps = "
                          f"{t.global_batch_size // t.grad_accum_steps} rows per micro-batch must divide "
                          f"among the mesh's data x fsdp = {splits} batch shards")

    if m.build_tiny_if_missing and not epath.Path(m.checkpoint).exists():
        build_tiny_checkpoint(m.checkpoint)
    spec, params = _start_params(config, mesh)
    model = LlavaModel(spec.config, dtype=dtype_from_name(m.compute_dtype, "model.compute_dtype"), remat=t.remat)
    trainable, frozen = step_lib.split_params(params, t.trainable)
    del params

    reader = make_reader(config.data.format, config.data.path, config.data.image_folder,
                         config.data.prompt, config.data.caption_field, config.data.shuffle, config.data.seed)
    num_steps = _num_steps(config, reader)
    settings = step_lib.OptimizerSettings(
        learning_rate=t.learning_rate, num_steps=num_steps, warmup_ratio=t.warmup_ratio,
        weight_decay=t.weight_decay, b1=t.b1, b2=t.b2, eps=t.eps, max_grad_norm=t.max_grad_norm)
    optimizer = step_lib.make_optimizer(settings)
    state = jax.jit(lambda p: step_lib.init_state(p, optimizer))(trainable)
    state_shardings = jax.tree.map(lambda x: x.sharding, state)

    manager = ocp.CheckpointManager(
        workdir / "checkpoints", item_names=("state", "data"),
        options=ocp.CheckpointManagerOptions(max_to_keep=t.keep_checkpoints, create=True,
                                             enable_async_checkpointing=False))
    position = Position()
    latest = manager.latest_step()
    if latest is not None:
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
        restored = manager.restore(latest, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
        state, position = restored.state, Position(**restored.data)
        _log(f"resumed at step {latest} (epoch {position.epoch}, record {position.offset}, "
             f"batch {position.skip} of its length group)")
    else:
        count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))  # noqa: E731
        _log(f"new run: {count(state['trainable']):,} trainable of "
             f"{count(state['trainable']) + count(frozen):,} params, {num_steps} steps, "
             f"mesh {dict(mesh.shape)}")

    failures = FailureLog(workdir, jax.process_index())
    maker = BatchMaker(reader, ConversationEncoder(spec.prompt_encoder()), spec.image,
                       global_batch_size=t.global_batch_size, max_length=config.data.max_length,
                       length_buckets=tuple(config.data.length_buckets), failures=failures,
                       process_index=jax.process_index(), process_count=jax.process_count(),
                       num_workers=config.data.num_workers, max_pixels=config.data.max_pixels,
                       group_batches=config.data.get("length_group_batches", 1), seed=config.data.seed)
    train_step = jax.jit(step_lib.make_train_step(model, optimizer, t.loss_chunk), donate_argnums=(0,),
                         out_shardings=(state_shardings, mesh_lib.replicated(mesh)))
    metrics_log = _Metrics(workdir)
    step = int(state["step"])
    last: dict[str, Any] = {}
    start, tokens_seen = time.time(), 0
    batches = prefetch(maker.batches(position)) if step < num_steps else iter(())
    for batch in batches:
        arrays = device_batch(batch.arrays, t.grad_accum_steps, mesh)
        state, metrics = train_step(state, frozen, arrays)
        step += 1
        tokens_seen += batch.arrays["tokens"].size * jax.process_count()
        if step % t.log_every == 0 or step == num_steps:
            metrics = jax.device_get(metrics)
            if not np.isfinite(metrics["loss"]):
                raise FloatingPointError(f"step {step}: loss is {metrics['loss']}")
            elapsed = time.time() - start
            last = {"step": step, "loss": float(metrics["loss"]), "grad_norm": float(metrics["grad_norm"]),
                    "learning_rate": float(step_lib.learning_rate_schedule(settings)(step - 1)),
                    "tokens_per_s": tokens_seen / max(elapsed, 1e-9), "failures": failures.count}
            metrics_log.write(last)
            start, tokens_seen = time.time(), 0
        if step % t.checkpoint_every == 0 or step == num_steps:
            manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(dataclasses.asdict(batch.next_position))))
        if step >= num_steps:
            break
    manager.wait_until_finished()
    manager.close()

    summary: dict[str, Any] = {"steps": step, "num_steps": num_steps, "workdir": str(workdir),
                               "failures": failures.count, **{k: v for k, v in last.items() if k != "step"}}
    params = step_lib.merge_params(state["trainable"], frozen)
    origin = str(m.checkpoint) if m.checkpoint else {"vision_dir": m.vision_dir, "llm_dir": m.llm_dir,
                                                         "projector_seed": m.projector_seed}
    source = {"finetuned_from": origin, "step": step, "trainable": t.trainable}
    if config.export.converted:
        summary["export"] = str(export.export_converted(workdir / "export", spec, params, m.dtype, source))
    if config.export.hf:
        summary["export_hf"] = str(export.export_hf(workdir / "export_hf", spec, params, m.dtype))
    return summary
