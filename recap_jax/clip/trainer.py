"""The CLIP training loop: config -> mesh, data, model, optimizer -> steps, logs, checkpoints, evals.

Everything numeric happens in the jitted `train_step` (train_step.py); this file is the host-side
bookkeeping: resume from the latest Orbax checkpoint (params + optimizer + data-iterator state),
JSON-lines metrics, progress lines, periodic evaluation, and stopping on a non-finite loss.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import ml_collections
from etils import epath
from flax import linen as nn
import numpy as np
import orbax.checkpoint as ocp

from recap_jax.clip import identity as clip_identity
from recap_jax.clip import data as data_lib
from recap_jax.clip import evaluate, hf_weights, model as model_lib, schedule, stage_init, train_step
from recap_jax.errors import ConfigError
from recap_jax.parallel.mesh import make_mesh, mesh_axis_sizes


class NonFiniteLossError(FloatingPointError):
    """Raised when the training loss becomes NaN/inf; the run stops without saving that state."""


def build_model(model_cfg: ml_collections.ConfigDict, tokenizer: data_lib.Tokenizer):
    """(CLIP module, HF params or None) from `config.model`; vocab/EOS come from the tokenizer."""
    if model_cfg.get("hf_dir"):
        cfg = hf_weights.read_hf_config(model_cfg.hf_dir, dtype=model_cfg.get("dtype", "float32"),
                                        remat=model_cfg.get("remat", False))
        if tokenizer.vocab_size > cfg.vocab_size:
            raise ConfigError(f"data.tokenizer: {tokenizer.vocab_size} tokens do not fit the vocabulary "
                             f"({cfg.vocab_size}) of model.hf_dir={model_cfg.hf_dir}")
        if cfg.pools_at_eos and tokenizer.eos_id != cfg.eos_token_id:
            raise ConfigError(f"data.tokenizer: its EOS id {tokenizer.eos_id} differs from the eos_token_id "
                             f"{cfg.eos_token_id} of model.hf_dir (text would be pooled at the wrong token)")
        # HF CLIP has no logit bias; a sigmoid-loss fine-tune adds one (initialised from the config).
        cfg = dataclasses.replace(cfg, use_logit_bias=bool(model_cfg.get("use_logit_bias", False)),
                                  init_logit_bias=float(model_cfg.get("init_logit_bias", -10.0)))
        return model_lib.CLIP(cfg), hf_weights.load_hf_params(model_cfg.hf_dir, cfg)
    merged = dict(model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else model_cfg)
    if not merged.get("vocab_size"):  # 0 / absent: exactly the tokenizer's vocabulary
        merged["vocab_size"] = tokenizer.vocab_size
    if merged["vocab_size"] < tokenizer.vocab_size:
        raise ConfigError(f"model.vocab_size: {merged['vocab_size']} is smaller than the tokenizer's "
                         f"{tokenizer.vocab_size} tokens")
    merged["eos_token_id"] = tokenizer.eos_id
    return model_lib.CLIP(model_lib.config_from_dict(merged)), None


def text_length(data_cfg) -> int:
    """Token length of every text batch: long enough for the longer of the two caption kinds."""
    return max(data_cfg.re_caption_max_tokens, data_cfg.org_caption_max_tokens)


def validate_config(config: ml_collections.ConfigDict) -> None:
    if "re_caption_prob" in config.data:
        raise ConfigError("data.re_caption_prob was replaced by data.org_caption_prob = p, the probability "
                          "of the ORIGINAL caption as in the paper (p = 0.8: 80% alt-text, 20% recaption); "
                          "remove re_caption_prob and set data.org_caption_prob")
    if "org_caption_prob" not in config.data:
        raise ConfigError("data.org_caption_prob: missing; set the probability of the original caption (0.8)")
    if not config.get("workdir"):
        raise ConfigError("workdir: set --config.workdir (checkpoints and metrics.jsonl go there)")
    mesh_axis_sizes(dict(config.mesh), jax.device_count())
    t = config.train
    batch_devices = jax.device_count() // (config.mesh.get("tensor", 1) or 1)
    if t.global_batch_size % jax.process_count():
        raise ConfigError(f"train.global_batch_size: {t.global_batch_size} is not divisible by the "
                         f"{jax.process_count()} hosts")
    if t.global_batch_size % (t.accum_steps * max(batch_devices, 1)):
        raise ConfigError(f"train.global_batch_size: {t.global_batch_size} must be divisible by "
                         f"train.accum_steps ({t.accum_steps}) x batch-sharded devices ({batch_devices})")
    if t.loss not in ("softmax", "sigmoid"):
        raise ConfigError(f"train.loss: {t.loss!r} is not 'softmax' or 'sigmoid'")
    if not config.model.get("hf_dir") and text_length(config.data) > config.model.text_context:
        raise ConfigError(f"data.re_caption_max_tokens/org_caption_max_tokens ({text_length(config.data)}) "
                         f"exceed model.text_context ({config.model.text_context})")
    if not config.model.get("hf_dir"):  # the sizes fit together (vocabulary and EOS come later)
        model_lib.config_from_dict(dict(config.model.to_dict(), vocab_size=1, eos_token_id=0))
    if not config.data.get("tokenizer"):
        raise ConfigError("data.tokenizer: set --config.data.tokenizer to a HF (CLIP) tokenizer folder")
    if not os.path.isdir(config.data.tokenizer):
        raise ConfigError(f"data.tokenizer: {config.data.tokenizer} is not a folder (a local HF tokenizer "
                          "folder is expected)")


def _checkpoint_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), options=options,
                                 item_names=("state", "data"))


def latest_params(workdir: str, model: model_lib.CLIP, mesh) -> tuple[Any, int]:
    """Params (sharded on `mesh`) of the latest checkpoint under `workdir`, and its step.

    Only the params are read (partial restore): the optimizer state, twice their size, stays on disk.
    """
    manager = _checkpoint_manager(workdir, keep=1_000_000)
    step = manager.latest_step()
    if step is None:
        raise ConfigError(f"model.checkpoint: no checkpoint under {workdir}/checkpoints")
    shardings = train_step.clip_param_shardings(model, mesh)
    shapes = nn.unbox(jax.eval_shape(lambda: model_lib.init_params(model, jax.random.key(0))))
    target = {"params": jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                     shapes, shardings)}
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    tree = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=True)))
    manager.close()
    return tree.state["params"], step


# Fields whose change makes a workdir's checkpoint another model (compute settings aside).
_RUN_IDENTITY = ("model", "data.tokenizer")
_COMPUTE_ONLY = ("dtype", "remat")


def check_same_run(workdir: str, config: ml_collections.ConfigDict) -> None:
    """ConfigError naming the fields that differ from the run whose checkpoints `workdir` holds."""
    saved_path = epath.Path(workdir) / "config.json"
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


class MetricsLog:
    """Appends one JSON object per line to workdir/metrics.jsonl (process 0 only)."""

    def __init__(self, workdir: str):
        self.path = epath.Path(workdir) / "metrics.jsonl"  # local or gs://
        self.enabled = jax.process_index() == 0

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "time": time.time()}
        row.update({k: (float(v) if np.ndim(v) == 0 else np.asarray(v).tolist()) for k, v in metrics.items()})
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def _log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


def _eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def run_evals(config, model, mesh, params, param_shardings, tokenizer) -> dict[str, float]:
    """In-training retrieval evaluation on every `config.eval.datasets` entry with a folder."""
    results = {}
    datasets = config.eval.get("datasets") or {}
    active = {name: d for name, d in datasets.items() if d.get("folder")}
    if not active:
        return results
    encoders = evaluate.make_encoders(model, mesh, params, tokenizer, text_length=text_length(config.data),
                                      batch_size=config.eval.batch_size, param_shardings=param_shardings)
    for name, d in active.items():
        fields = d.caption_fields.split(",") if isinstance(d.caption_fields, str) else list(d.caption_fields)
        metrics = evaluate.evaluate_retrieval(
            encoders, d.folder, split=d.get("split", "train"), caption_fields=fields,
            image_field=d.get("image_field", "image"), max_images=d.get("max_images", 0),
            field_prefix=f"eval.datasets.{name}")
        _log(f"eval {name} ({metrics['num_images']} images, {metrics['num_texts']} texts): "
             f"{evaluate.format_recalls(metrics)}")
        results.update({f"eval/{name}/{k}": v for k, v in metrics.items()})
    return results


def train(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Runs (or resumes) training as configured; returns the last logged metrics."""
    config = schedule.resolve_sample_schedule(config)  # sample-based recipes -> steps
    validate_config(config)
    workdir = config.workdir
    check_same_run(workdir, config)  # before anything is written or loaded
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    clip_identity.check_workdir(config)  # before any restore: another model is "another run"
    t = config.train
    mesh = make_mesh(dict(config.mesh))
    tokenizer = data_lib.Tokenizer(config.data.tokenizer)
    model, hf_params = build_model(config.model, tokenizer)
    tx = train_step.make_optimizer(t)
    lr_fn = train_step.learning_rate_schedule(t)
    abstract_state, shardings = train_step.abstract_train_state(model, tx, mesh, config.seed)
    step_fn = train_step.make_train_step(
        model, tx, mesh, loss_kind=t.loss, accum_steps=t.accum_steps, logit_scale_max=t.logit_scale_max,
        learning_rate_fn=lr_fn, state_shardings=shardings)

    batches = data_lib.train_dataset(
        config.data.folders, tokenizer, image_size=model.cfg.image_size,
        per_host_batch=t.global_batch_size // jax.process_count(), seed=config.seed,
        org_caption_prob=config.data.org_caption_prob, caption_mix=config.data.get("caption_mix", "sample"),
        re_caption_max_tokens=config.data.re_caption_max_tokens,
        org_caption_max_tokens=config.data.org_caption_max_tokens,
        crop_scale=tuple(config.data.crop_scale), process_index=jax.process_index(),
        process_count=jax.process_count(), split=config.data.split, format=config.data.format,
        captions_map=config.data.captions_map, captions_parquet=config.data.captions_parquet, report_dir=workdir,
        image_paths=config.data.get("image_paths", ""), image_format=config.data.get("image_format", ""))
    batch_iter = data_lib.CheckpointableIterator(batches, config.data.num_threads, config.data.prefetch,
                                                 config.data.num_workers)

    manager = _checkpoint_manager(workdir, t.keep_checkpoints)
    latest = manager.latest_step()
    if latest is not None:
        try:
            restored = manager.restore(latest, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        except ValueError as e:  # Orbax: stored shapes differ from this config's model
            raise ConfigError(f"workdir: {workdir} holds a different run (its checkpoint does not fit this "
                              f"model: {str(e).splitlines()[0][:160]}); use a new --config.workdir") from None
        state = restored.state
        batch_iter.set_state(restored.data)
        _log(f"resumed from {workdir}/checkpoints step {latest}")
    elif config.get("init") and config.init.get("checkpoint"):  # a later stage (CLIPA stage 2)
        state, carried = stage_init.initial_state(config.init, model, tx, mesh, abstract_state, shardings)
        if jax.process_index() == 0:
            (epath.Path(workdir) / "config.json").write_text(config.to_json_best_effort(indent=2))
        _log(f"new stage in {workdir} from {carried['from']} step {carried['step']}: position grid "
             f"{carried['pos_grid']}, optimizer {carried['optimizer']}")
    else:
        state, _ = train_step.create_train_state(model, tx, mesh, config.seed, init_from=hf_params)
        if jax.process_index() == 0:  # what eval_retrieval rebuilds the model from
            (epath.Path(workdir) / "config.json").write_text(config.to_json_best_effort(indent=2))
        _log(f"new run in {workdir}: {model_lib.count_params(state.params) / 1e6:.2f}M params, "
             f"mesh {dict(mesh.shape)}")

    def save(step: int) -> None:
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   data=ocp.args.JsonSave(batch_iter.get_state())))

    log = MetricsLog(workdir)
    sharding = train_step.batch_sharding(mesh)
    first_step = int(state.step)
    stop_at = t.num_steps if not t.get("stop_after_steps") else min(t.num_steps, first_step + t.stop_after_steps)
    pending: list[tuple[int, dict]] = []  # device metrics not yet fetched (fetching syncs the host)
    interval_start, interval_steps = time.time(), 0
    last: dict[str, Any] = {}

    def flush(step: int) -> None:
        """Fetch pending metrics; stop on a non-finite loss; log their average."""
        nonlocal pending, interval_start, interval_steps, last
        if not pending:
            return
        fetched = [(s, jax.device_get(m)) for s, m in pending]
        pending = []
        for s, m in fetched:
            if not np.isfinite(m["loss"]):
                raise NonFiniteLossError(
                    f"non-finite loss ({m['loss']}) at step {s}: stopping. The last checkpoint "
                    f"(step {manager.latest_step()}) is intact; lower train.learning_rate, set "
                    "train.grad_clip_norm, or use model.dtype=float32, then rerun to resume.")
        averaged = {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[-1][1]}
        elapsed = time.time() - interval_start
        steps_per_s = interval_steps / max(elapsed, 1e-9)
        averaged.update(steps_per_second=steps_per_s, samples_per_second=steps_per_s * t.global_batch_size)
        log.write(step, averaged)
        last = averaged
        _log(f"step {step}/{t.num_steps} loss {averaged['loss']:.4f} scale {averaged['logit_scale']:.1f} "
             f"lr {averaged.get('learning_rate', 0):.2e} org {averaged.get('org_caption_fraction', float('nan')):.3f} "
             f"| {steps_per_s:.2f} steps/s "
             f"{averaged['samples_per_second']:.0f} samples/s ETA {_eta((t.num_steps - step) / max(steps_per_s, 1e-9))}")
        interval_start, interval_steps = time.time(), 0

    step = first_step
    try:
        while step < stop_at:
            local = next(batch_iter)
            batch = {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
            state, metrics = step_fn(state, batch)
            step += 1
            interval_steps += 1
            pending.append((step, metrics))
            is_last = step == stop_at
            if step % t.log_every == 0 or is_last:
                flush(step)
            if step % t.checkpoint_every == 0 or is_last:
                flush(step)  # never checkpoint an unchecked state
                save(step)
            every = config.eval.every_steps
            if (every and step % every == 0) or step == t.num_steps:
                eval_metrics = run_evals(config, model, mesh, state.params, shardings.params, tokenizer)
                if eval_metrics:
                    log.write(step, eval_metrics)
                    last.update(eval_metrics)
                    interval_start = time.time()  # do not count evaluation time as training time
    finally:  # also on errors/preemption: let an in-flight checkpoint save complete
        manager.wait_until_finished()
        manager.close()
    last["step"] = step
    last["params"] = state.params
    return last
