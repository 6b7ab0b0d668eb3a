"""Opt-in int8 weights (and activations) for the language model, with Qwix (post-training quantisation).

`model.quantize = "int8"`: every matmul weight of the LLaMA decoder (q/k/v/o, the MLP, the LM
head) is stored as int8 with one f32 scale per output channel (absmax), and Qwix's `dot_general`
/ `einsum` compute with it. `"w8a8"`: the same int8 weights; in the prefill the decoder's dense
matmuls also quantise their input activations to int8 (per token, absmax, at run time), so the
MXU multiplies int8 by int8 (twice bf16's rate on v5e, v5p and v6e); the decode step stays
weight-only (it is bound by HBM bandwidth, not by the MXU), and the attention's own einsums
(scores, values) stay in the model's dtype in both. The vision tower, projector, embeddings and norms stay in the
model's dtype (the decoder is ~96% of the 8B's bytes, and Qwix's PTQ convolution needs int8
activations too). Weights are quantised leaf by leaf as they are loaded, so the float weights
are never all in memory. Qwix is an install extra (`.[quant]`): it is imported only when a
mode is set.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import traverse_util

from recap_jax.errors import ConfigError
from recap_jax.models.config import LlavaConfig
from recap_jax.models.llava import LlavaModel

QUANTIZE_MODES = ("", "int8", "w8a8")
# The methods the caption job and the plan call by name (`model.apply(..., method="prefill")`).
METHODS = ("__call__", "prefill", "decode")


def check_mode(mode: str) -> str:
    if mode not in QUANTIZE_MODES:
        raise ConfigError(f"model.quantize: {mode!r} is not one of {QUANTIZE_MODES} ('' = none)")
    return mode


def _provider(module_path: str, int8_activations: bool = False):
    import qwix  # the [quant] extra: imported only when a model is quantised
    # Qwix matches module paths: in the captioner, the decoder's Dense layers (inside the layer
    # scan) and the LM head. Dense layers call `dot_general`, the attention `einsum`: only the
    # former quantise activations, so the scores and the softmax-weighted values stay float.
    weights = qwix.QuantizationRule(module_path=module_path, weight_qtype=jnp.int8)
    if not int8_activations:
        return qwix.PtqProvider([weights])
    both = qwix.QuantizationRule(module_path=module_path, op_names=("dot_general",), weight_qtype=jnp.int8,
                                 act_qtype=jnp.int8)
    return qwix.PtqProvider([both, weights])


def quantized_model(model: LlavaModel, mode: str) -> LlavaModel:
    """`model` computing with quantised weights (`mode` "" returns it unchanged); "w8a8": its
    `prefill` method with int8 activations too, its other methods as "int8"."""
    if not check_mode(mode):
        return model
    import qwix  # the [quant] extra: imported only when a model is quantised
    quantized = qwix.quantize_model(model, _provider("language_model/.*"), methods=METHODS)
    if mode == "w8a8":  # the same params: dynamic activation scales add none
        prefill = qwix.quantize_model(model, _provider("language_model/.*", int8_activations=True),
                                      methods=("prefill",))
        type(quantized).prefill = type(prefill).__dict__["prefill"]
    type(quantized).quantize_mode = mode  # Qwix made this class for this model alone
    return quantized


def quantized_layer(layer: nn.Module, mode: str, prefill: bool = False) -> nn.Module:
    """One decoder layer on its own (the plan's per-layer cost), quantised as in `quantized_model`
    for a `prefill` or a decode step."""
    if not check_mode(mode):
        return layer
    import qwix  # the [quant] extra: imported only when a model is quantised
    return qwix.quantize_model(layer, _provider(".*", int8_activations=prefill and mode == "w8a8"))


def mode_of(model: nn.Module) -> str:
    """The quantisation mode of a model from `quantized_model` ("" for a plain one)."""
    return getattr(type(model), "quantize_mode", "")


def caption_model(config: LlavaConfig, dtype, quantize: str = "", scan_layers: bool = True) -> LlavaModel:
    """The captioner's model in `dtype`; with `quantize` ("int8", "w8a8"), Qwix's quantised form;
    `scan_layers` False: the decoder's layers unrolled (`model.scan_layers`)."""
    return quantized_model(LlavaModel(config, dtype=dtype, param_dtype=dtype, scan_layers=scan_layers), quantize)


def abstract_model_params(model: LlavaModel, dtype) -> Any:
    """Boxed abstract params (shapes, dtypes, logical axis names) of `model`, quantised or not:
    int8 weights are Qwix `WithAux(QArray(qvalue, scale))` leaves."""
    side = model.config.vision.image_size
    tokens = jnp.zeros((1, model.config.num_image_tokens + 1), jnp.int32)
    model = model.clone(param_dtype=jnp.dtype(dtype))
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens, jnp.zeros((1, side, side, 3)))["params"]


def is_quantized(leaf: Any) -> bool:
    """A Qwix quantised array (QArray), or one inside Qwix's WithAux."""
    return type(leaf).__name__ == "QArray" or type(getattr(leaf, "array", None)).__name__ == "QArray"


class LeafQuantizer:
    """Quantises a loaded float param (by path) into its int8 form, placed with the quantised
    params' shardings; params Qwix leaves in float pass through."""

    def __init__(self, abstract_boxed: Any, shardings: Any):
        # flatten_dict stops at Qwix's leaves (they are not dicts).
        self._abstract = traverse_util.flatten_dict(nn.unbox(abstract_boxed))
        self._shardings = traverse_util.flatten_dict(shardings) if shardings is not None else {}
        self._fns: dict[tuple[str, ...], Any] = {}

    def quantizes(self, path: tuple[str, ...]) -> bool:
        return _is_with_aux(self._abstract.get(path))

    def __call__(self, path: tuple[str, ...], value: jax.Array) -> Any:
        if not self.quantizes(path):
            return value
        if path not in self._fns:
            self._fns[path] = _quantize_fn(self._abstract[path], self._shardings.get(path), "layers" in path)
        return self._fns[path](value)


def _is_with_aux(x: Any) -> bool:
    return hasattr(x, "how") and is_quantized(x)


def _quantize_fn(abstract: Any, sharding: Any, stacked: bool):
    import qwix  # the [quant] extra: imported only when a model is quantised
    if stacked:  # scanned layers: Qwix's per-channel axes are those of one layer
        one = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype), abstract)
        fn = jax.vmap(lambda w: qwix.quantize_params({"w": w}, {"w": one})["w"])
    else:
        fn = lambda w: qwix.quantize_params({"w": w}, {"w": abstract})["w"]  # noqa: E731
    return jax.jit(fn) if sharding is None else jax.jit(fn, out_shardings=sharding)


def quantize_params(params: Any, abstract_boxed: Any, shardings: Any | None = None) -> Any:
    """A float params tree quantised as `abstract_boxed` (from `abstract_model_params`) says."""
    quantizer = LeafQuantizer(abstract_boxed, shardings)
    flat = {path: quantizer(path, value) for path, value in traverse_util.flatten_dict(params).items()}
    return traverse_util.unflatten_dict(flat)
