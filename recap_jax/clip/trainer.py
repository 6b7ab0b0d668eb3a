"""The CLIP trainer: what is CLIP's own in a run of the one training loop (training/loop.py).

The loop restores or initialises the state, runs the steps, logs, evaluates, saves and stops;
this supplies the model and its train state (fresh, from a HF CLIPModel, or from an earlier
stage), the jitted step (train_step.py), the data (captioner output folders, data.py) with its
checkpointable position, and the in-training retrieval evaluation.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
from etils import epath

from recap_jax.clip import data as data_lib
from recap_jax.clip import evaluate, model as model_lib, stage_init, train_step
from recap_jax.clip import identity as clip_identity
from recap_jax.clip.model_loading import build_model, text_length
from recap_jax.errors import ConfigError
from recap_jax.parallel.mesh import mesh_axis_sizes
from recap_jax.training import loop, optimizer
from recap_jax.training.loop_config import check_loop_fields


def validate_config(config: ml_collections.ConfigDict) -> None:
    """ConfigError naming the first CLIP field that cannot work (before anything is written)."""
    if "re_caption_prob" in config.data:
        raise ConfigError("data.re_caption_prob was replaced by data.org_caption_prob = p, the probability "
                          "of the ORIGINAL caption as in the paper (p = 0.8: 80% alt-text, 20% recaption); "
                          "remove re_caption_prob and set data.org_caption_prob")
    check_loop_fields(config)
    mesh_axis_sizes(dict(config.mesh), jax.device_count())
    t = config.train
    batch_devices = jax.device_count() // (config.mesh.tensor or 1)
    if t.global_batch_size % jax.process_count():
        raise ConfigError(f"train.global_batch_size: {t.global_batch_size} is not divisible by the "
                         f"{jax.process_count()} hosts")
    if t.global_batch_size % (t.accum_steps * max(batch_devices, 1)):
        raise ConfigError(f"train.global_batch_size: {t.global_batch_size} must be divisible by "
                         f"train.accum_steps ({t.accum_steps}) x batch-sharded devices ({batch_devices})")
    if t.loss not in ("softmax", "sigmoid"):
        raise ConfigError(f"train.loss: {t.loss!r} is not 'softmax' or 'sigmoid'")
    if not config.model.hf_dir and text_length(config.data) > config.model.text_context:
        raise ConfigError(f"data.re_caption_max_tokens/org_caption_max_tokens ({text_length(config.data)}) "
                         f"exceed model.text_context ({config.model.text_context})")
    if not config.model.hf_dir:  # the sizes fit together (vocabulary and EOS come later)
        model_lib.config_from_dict(dict(config.model.to_dict(), vocab_size=1, eos_token_id=0))
    if not config.data.tokenizer:
        raise ConfigError("data.tokenizer: set --config.data.tokenizer to a HF (CLIP) tokenizer folder")
    if not os.path.isdir(config.data.tokenizer):
        raise ConfigError(f"data.tokenizer: {config.data.tokenizer} is not a folder (a local HF tokenizer "
                          "folder is expected)")
    if not [f for f in str(config.data.folders).split(",") if f.strip()]:
        raise ConfigError("data.folders: no folder given (comma-separated captioner output folders)")


# Fields whose change makes a workdir's checkpoint another model (compute settings aside).
_RUN_IDENTITY = ("model", "data.tokenizer")
_COMPUTE_ONLY = ("dtype", "remat")


def check_same_run(workdir: str, config: ml_collections.ConfigDict) -> None:
    """ConfigError naming the fields that differ from the run whose checkpoints `workdir` holds."""
    saved_path = epath.Path(workdir) / loop.CONFIG_FILE
    if not saved_path.exists():
        return
    saved = json.loads(saved_path.read_text())
    now = json.loads(config.to_json_best_effort())
    differ = []
    for field in _RUN_IDENTITY:
        a, b = saved, now
        for key in field.split("."):
            a, b = (a or {}).get(key), (b or {}).get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differ += [f"{field}.{k}" for k in sorted(set(a) | set(b))
                       if a.get(k) != b.get(k) and k not in _COMPUTE_ONLY]
        elif a != b:
            differ.append(field)
    if differ:
        raise ConfigError(f"workdir: {workdir} holds a different run ({', '.join(differ)} differ from its "
                          "config.json); use a new --config.workdir")


class _DeviceBatches:
    """The host batches of a CheckpointableIterator as global arrays; its position is the loop's."""

    def __init__(self, host_batches: data_lib.CheckpointableIterator, sharding):
        self.host_batches, self.sharding = host_batches, sharding

    def __next__(self) -> dict[str, jax.Array]:
        local = next(self.host_batches)
        return {k: jax.make_array_from_process_local_data(self.sharding, v) for k, v in local.items()}

    def get_state(self) -> Any:
        return self.host_batches.get_state()


class ClipTrainer(loop.Trainer):
    name, unit = "train_clip", "images"
    progress_keys = ("logit_scale", "org_caption_fraction")

    def __init__(self, config: ml_collections.ConfigDict, mesh):
        validate_config(config)
        check_same_run(loop.absolute_workdir(config.workdir), config)  # before anything is loaded
        self.config, self.mesh, t = config, mesh, config.train
        self.tokenizer = data_lib.Tokenizer(config.data.tokenizer)
        self.model, self.hf_params = build_model(config.model, self.tokenizer)
        settings = optimizer.settings_from_config(t)
        self.num_steps = settings.num_steps
        self.learning_rate_fn = train_step.open_clip_schedule(settings)
        self.tx = optimizer.make_optimizer(settings, self.learning_rate_fn)
        self.abstract, self.shardings = train_step.abstract_train_state(self.model, self.tx, mesh, config.seed)
        self.step = train_step.make_train_step(
            self.model, self.tx, mesh, loss_kind=t.loss, accum_steps=t.accum_steps,
            logit_scale_max=t.logit_scale_max, learning_rate_fn=self.learning_rate_fn,
            state_shardings=self.shardings)

    def identity(self) -> dict[str, Any]:
        return clip_identity.workdir_identity(self.config)

    def abstract_state(self) -> Any:
        return self.abstract

    def init_state(self) -> train_step.TrainState:
        init = self.config.init
        if init.checkpoint:  # a later stage (CLIPA stage 2)
            state, carried = stage_init.initial_state(init, self.model, self.tx, self.mesh, self.abstract,
                                                      self.shardings)
            self.say(f"new stage in {self.config.workdir} from {carried['from']} step {carried['step']}: "
                     f"position grid {carried['pos_grid']}, optimizer {carried['optimizer']}")
            return state
        state, _ = train_step.create_train_state(self.model, self.tx, self.mesh, self.config.seed,
                                                 init_from=self.hf_params)
        self.say(f"new run in {self.config.workdir}: {model_lib.count_params(state.params) / 1e6:.2f}M params, "
                 f"mesh {dict(self.mesh.shape)}")
        return state

    def data(self, position: Any | None) -> _DeviceBatches:
        c, t = self.config, self.config.train
        try:
            batches = self._dataset()
        except ValueError as e:
            if "can not be of 0 length" in str(e):  # TFDS: a folder without a record (every sample failed)
                raise ConfigError(f"data.folders: no examples in {c.data.folders} (split {c.data.split}); "
                                  "nothing to learn") from None
            raise
        host = data_lib.CheckpointableIterator(batches, c.data.num_threads, c.data.prefetch, c.data.num_workers)
        if position is not None:
            host.set_state(position)
        return _DeviceBatches(host, train_step.batch_sharding(self.mesh))

    def _dataset(self):
        c, t = self.config, self.config.train
        return data_lib.train_dataset(
            c.data.folders, self.tokenizer, image_size=self.model.cfg.image_size,
            per_host_batch=t.global_batch_size // jax.process_count(), seed=c.seed,
            org_caption_prob=c.data.org_caption_prob, caption_mix=c.data.caption_mix,
            re_caption_max_tokens=c.data.re_caption_max_tokens,
            org_caption_max_tokens=c.data.org_caption_max_tokens, crop_scale=tuple(c.data.crop_scale),
            process_index=jax.process_index(), process_count=jax.process_count(), split=c.data.split,
            format=c.data.format, captions_map=c.data.captions_map, captions_parquet=c.data.captions_parquet,
            report_dir=loop.absolute_workdir(c.workdir), image_paths=c.data.image_paths,
            image_format=c.data.image_format)

    def units(self, batch: Any) -> int:
        return self.config.train.global_batch_size

    def evaluate(self, state: train_step.TrainState, step: int) -> dict[str, float]:
        """In-training retrieval evaluation on every `config.eval.datasets` entry with a folder."""
        results = {}
        active = {name: d for name, d in self.config.eval.datasets.items() if d.folder}
        if not active:
            return results
        encoders = evaluate.make_encoders(self.model, self.mesh, state.params, self.tokenizer,
                                          text_length=text_length(self.config.data),
                                          batch_size=self.config.eval.batch_size,
                                          param_shardings=self.shardings.params)
        for name, d in active.items():
            fields = d.caption_fields.split(",") if isinstance(d.caption_fields, str) else list(d.caption_fields)
            metrics = evaluate.evaluate_retrieval(
                encoders, d.folder, split=d.split, caption_fields=fields, image_field=d.image_field,
                max_images=d.max_images, field_prefix=f"eval.datasets.{name}")
            self.say(f"eval {name} ({metrics['num_images']} images, {metrics['num_texts']} texts): "
                     f"{evaluate.format_recalls(metrics)}")
            results.update({f"eval/{name}/{k}": v for k, v in metrics.items()})
        return results


def train(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Runs (or resumes) training as configured; the last logged metrics, "step" and "params"."""
    config = optimizer.resolve_sample_schedule(config)  # sample-based recipes -> steps
    summary = loop.run(config, ClipTrainer)
    summary["params"] = summary.pop("state").params
    return summary
