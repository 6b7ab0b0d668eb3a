"""Loading a captioner for the caption job: a converted checkpoint (Orbax params + spec) or a
llava-hf folder converted in memory. Writing checkpoints is `recap_jax.conversion.bundle`'s job."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from etils import epath
from flax import linen as nn
from flax import traverse_util

from recap_jax.captioning import param_reads
from recap_jax.conversion.bundle import (PYTREE_DIR, CaptionerSpec, llava_hf_tensors, param_dtype, read_converted_spec,
                                         read_llava_hf_spec)
from recap_jax.conversion.llava import abstract_params, convert_params
from recap_jax.models import quantization
from recap_jax.models.config import LlavaConfig
from recap_jax.models.llava import LlavaModel


def restore_params(checkpoint: epath.PathLike, config: LlavaConfig, dtype: str,
                   shardings=None, transform: Callable[[tuple[str, ...], jax.Array], Any] | None = None) -> dict:
    """Orbax params, placed with `shardings` (a tree of NamedSharding) or on the default device.

    Read leaf by leaf, a chunk of rows at a time, straight into the target devices and dtype
    (`param_reads`): peak host memory is the placed params plus one read. `transform(path, leaf)`
    is applied to each leaf as it is read (int8 quantisation), before the next is read."""
    shapes = nn.unbox(abstract_params(config, jnp.dtype(param_dtype(dtype))))
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, shapes)
    targets = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
    return param_reads.read_tree(epath.Path(checkpoint) / "params" / PYTREE_DIR, targets, transform)


def load_captioner(*, checkpoint: str | None = None, hf_dir: str | None = None,
                   tokenizer: str | None = None, template: str | None = None, dtype: str = "float32",
                   shardings_fn: Callable[[Any], Any] | None = None, quantize: str = "",
                   spec: CaptionerSpec | None = None) -> tuple[CaptionerSpec, Any]:
    """(spec, params) from a converted checkpoint or a llava-hf folder.

    `shardings_fn(boxed_abstract_params) -> shardings` places the params on a mesh. `quantize`
    ("int8"): the params of `models.quantization.quantized_model`, quantised as they are read.
    `spec`: the checkpoint's spec already read with the same arguments (not read again).
    """
    numpy_dtype = param_dtype(dtype)
    if checkpoint:
        if spec is None:
            spec, _ = read_converted_spec(checkpoint, tokenizer or hf_dir)
        if template:
            spec.template = template
        shardings = shardings_fn(abstract_params(spec.config, jnp.dtype(numpy_dtype))) if shardings_fn else None
        quantizer = _quantizer(spec.config, numpy_dtype, quantize, shardings_fn)
        return spec, restore_params(checkpoint, spec.config, dtype, shardings, quantizer)
    if not hf_dir:
        raise ValueError("model: set model.checkpoint (a converted checkpoint) or model.hf_dir")
    spec = spec or read_llava_hf_spec(hf_dir, tokenizer, template)
    host_params = convert_params(spec.config, llava_hf_tensors(hf_dir), numpy_dtype)
    if shardings_fn:
        shardings = nn.unbox(shardings_fn(abstract_params(spec.config, jnp.dtype(numpy_dtype))))
        params = jax.tree.map(jax.device_put, host_params, shardings)
    else:
        params = jax.tree.map(jnp.asarray, host_params)
    quantizer = _quantizer(spec.config, numpy_dtype, quantize, shardings_fn)
    if quantizer is None:
        return spec, params
    flat = {path: quantizer(path, leaf) for path, leaf in traverse_util.flatten_dict(params).items()}
    return spec, traverse_util.unflatten_dict(flat)


def _quantizer(config: LlavaConfig, dtype, quantize: str, shardings_fn):
    """The per-leaf quantiser of `quantize` mode, or None (imported only when asked: Qwix is an extra)."""
    if not quantize:
        return None
    abstract = quantization.abstract_model_params(
        quantization.quantized_model(LlavaModel(config), quantize), jnp.dtype(dtype))
    return quantization.LeafQuantizer(abstract, nn.unbox(shardings_fn(abstract)) if shardings_fn else None)
