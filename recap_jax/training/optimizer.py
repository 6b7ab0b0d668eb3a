"""The one optimizer and learning-rate schedule of every trainer: AdamW with a weight-decay mask
after global-norm clipping, and a linear warm-up followed by a cosine decay or a constant rate.

Fields (`config.train.*`, the same in every trainer; defaults in `loop_defaults.train_fields`):
learning_rate, schedule ("cosine" | "constant"), warmup_steps or warmup_ratio (share of the
steps), end_lr_ratio (cosine's final rate / peak), weight_decay, b1, b2, eps, grad_clip_norm.

A recipe may also be stated in samples (CLIPA's): `resolve_sample_schedule` turns num_samples /
warmup_samples into steps for the configured global batch and scales base_learning_rate linearly
with the batch (lr = base_lr x global_batch_size / lr_reference_batch).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import ml_collections
import optax

from recap_jax.errors import ConfigError

SCHEDULES = ("cosine", "constant")


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
    learning_rate: float
    num_steps: int
    warmup_steps: int = 0
    schedule: str = "cosine"
    end_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip_norm: float = 1.0  # 0 = no clipping


def settings_from_config(t: Any, num_steps: int | None = None) -> OptimizerSettings:
    """The settings of a `config.train` ConfigDict; `num_steps` overrides t.num_steps (a trainer
    that counts its steps from the data, e.g. one epoch). ConfigError names a wrong field."""
    num_steps = int(t.num_steps if num_steps is None else num_steps)
    if t.schedule not in SCHEDULES:
        raise ConfigError(f"train.schedule: {t.schedule!r} is not one of {SCHEDULES}")
    if t.learning_rate <= 0:
        raise ConfigError(f"train.learning_rate: {t.learning_rate} must be > 0")
    if t.warmup_ratio and t.warmup_steps:
        raise ConfigError("train.warmup_steps / train.warmup_ratio: set one of them, not both")
    if not 0 <= t.warmup_ratio < 1:
        raise ConfigError(f"train.warmup_ratio: {t.warmup_ratio} must be in [0, 1)")
    warmup = int(math.ceil(t.warmup_ratio * num_steps)) if t.warmup_ratio else int(t.warmup_steps)
    if t.warmup_steps and warmup >= num_steps:
        raise ConfigError(f"train.warmup_steps ({warmup}) must be < train.num_steps ({num_steps})")
    return OptimizerSettings(learning_rate=float(t.learning_rate), num_steps=num_steps, warmup_steps=warmup,
                             schedule=t.schedule, end_lr_ratio=float(t.end_lr_ratio),
                             weight_decay=float(t.weight_decay), b1=float(t.b1), b2=float(t.b2),
                             eps=float(t.eps), grad_clip_norm=float(t.grad_clip_norm))


def learning_rate_schedule(s: OptimizerSettings) -> optax.Schedule:
    """Linear warm-up from 0 to the peak over `warmup_steps`, then cosine decay to
    peak x end_lr_ratio at `num_steps` (or the peak held constant)."""
    if s.schedule == "constant":
        if not s.warmup_steps:
            return optax.constant_schedule(s.learning_rate)
        return optax.join_schedules([optax.linear_schedule(0.0, s.learning_rate, s.warmup_steps),
                                     optax.constant_schedule(s.learning_rate)], [s.warmup_steps])
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=s.learning_rate, warmup_steps=s.warmup_steps,
        decay_steps=max(s.num_steps, s.warmup_steps + 1), end_value=s.learning_rate * s.end_lr_ratio)


def decay_mask(params: Any) -> Any:
    """Weight decay on weight matrices and embeddings only: not on biases (attention q/k/v biases
    are [heads, head_dim], matrices by shape), norm scales, logit_scale / logit_bias (open_clip's
    and HF Trainer's rule). Scanned blocks (under a "layers" key) carry a leading layer axis that
    does not count."""
    def decays(path, x):
        names = [getattr(k, "key", None) for k in path]
        if names[-1] in ("bias", "scale", "logit_scale", "logit_bias"):
            return False
        return x.ndim - int("layers" in names) >= 2
    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(s: OptimizerSettings, schedule: optax.Schedule | None = None) -> optax.GradientTransformation:
    """AdamW (decoupled decay on `decay_mask`, as HF's Trainer and open_clip) after clipping;
    `schedule`: a trainer's own variant of `learning_rate_schedule(s)` (CLIP's open_clip warm-up)."""
    adamw = optax.adamw(schedule or learning_rate_schedule(s), b1=s.b1, b2=s.b2, eps=s.eps,
                        weight_decay=s.weight_decay, mask=decay_mask)
    if s.grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(s.grad_clip_norm), adamw)
    return adamw


def resolve_sample_schedule(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of `config` whose train.num_steps / warmup_steps / learning_rate follow the
    sample-based fields when they are set (> 0); `config` itself when none is."""
    t = config.train
    num_samples, warmup_samples, base_lr = int(t.num_samples), int(t.warmup_samples), float(t.base_learning_rate)
    if not (num_samples or warmup_samples or base_lr):
        return config
    batch = int(t.global_batch_size)
    if batch <= 0:
        raise ConfigError(f"train.global_batch_size: {batch} must be positive")
    out = ml_collections.ConfigDict(config.to_dict())
    if num_samples:
        out.train.num_steps = math.ceil(num_samples / batch)
    if warmup_samples:
        if warmup_samples >= (num_samples or out.train.num_steps * batch):
            raise ConfigError(f"train.warmup_samples: {warmup_samples} must be below train.num_samples "
                              f"({num_samples})")
        out.train.warmup_steps = math.ceil(warmup_samples / batch)
    if base_lr:
        out.train.learning_rate = base_lr * batch / int(t.lr_reference_batch)
    out.lock()
    return out
