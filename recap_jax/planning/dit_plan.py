"""The Recap-DiT trainer's pod plan: compile its train step for the whole slice (the global mesh).

The step is `dit/trainer.py`'s own (frozen CLIP text tower forward, DiT forward + backward, AdamW,
EMA) on abstract inputs: 32x32x4 latents (256 px through the KL-f8 autoencoder) and 77 tokens.
The text tower's weights are not read: its size is a named CLIP text tower (`TEXT_TOWERS`, "L" =
CLIP ViT-L/14's; the paper does not say which). XLA's cost analysis counts a scanned block once,
so one DiT block's train step and one text layer's forward are compiled alone with the same mesh
and per-chip shapes, and the missing (depth - 1) copies are added (as `clip_plan.py` does).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from recap_jax.clip.model import TEXT_TOWERS, CLIPConfig, TextTower
from recap_jax.dit import trainer
from recap_jax.dit.model import DiT, DiTBlock, config_from_dict, count_params
from recap_jax.dit.schedule import schedule_from_config
from recap_jax.dit.text_encoder import TextEncoder
from recap_jax.models.layers import dtype_from_name
from recap_jax.models.vision import EncoderLayer
from recap_jax.parallel.mesh import logical_sharding, make_mesh, params_shardings
from recap_jax.planning import hlo
from recap_jax.planning.layer_cost import Cost
from recap_jax.planning.hlo import shard_bytes
from recap_jax.training import optimizer

LATENT_SHAPE = (32, 32, 4)  # 256 px images through KL-f8 (the paper)
TEXT_EMBED = {"tiny": 64, "B": 512, "L": 768, "H": 1024}  # the towers' CLIP projection sizes


class DoesNotFit(Exception):
    """The compiler ran out of HBM for the step (the message says how much it needed)."""


@dataclasses.dataclass
class DitPlan:
    name: str  # e.g. "B/4"
    params: int  # DiT parameters (the frozen text tower not counted)
    state_bytes: int  # params + AdamW state + EMA, per chip
    batch_per_chip: float
    step: hlo.CompiledStats
    step_cost: Cost  # per chip, every block and text layer counted
    model_flops: float  # per chip per step: matmul FLOPs (DiT forward + backward, text forward)


def _abstract(tree, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def compile_dit_step(config: ml_collections.ConfigDict, devices: Sequence, text_tower: str = "L") -> DitPlan:
    """The trainer's jitted train step for `config` over `devices` (every chip of the slice)."""
    mesh = make_mesh(dict(config.mesh), list(devices))
    text_cfg = CLIPConfig(text=TEXT_TOWERS[text_tower], embed_dim=TEXT_EMBED[text_tower],
                          dtype=dtype_from_name(config.text.dtype))
    text = TextEncoder(text_cfg, None, None, int(config.text.max_tokens))
    model = DiT(config_from_dict(config.model, LATENT_SHAPE, text.width, text.embed_dim))
    settings = optimizer.settings_from_config(config.train)
    tx = optimizer.make_optimizer(settings)
    state, shardings = trainer.abstract_state(model, tx, mesh)
    tokens0 = jnp.zeros((1, text.max_tokens), jnp.int32)
    text_boxed = jax.eval_shape(lambda: TextTower(text_cfg).init(jax.random.key(0), tokens0)["params"])
    text_params = _abstract(nn.unbox(text_boxed), nn.unbox(params_shardings(mesh, text_boxed)))
    step = trainer.make_train_step(model, text, schedule_from_config(config.diffusion), tx, seed=0,
                                   accum_steps=config.train.accum_steps, ema_decay=config.train.ema_decay,
                                   learning_rate_fn=optimizer.learning_rate_schedule(settings),
                                   state_shardings=shardings)
    b = config.train.global_batch_size
    rows = logical_sharding(mesh, ("batch",))
    batch = {"latent": jax.ShapeDtypeStruct((b, *LATENT_SHAPE), jnp.float32, sharding=rows),
             "tokens": jax.ShapeDtypeStruct((b, text.max_tokens), jnp.int32, sharding=rows),
             "org_caption": jax.ShapeDtypeStruct((b,), jnp.float32, sharding=rows),
             "dropped": jax.ShapeDtypeStruct((b,), jnp.float32, sharding=rows)}
    try:
        stats = hlo.compiled_stats(step.lower(state, batch, text_params).compile())
    except Exception as e:  # noqa: BLE001 - the TPU compiler's own out-of-memory verdict
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        raise DoesNotFit(f"the TPU compiler refused {config.model.size}/{config.model.patch_size} at "
                         f"{b} images ({b / len(devices):g} per chip): {str(e).splitlines()[0][:200]}") from None
    micro, accum = b // max(1, config.train.accum_steps), max(1, config.train.accum_steps)
    cost = Cost(stats.flops, stats.bytes_accessed)
    cost += _block_cost(model.cfg, text.max_tokens, micro, mesh) * ((model.cfg.depth - 1) * accum)
    cost += _text_layer_cost(text_cfg, text.max_tokens, micro, mesh) * ((text_cfg.text.depth - 1) * accum)
    name = f"{config.model.size}/{config.model.patch_size}"
    return DitPlan(name, count_params(state.params), shard_bytes(state), b / len(devices), stats, cost,
                   model_flops(model.cfg, text_cfg, text.max_tokens, b) / len(devices))


def _compiled_cost(fn, *args) -> Cost:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = (cost[0] if isinstance(cost, list) else cost) or {}
    return Cost(float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0)))


def _block_cost(cfg, length: int, batch: int, mesh) -> Cost:
    """Per-chip cost of one DiT block's forward + backward (rematerialised as the model does)."""
    block = (nn.remat(DiTBlock, prevent_cse=False) if cfg.remat else DiTBlock)(cfg)
    tokens = cfg.grid[0] * cfg.grid[1]
    sds = lambda shape, dtype, axes: jax.ShapeDtypeStruct(shape, dtype, sharding=logical_sharding(mesh, axes))  # noqa: E731
    x = sds((batch, tokens, cfg.width), jnp.float32, ("batch", "length", None))
    c = sds((batch, cfg.width), jnp.float32, ("batch", None))
    text = sds((batch, length, cfg.text_width), cfg.dtype, ("batch", "length", None))
    mask = sds((batch, length), jnp.bool_, ("batch", "length"))
    boxed = jax.eval_shape(block.init, jax.random.key(0), x, c, text, mask)["params"]
    params = _abstract(nn.unbox(boxed), nn.unbox(params_shardings(mesh, boxed)))

    def loss(p, h, c, text, mask):
        return jnp.sum(block.apply({"params": p}, h, c, text, mask)[0])
    return _compiled_cost(jax.grad(loss, argnums=(0, 1, 2)), params, x, c, text, mask)


def _text_layer_cost(cfg: CLIPConfig, length: int, batch: int, mesh) -> Cost:
    """Per-chip cost of one (frozen) text layer's forward."""
    t = cfg.text
    layer = EncoderLayer(t.heads, t.mlp_dim, cfg.activation, cfg.layer_norm_eps, True, cfg.dtype, cfg.param_dtype)
    x = jax.ShapeDtypeStruct((batch, length, t.width), cfg.dtype,
                             sharding=logical_sharding(mesh, ("batch", "length", None)))
    boxed = jax.eval_shape(layer.init, jax.random.key(0), x)["params"]
    params = _abstract(nn.unbox(boxed), nn.unbox(params_shardings(mesh, boxed)))
    return _compiled_cost(lambda p, h: layer.apply({"params": p}, h)[0], params, x)


def model_flops(cfg, text_cfg: CLIPConfig, length: int, batch: int) -> float:
    """Matmul FLOPs of one train step for `batch` images: 3 x the DiT forward (backward = 2x) + the
    text tower's forward. Per image token and block: 2 x (4 w^2 self-attention projections +
    2 w^2 cross-attention q/o + 8 w^2 MLP) + 4 N w self- and 4 L w cross-attention scores/values;
    per caption and block 2 x 2 L w_text w for the cross-attention keys/values."""
    w, n = cfg.width, cfg.grid[0] * cfg.grid[1]
    per_block = n * (2 * 14 * w * w + 4 * n * w + 4 * length * w) + 4 * length * cfg.text_width * w
    dit = 3.0 * batch * cfg.depth * per_block
    t = text_cfg.text
    text = batch * t.depth * length * (2 * (4 * t.width ** 2 + 2 * t.width * t.mlp_dim) + 4 * length * t.width)
    return dit + float(text)


def plan_lines(plan: DitPlan, chip, reserve: int, chips: int, samples: float, efficiency: float
               ) -> tuple[dict, list[str], bool]:
    """(JSON-ready result, text lines, fits?) of a compiled DiT step on a slice of `chips` chips."""
    from recap_jax.planning.chips import GIB
    from recap_jax.planning.report import collectives_lines, stats_json

    s, c = plan.step, plan.step_cost
    fits = s.peak_bytes + reserve <= chip.hbm_bytes
    seconds = max(c.flops / chip.peak_bf16_flops, c.bytes_accessed / chip.hbm_bytes_per_s)
    per_s = plan.batch_per_chip * chips / seconds
    days = samples / per_s / 86400
    lines = [f"Recap-DiT {plan.name} train step ({plan.params / 1e6:.1f}M params, {plan.batch_per_chip:g} images "
             f"per chip, {chips} {chip.name} chips):",
             f"  params + AdamW + EMA {plan.state_bytes / GIB:.2f} GiB per chip; temps {s.temp_bytes / GIB:.2f} GiB; "
             f"peak {s.peak_bytes / GIB:.2f} of {chip.hbm_bytes / GIB:.0f} GiB -> {'fits' if fits else 'DOES NOT FIT'}",
             f"  per chip per step: {c.flops / 1e12:.2f} TFLOP, {c.bytes_accessed / GIB:.1f} GiB accessed (every block "
             f"counted); model matmul FLOPs {plan.model_flops / 1e12:.2f} TFLOP",
             f"  bound: {seconds * 1e3:.0f} ms per step -> {per_s:.0f} images/s on the slice; {samples / 1e6:.0f}M "
             f"samples in {days:.2f} days at the bound, {days / efficiency:.2f} at {efficiency:.0%} of it",
             *collectives_lines("train_step", s.collectives, limit=6)]
    result = {"model": plan.name, "params": plan.params, "state_bytes": plan.state_bytes,
              "batch_per_chip": plan.batch_per_chip, "fits": fits, "step": stats_json(s),
              "step_flops_per_chip": c.flops, "step_bytes_accessed_per_chip": c.bytes_accessed,
              "model_flops_per_chip": plan.model_flops, "bound_s_per_step": seconds, "images_per_s": per_s,
              "samples": samples, "days_at_bound": days, "days_realistic": days / efficiency}
    return result, lines, fits
