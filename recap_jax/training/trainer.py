"""The fine-tuning trainer: what is the captioner's own in a run of the one training loop.

Follow one step:
1. `BatchMaker` encodes the next records' conversations (every host), decodes this host's images
   in threads, a prefetch thread keeps the next batches ready.
2. The host rows become one global array per field, [accum_steps, rows, ...], sharded over
   the mesh's batch axes; the jitted step (step.py) scans the micro-batches, summing gradients
   of the trainable params, and applies AdamW (training/optimizer.py).
3. The loop (training/loop.py) logs, checkpoints step + trainable params + optimizer state and
   the data position every `train.checkpoint_every` steps; a rerun restores them and reads on
   from that position (exact resume).
4. At the end the merged params are exported to <workdir>/export and <workdir>/export_hf.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from recap_jax.captioning.tiny_demo import build_tiny_checkpoint
from recap_jax.captioning import model_loading
from recap_jax.conversion import bundle
from recap_jax.conversion.llava import abstract_params
from recap_jax.data.identity import absolute
from recap_jax.errors import ConfigError
from recap_jax.models.layers import dtype_from_name
from recap_jax.models.llama import REMAT_CHOICES
from recap_jax.models.llava import LlavaModel
from recap_jax.parallel import mesh as mesh_lib
from recap_jax.parallel.distributed import check_distributed_config, initialize_distributed
from recap_jax.training import export, loop, optimizer, step as step_lib
from recap_jax.training.batches import BatchMaker, FailureLog, Position, prefetch
from recap_jax.training.conversation import ConversationEncoder
from recap_jax.training.loop_config import check_train_fields
from recap_jax.training.records import make_reader

BATCH_AXES = {"tokens": (None, "batch", "length"), "targets": (None, "batch", "length"),
              "weights": (None, "batch", "length"), "pixels": (None, "batch", None, None, None)}


def validate(config: ml_collections.ConfigDict) -> None:
    """Fail at start-up, naming the field."""
    check_train_fields(config.train)
    m = config.model
    if bool(m.vision_dir) != bool(m.llm_dir):
        raise ConfigError("model.vision_dir and model.llm_dir: give both (stage 1 from parts) or neither")
    if m.vision_dir and m.checkpoint:
        raise ConfigError("model.checkpoint: give it or model.vision_dir + model.llm_dir, not both")
    if m.vision_dir:
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
    if t.remat not in REMAT_CHOICES:
        raise ConfigError(f"train.remat={t.remat!r}: expected one of {list(REMAT_CHOICES)}")
    if t.loss_chunk < 0:
        raise ConfigError(f"train.loss_chunk={t.loss_chunk}: must be >= 0 (0 = no chunking)")
    check_distributed_config(config.distributed)
    rows = t.global_batch_size // max(jax.process_count(), 1)
    if t.global_batch_size % (t.accum_steps * jax.process_count()):
        raise ConfigError(f"train.global_batch_size={t.global_batch_size} must divide by "
                          f"train.accum_steps x hosts = {t.accum_steps * jax.process_count()}")
    if rows // t.accum_steps < 1:
        raise ConfigError("train.accum_steps: leaves no rows per micro-batch")


def _absolute_paths(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Local paths made absolute (Orbax refuses relative ones)."""
    config = ml_collections.ConfigDict(config.to_dict())
    for holder, field in ((config, "workdir"), (config.model, "checkpoint"), (config.model, "vision_dir"),
                          (config.model, "llm_dir")):
        value = getattr(holder, field)
        if value and "://" not in value:
            setattr(holder, field, os.path.abspath(value))
    return config


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


def _start_params(config: ml_collections.ConfigDict, mesh) -> tuple[bundle.CaptionerSpec, dict]:
    """(spec, params placed on the mesh) of the converted checkpoint, or of the stage-1 parts."""
    m = config.model
    if m.vision_dir:
        from recap_jax.conversion import parts  # reads HF folders with transformers: only stage 1 needs it

        spec, tensors = parts.read_parts(m.vision_dir, m.llm_dir, m.template or "llama3_llava")
    else:
        spec, _ = model_loading.read_converted_spec(m.checkpoint, m.tokenizer or None)
        if m.template:
            spec.template = m.template
    shardings = mesh_lib.params_shardings(mesh, abstract_params(spec.config, jnp.dtype(bundle.param_dtype(m.dtype))))
    if m.vision_dir:
        host = parts.params_from_parts(spec, tensors, bundle.param_dtype(m.dtype), m.projector_seed)
        return spec, jax.device_put(host, shardings)
    return spec, model_loading.restore_params(m.checkpoint, spec.config, m.dtype, shardings)


def _usable_images(reader) -> tuple[int, int]:
    """(records whose image file exists, records) of epoch 0: the check when a first batch had no
    usable image (encoded images in the records count as usable; decoding shows later)."""
    usable = total = 0
    for record in reader.records(0, 0):
        total += 1
        image = record.image
        if not record.error and (not isinstance(image, str) or epath.Path(image).exists()):
            usable += 1
            break
    return usable, total


class _DeviceBatches:
    """Host `Batch`es -> global arrays; the position after the last batch handed out."""

    def __init__(self, host_batches, accum: int, mesh, start: Position):
        self.host_batches, self.accum, self.mesh, self.position = host_batches, accum, mesh, start
        self.examples = 0  # usable rows of the last batch, this host

    def __next__(self) -> dict[str, jax.Array]:
        batch = next(self.host_batches)
        self.position, self.examples = batch.next_position, batch.num_examples
        return device_batch(batch.arrays, self.accum, self.mesh)

    def get_state(self) -> dict[str, int]:
        return dataclasses.asdict(self.position)


class FinetuneTrainer(loop.Trainer):
    name, unit = "finetune", "tokens"
    progress_keys = ("grad_norm",)

    def __init__(self, config: ml_collections.ConfigDict, mesh):
        validate(config)
        self.config, self.mesh, t, m = config, mesh, config.train, config.model
        splits = mesh.shape["data"] * mesh.shape["fsdp"]
        if (t.global_batch_size // t.accum_steps) % splits:
            raise ConfigError(f"train.global_batch_size / train.accum_steps = "
                              f"{t.global_batch_size // t.accum_steps} rows per micro-batch must divide "
                              f"among the mesh's data x fsdp = {splits} batch shards")
        self.reader = make_reader(config.data.format, config.data.path, config.data.image_folder,
                                  config.data.prompt, config.data.caption_field, config.data.shuffle,
                                  config.data.seed)
        self.num_steps = _num_steps(config, self.reader)
        if m.build_tiny_if_missing and not epath.Path(m.checkpoint).exists():
            build_tiny_checkpoint(m.checkpoint)
        self.spec, params = _start_params(config, mesh)
        model = LlavaModel(self.spec.config, dtype=dtype_from_name(m.compute_dtype, "model.compute_dtype"),
                           remat=t.remat)
        self.trainable, self.frozen = step_lib.split_params(params, t.trainable)
        del params
        settings = optimizer.settings_from_config(t, self.num_steps)
        self.learning_rate_fn = optimizer.learning_rate_schedule(settings)
        self.tx = optimizer.make_optimizer(settings)
        # The first state is built now (its shardings are the restore target's); dropped once unused.
        self._first = jax.jit(lambda p: step_lib.init_state(p, self.tx))(self.trainable)
        self.abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                                     self._first)
        self.failures = FailureLog(epath.Path(config.workdir), jax.process_index())
        self._step = jax.jit(step_lib.make_train_step(model, self.tx, t.loss_chunk), donate_argnums=(0,),
                             out_shardings=(jax.tree.map(lambda x: x.sharding, self._first),
                                            mesh_lib.replicated(mesh)))

    def identity(self) -> dict[str, Any]:
        m, d = self.config.model, self.config.data
        origin = {"model.checkpoint": m.checkpoint} if m.checkpoint else {
            "model.vision_dir": m.vision_dir, "model.llm_dir": m.llm_dir, "model.projector_seed": m.projector_seed}
        return {**origin, "train.trainable": self.config.train.trainable, "data.format": d.format,
                "data.path": ",".join(absolute(p) for p in d.path.split(",") if p.strip()),
                "data.image_folder": absolute(d.image_folder) if d.image_folder else "",
                "data.seed": d.seed, "data.shuffle": d.shuffle}

    def abstract_state(self) -> Any:
        return self.abstract

    def init_state(self) -> dict[str, Any]:
        count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))  # noqa: E731
        self.say(f"new run: {count(self.trainable):,} trainable of {count(self.trainable) + count(self.frozen):,} "
                 f"params, {self.num_steps} steps, mesh {dict(self.mesh.shape)}")
        return self._first

    def data(self, position: Any | None) -> _DeviceBatches:
        c, t = self.config, self.config.train
        self._first = None  # the restored (or first) state replaces it
        start = Position(**position) if position else Position()
        maker = BatchMaker(self.reader, ConversationEncoder(self.spec.prompt_encoder()), self.spec.image,
                           global_batch_size=t.global_batch_size, max_length=c.data.max_length,
                           length_buckets=tuple(c.data.length_buckets), failures=self.failures,
                           process_index=jax.process_index(), process_count=jax.process_count(),
                           num_workers=c.data.num_workers, max_pixels=c.data.max_pixels,
                           group_batches=c.data.length_group_batches, seed=c.data.seed)
        batches = _DeviceBatches(prefetch(maker.batches(start)), t.accum_steps, self.mesh, start)
        return _FirstBatchChecked(batches, self) if position is None else batches

    def step(self, state, batch):
        return self._step(state, self.frozen, batch)

    def units(self, batch: dict[str, jax.Array]) -> int:
        return int(batch["tokens"].size)

    def row_fields(self) -> dict[str, Any]:
        return {"failures": self.failures.count}

    def finish(self, state, step: int) -> dict[str, Any]:
        c, m = self.config, self.config.model
        params = step_lib.merge_params(state["trainable"], self.frozen)
        origin = str(m.checkpoint) if m.checkpoint else {"vision_dir": m.vision_dir, "llm_dir": m.llm_dir,
                                                             "projector_seed": m.projector_seed}
        source = {"finetuned_from": origin, "step": step, "trainable": c.train.trainable}
        out: dict[str, Any] = {"failures": self.failures.count}
        workdir = epath.Path(c.workdir)
        if c.export.converted:
            out["export"] = str(export.export_converted(workdir / "export", self.spec, params, m.dtype, source))
        if c.export.hf:
            out["export_hf"] = str(export.export_hf(workdir / "export_hf", self.spec, params, m.dtype))
        return out


class _FirstBatchChecked:
    """A fresh run's batches: nothing to learn (no usable image at all) is a ConfigError before
    the first step, naming the field and how many examples were unusable."""

    def __init__(self, batches: _DeviceBatches, trainer: FinetuneTrainer):
        self.batches, self.trainer, self.checked = batches, trainer, False

    def __next__(self) -> dict[str, jax.Array]:
        batch = next(self.batches)
        if not self.checked:
            self.checked = True
            examples = self.batches.examples
            if jax.process_count() > 1:
                from jax.experimental import multihost_utils
                examples = int(np.sum(multihost_utils.process_allgather(np.int32(examples))))
            if examples == 0:
                usable, total = _usable_images(self.trainer.reader)
                if not usable:
                    d = self.trainer.config.data
                    raise ConfigError(
                        f"data.image_folder: no usable example: the images of all {total} examples of "
                        f"data.path={d.path} are missing or unreadable under "
                        f"{d.image_folder or 'the JSON file folder'} (see {self.trainer.failures.path})")
        return batch

    def get_state(self) -> dict[str, int]:
        return self.batches.get_state()


def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Fine-tune as `config` says; returns a summary (steps, last loss, export folders)."""
    validate(config)
    initialize_distributed(config.distributed)
    summary = loop.run(_absolute_paths(config), FinetuneTrainer)
    summary.pop("state")
    summary["steps"] = summary.pop("step")
    return summary
