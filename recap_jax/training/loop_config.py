"""The `config.train` fields the training loop reads, defined once for every trainer.

A trainer's `base_config()` calls `train_fields(config.train)` (then changes the defaults that
differ for it); `check_train_fields` validates them before anything is written.
"""

from __future__ import annotations

import ml_collections

from recap_jax.errors import ConfigError
from recap_jax.training.optimizer import SCHEDULES


def train_fields(t: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Adds every loop field with its default to `t` (config.train) and returns it."""
    t.num_steps = 1000  # optimizer steps in all (the schedule spans them)
    t.global_batch_size = 64  # examples per optimizer step, over all hosts and accumulation
    # Or in samples (kept when the batch changes; optimizer.resolve_sample_schedule): >0 sets
    # num_steps / warmup_steps for the global batch; base_learning_rate sets
    # learning_rate = base x global_batch_size / lr_reference_batch.
    t.num_samples = 0
    t.warmup_samples = 0
    t.base_learning_rate = 0.0
    t.lr_reference_batch = 256
    t.accum_steps = 1  # micro-batches per step (each global_batch_size / accum_steps examples)
    t.learning_rate = 1e-3  # peak, after warm-up
    t.schedule = "cosine"  # cosine (decay to learning_rate x end_lr_ratio at num_steps) or constant
    t.warmup_steps = 0  # linear warm-up from 0 over this many steps ...
    t.warmup_ratio = 0.0  # ... or over this share of num_steps (set one of the two)
    t.end_lr_ratio = 0.0  # cosine's final learning rate / peak
    t.weight_decay = 0.0  # AdamW's decoupled decay, on matrices only
    t.b1 = 0.9  # AdamW beta1
    t.b2 = 0.999  # AdamW beta2
    t.eps = 1e-8  # AdamW epsilon
    t.grad_clip_norm = 1.0  # global-norm gradient clipping; 0 = off
    t.log_every = 50  # steps between progress lines / metrics rows
    t.checkpoint_every = 200  # steps between Orbax checkpoints (the last step and a stop are saved too)
    t.keep_checkpoints = 2  # how many recent checkpoints to keep
    # Save in the background while training goes on (a SIGKILL during a save loses that step only).
    t.async_checkpointing = True
    t.eval_every = 0  # steps between evaluations; 0 = only at the end of training
    t.stop_after_steps = 0  # >0: leave (after saving) after this many steps of THIS run (time-sliced jobs)
    # -1: resume from the newest intact checkpoint (a damaged newer one is set aside, saying so);
    # M >= 0: resume from step M exactly (newer steps are set aside).
    t.resume_from_step = -1
    t.lease_stale_s = 600.0  # another job's workdir lease older than this (no heartbeat) is taken over
    t.lease_heartbeat_s = 60.0  # how often the lease is renewed
    return t


def check_loop_fields(config: ml_collections.ConfigDict) -> None:
    """ConfigError naming the first loop field (workdir, train.*) that cannot work."""
    if not config.workdir:
        raise ConfigError("workdir: required (checkpoints, metrics.jsonl and config.json go there)")
    check_train_fields(config.train)


def check_train_fields(t: ml_collections.ConfigDict) -> None:
    """ConfigError naming the first loop field of `config.train` that cannot work."""
    for field in ("global_batch_size", "accum_steps", "log_every", "checkpoint_every", "keep_checkpoints"):
        if int(t[field]) < 1:
            raise ConfigError(f"train.{field}: {t[field]} must be >= 1")
    for field in ("eval_every", "stop_after_steps", "warmup_steps"):
        if int(t[field]) < 0:
            raise ConfigError(f"train.{field}: {t[field]} must be >= 0")
    if t.global_batch_size % t.accum_steps:
        raise ConfigError(f"train.global_batch_size: {t.global_batch_size} must be divisible by "
                          f"train.accum_steps ({t.accum_steps})")
    if t.schedule not in SCHEDULES:
        raise ConfigError(f"train.schedule: {t.schedule!r} is not one of {SCHEDULES}")
    if t.learning_rate <= 0:
        raise ConfigError(f"train.learning_rate: {t.learning_rate} must be > 0")
    if t.resume_from_step < -1:
        raise ConfigError(f"train.resume_from_step: {t.resume_from_step} must be -1 (newest intact) or a step")
