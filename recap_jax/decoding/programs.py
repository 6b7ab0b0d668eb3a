"""The decode loop's jitted functions, one set per platform: what `Sampler` runs and
`lowering.py` compiles ahead (built here only, so both are the same programs). On CPU with bf16
weights the programs get XLA options and an LM head in slices; with f32 weights the decoder's
layers are split; the decode attention is the ragged kernel or XLA's (`decode.attention`)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from recap_jax.decoding.settings import DecodeSettings
from recap_jax.decoding.steps import batch_shards, decode_state_shardings, decode_steps, init_state, prefill_into_slots
from recap_jax.kernels.ragged_decode import ragged_decode_attention
from recap_jax.models.llama import head_columns, split_layer_params
from recap_jax.models.llava import LlavaModel
from recap_jax.models.quantization import mode_of
from recap_jax.preprocess.image import ImageSettings, normalise_table

# On CPU with bf16 weights, the f32 bytes of one slice of the LM head (cpu_upcast_options).
CPU_HEAD_SLICE_BYTES = 64 * 2**20


@dataclasses.dataclass(frozen=True)
class DecodePrograms:
    """The jitted functions of the decode loop: what `Sampler` runs and `decoding/lowering.py`
    compiles for a TPU slice."""
    init: Any  # () -> DecodeState
    prefill: Any  # (params, state, token_ids, pixels, lengths, slots, seeds) -> DecodeState
    decode: Any  # (params, state, refill_at) -> DecodeState
    # The model's params tree -> the tree `prefill` and `decode` take (arrays or abstract ones).
    arrange_params: Any = lambda params: params


def split_decoder_layers(params: dict) -> dict:
    """`params` for a `split_layers` model (models/llama.py::split_layer_params), sharing memory."""
    decoder = split_layer_params(params["language_model"])
    if decoder is None:
        raise ValueError("the decoder's stacked params are split over devices along their layers axis; "
                         "they cannot be viewed one layer at a time")
    return {**params, "language_model": decoder}


def decode_programs(model: LlavaModel, settings: DecodeSettings, cache_dtype, mesh: Mesh | None,
                    image: ImageSettings | None = None) -> DecodePrograms:
    """`image`: how the checkpoint normalises images, for a prefill given uint8 pixels."""
    table = normalise_table(image) if image is not None else None
    shardings = decode_state_shardings(mesh) if mesh is not None else None
    options = cpu_upcast_options(model, mesh)
    if options is not None and not mode_of(model):  # Qwix's int8 head has its own dot
        text = model.config.text
        model = model.clone(head_columns=head_columns(text.vocab_size, text.hidden_size, CPU_HEAD_SLICE_BYTES))
    arrange_params = DecodePrograms.arrange_params
    if _platform(mesh) == "cpu" and options is None and not mode_of(model):
        # XLA:CPU copies a layer's weights out of the stack before its dots, every step. In bf16
        # that copy is the f32 conversion XLA:CPU makes anyway, one layer at a time (unrolled
        # per-layer weights would all be converted at once): only float32 weights are split.
        model, arrange_params = model.clone(split_layers=True), split_decoder_layers
    attention = decode_attention_fn(settings.attention, mesh)
    if attention is not None:
        model = model.clone(attention=attention)
    return DecodePrograms(
        init=jax.jit(functools.partial(init_state, model, settings, cache_dtype), out_shardings=shardings),
        prefill=jax.jit(functools.partial(prefill_into_slots, model, settings, mesh, table),
                        out_shardings=shardings, donate_argnums=(1,), compiler_options=options),
        decode=jax.jit(functools.partial(decode_steps, model, settings, batch_shards(mesh)),
                       out_shardings=shardings, donate_argnums=(1,), compiler_options=options),
        arrange_params=arrange_params)


def _platform(mesh: Mesh | None) -> str:
    return mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()


def decode_attention_fn(choice: str, mesh: Mesh | None) -> Callable | None:
    """The model's decode attention for `decode.attention` (settings.py) on the mesh's platform:
    the ragged kernel (interpret mode off TPU) or None, the model's XLA `decode_attention`."""
    platform = _platform(mesh)
    if choice == "xla" or (choice == "auto" and platform != "tpu"):
        return None
    return functools.partial(ragged_decode_attention, mesh=mesh, interpret=platform != "tpu")


def cpu_upcast_options(model: LlavaModel, mesh: Mesh | None) -> dict[str, Any] | None:
    """XLA options that keep the weights' f32 copies one layer at a time on CPU (None elsewhere).

    XLA:CPU computes bf16 in f32: it converts each stacked bf16 weight to f32 where the layer
    loop slices it, and then hoists that convert, of the whole stack, out of the loop as loop
    invariant, so every weight had an f32 copy at once (3.3x the params' bytes in the first
    caption, benchmarks/load_memory.py). Without the hoisting the convert stays fused into the
    slice of each layer (`decode_programs` also computes the LM head in slices of
    `CPU_HEAD_SLICE_BYTES`). Excess precision is off too: every bf16 op rounds to bf16, as in HF's
    bf16, whatever the fusions (with it on, which intermediates kept f32 followed the fusions, and
    the hoisting changed tokens at near ties). TPU computes bf16 natively: its programs get no
    options."""
    if _platform(mesh) != "cpu" or jnp.dtype(getattr(model, "param_dtype", jnp.float32)) == jnp.float32:
        return None
    return {"xla_disable_hlo_passes": "while-loop-invariant-code-motion", "xla_allow_excess_precision": False}
