"""Training length and learning rate given in samples (CLIPA's recipe), resolved to steps.

A recipe stated in samples keeps its meaning when the batch size changes: `train.num_samples`
and `train.warmup_samples` become `num_steps` / `warmup_steps` for the configured global batch,
and `train.base_learning_rate` is scaled linearly with the batch (CLIPA's rule:
lr = base_lr x global_batch_size / lr_reference_batch, with a reference batch of 256).
Configs without these fields are returned unchanged (their schedule is in steps).
"""

from __future__ import annotations

import math

import ml_collections

from recap_jax.errors import ConfigError


def resolve_sample_schedule(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of `config` whose train.num_steps / warmup_steps / learning_rate follow the
    sample-based fields when they are set (> 0)."""
    t = config.train
    num_samples, warmup_samples = int(t.get("num_samples", 0) or 0), int(t.get("warmup_samples", 0) or 0)
    base_lr = float(t.get("base_learning_rate", 0.0) or 0.0)
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
        reference = int(t.get("lr_reference_batch", 256) or 256)
        out.train.learning_rate = base_lr * batch / reference
    out.lock()
    return out
