"""The CLIP trainer's pod plan: compile its train step for the whole slice (the global mesh).

The towers' layers run in `nn.scan` loops, whose body XLA's cost analysis counts once (forward
and backward alike), so the step's FLOPs and bytes count one layer per tower: one layer's
train step (forward, rematerialised forward, backward) is compiled alone with the same mesh,
dtype and per-chip shapes, and the missing (depth - 1) copies of each tower are added.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from recap_jax.clip import model as model_lib
from recap_jax.clip import train_step
from recap_jax.clip.trainer import text_length
from recap_jax.models.vision import EncoderLayer
from recap_jax.parallel.mesh import logical_sharding, make_mesh, params_shardings
from recap_jax.planning import hlo
from recap_jax.planning.layer_cost import Cost

CLIP_BPE_VOCAB, CLIP_BPE_EOS = 49408, 49407  # the OpenAI CLIP tokenizer


@dataclasses.dataclass
class ClipPlan:
    params: int  # parameter count
    state_bytes: int  # params + optimizer state, per chip
    batch_per_chip: float
    step: hlo.CompiledStats
    step_cost: Cost | None = None  # per chip, every layer of both towers counted
    model_flops: float = 0.0  # per chip per step: 6 x matmul params x tokens + attention (fwd + bwd)

    @property
    def total_bytes(self) -> int:
        return self.step.peak_bytes


def compile_clip_step(config: ml_collections.ConfigDict, devices: Sequence) -> ClipPlan:
    """The trainer's jitted train step for `config` over `devices` (every chip of the slice)."""
    # The tokenizer is not read here: 0 (the tokenizer's size) plans with the CLIP BPE's vocabulary.
    model_cfg = dict(config.model.to_dict(), eos_token_id=CLIP_BPE_EOS)
    model_cfg["vocab_size"] = model_cfg["vocab_size"] or CLIP_BPE_VOCAB
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
    stats = hlo.compiled_stats(compiled)
    cfg = model.cfg
    micro = b // max(1, t.accum_steps)
    towers = ((cfg.vision, (size // cfg.patch_size) ** 2 + 1, False), (cfg.text, text_length(config.data), True))
    cost = Cost(stats.flops, stats.bytes_accessed)
    model_flops = 0.0
    for tower, seq, causal in towers:
        layer = layer_train_cost(cfg, tower, seq, causal, micro, mesh)
        cost += layer * ((tower.depth - 1) * max(1, t.accum_steps))
        model_flops += tower.depth * _layer_model_flops(tower, seq, b) / len(devices)
    return ClipPlan(model_lib.count_params(state.params), hlo.shard_bytes(state), b / len(devices), stats,
                    cost, model_flops)


def layer_train_cost(cfg, tower, seq: int, causal: bool, batch: int, mesh) -> Cost:
    """Per-chip cost of one tower layer's forward + backward (rematerialised as the model does)."""
    cls = nn.remat(EncoderLayer, prevent_cse=False) if cfg.remat else EncoderLayer
    layer = cls(tower.heads, tower.mlp_dim, cfg.activation, cfg.layer_norm_eps, causal, cfg.dtype, cfg.param_dtype)
    x = jax.ShapeDtypeStruct((batch, seq, tower.width), cfg.dtype,
                             sharding=logical_sharding(mesh, ("batch", "length", None)))
    boxed = jax.eval_shape(layer.init, jax.random.PRNGKey(0), x)["params"]
    params = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          nn.unbox(boxed), nn.unbox(params_shardings(mesh, boxed)))

    def loss(p, h):
        return jnp.sum(layer.apply({"params": p}, h)[0].astype(jnp.float32))

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile()
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, list) else cost) or {}
    return Cost(float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0)))


def _layer_model_flops(tower, seq: int, batch: int) -> float:
    """Matmul FLOPs of one layer's train step for `batch` sequences: 3 x forward (backward = 2x),
    forward = 2 x (4 w^2 + 2 w mlp) per token + 2 x 2 seq w per token for attention."""
    w = tower.width
    forward = 2 * (4 * w * w + 2 * w * tower.mlp_dim) + 4 * seq * w
    return 3.0 * forward * seq * batch
