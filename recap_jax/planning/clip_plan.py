"""The CLIP trainer's pod plan: compile its train step for the whole slice (the global mesh)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections

from recap_jax.clip import model as model_lib
from recap_jax.clip import train_step
from recap_jax.clip.trainer import text_length
from recap_jax.parallel.mesh import make_mesh
from recap_jax.planning import hlo
from recap_jax.planning.programs import shard_bytes


@dataclasses.dataclass
class ClipPlan:
    params: int  # parameter count
    state_bytes: int  # params + optimizer state, per chip
    batch_per_chip: float
    step: hlo.CompiledStats

    @property
    def total_bytes(self) -> int:
        return self.step.peak_bytes


def compile_clip_step(config: ml_collections.ConfigDict, devices: Sequence) -> ClipPlan:
    """The trainer's jitted train step for `config` over `devices` (every chip of the slice)."""
    model_cfg = dict(config.model.to_dict())
    model_cfg.setdefault("vocab_size", 49408)  # the CLIP BPE vocabulary; the tokenizer is not read here
    model_cfg["vocab_size"] = model_cfg["vocab_size"] or 49408
    model = model_lib.CLIP(model_lib.config_from_dict(model_cfg))
    t = config.train
    mesh = make_mesh(dict(config.mesh), list(devices))
    tx = train_step.make_optimizer(t)
    state, shardings = train_step.abstract_train_state(model, tx, mesh, config.seed)
    step_fn = train_step.make_train_step(model, tx, mesh, loss_kind=t.loss, accum_steps=t.accum_steps,
                                         logit_scale_max=t.logit_scale_max,
                                         learning_rate_fn=train_step.learning_rate_schedule(t),
                                         state_shardings=shardings)
    batch_sharding = train_step.batch_sharding(mesh)
    b, size = t.global_batch_size, model.cfg.image_size
    batch = {"image": jax.ShapeDtypeStruct((b, size, size, 3), jnp.uint8, sharding=batch_sharding),
             "tokens": jax.ShapeDtypeStruct((b, text_length(config.data)), jnp.int32, sharding=batch_sharding),
             "is_re_caption": jax.ShapeDtypeStruct((b,), jnp.bool_, sharding=batch_sharding)}
    compiled = step_fn.lower(state, batch).compile()
    return ClipPlan(model_lib.count_params(state.params), shard_bytes(state), b / len(devices),
                    hlo.compiled_stats(compiled))
