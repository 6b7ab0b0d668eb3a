"""Cost of one decoder / vision layer, to count the layer scans XLA's cost analysis counts once.

`compiled.cost_analysis()` counts a while loop's body once whatever its trip count. The caption
job's layers run in `nn.scan` loops (known trip count = the layer count), so a compiled prefill's
FLOPs hold ONE text layer and ONE vision layer. Each layer is compiled here on its own, with the
same mesh, dtype and shapes, and the missing (trip count - 1) copies are added.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.sharding import Mesh

from recap_jax.models.attention import KV_CACHE_AXES
from recap_jax.models.llama import DecoderLayer
from recap_jax.models.llava import LlavaModel
from recap_jax.models.quantization import mode_of, quantized_layer
from recap_jax.models.vision import EncoderLayer
from recap_jax.parallel import mesh as mesh_lib
from recap_jax.planning import hlo


@dataclasses.dataclass(frozen=True)
class Cost:
    flops: float
    bytes_accessed: float
    int8_flops: float = 0.0  # of `flops`: int8 x int8 matmuls (hlo.int8_matmul_flops)

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.flops + other.flops, self.bytes_accessed + other.bytes_accessed,
                    self.int8_flops + other.int8_flops)

    def __mul__(self, n: float) -> "Cost":
        return Cost(self.flops * n, self.bytes_accessed * n, self.int8_flops * n)


def _compiled_cost(module: nn.Module, mesh: Mesh, *args: jax.ShapeDtypeStruct) -> Cost:
    boxed = jax.eval_shape(module.init, jax.random.PRNGKey(0), *args)["params"]
    shardings = nn.unbox(mesh_lib.params_shardings(mesh, boxed))
    params = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          nn.unbox(boxed), shardings)
    compiled = jax.jit(lambda p, *a: module.apply({"params": p}, *a)).lower(params, *args).compile()
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, list) else cost) or {}
    return Cost(float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0)),
                hlo.int8_matmul_flops(compiled.as_text()))


def _arg(mesh: Mesh, shape, dtype, axes) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype, sharding=mesh_lib.logical_sharding(mesh, axes))


def text_layer_prefill(model: LlavaModel, mesh: Mesh, rows: int, seq: int) -> Cost:
    t = model.config.text
    x = _arg(mesh, (rows, seq, t.hidden_size), model.dtype, ("batch", "length", None))
    positions = _arg(mesh, (rows, seq), jnp.int32, ("batch", "length"))
    layer = quantized_layer(DecoderLayer(t, model.dtype, model.param_dtype), mode_of(model), prefill=True)
    return _compiled_cost(layer, mesh, x, None, positions)


def text_layer_decode(model: LlavaModel, mesh: Mesh, rows: int, cache_length: int, cache_dtype,
                      attention: Callable | None = None) -> Cost:
    """`attention`: the decode attention the job's programs use (`decoding.programs.decode_attention_fn`)."""
    t = model.config.text
    x = _arg(mesh, (rows, 1, t.hidden_size), model.dtype, ("batch", "length", None))
    positions = _arg(mesh, (rows, 1), jnp.int32, ("batch", "length"))
    kv = _arg(mesh, (rows, t.num_kv_heads, cache_length, t.head_dim), cache_dtype, KV_CACHE_AXES[1:])
    window = _arg(mesh, (rows,), jnp.int32, ("batch",))
    layer = quantized_layer(DecoderLayer(t, model.dtype, model.param_dtype, attention), mode_of(model))
    return _compiled_cost(layer, mesh, x, (kv, kv), positions, (window, window))


def vision_layer(model: LlavaModel, mesh: Mesh, rows: int) -> Cost:
    v = model.config.vision
    x = _arg(mesh, (rows, v.num_patches + 1, v.hidden_size), model.dtype, ("batch", "length", None))
    layer = EncoderLayer(v.num_heads, v.intermediate_size, v.hidden_act, v.layer_norm_eps, dtype=model.dtype,
                         param_dtype=model.param_dtype)
    return _compiled_cost(layer, mesh, x)
