"""The caption job's jitted functions, built as the job builds them, with abstract arguments.

This is the one place that knows how `decoding.sampler.Sampler` jits its functions: the plan
compiles exactly those (same functions, shardings and donation), with ShapeDtypeStruct
arguments instead of arrays, so no weights or TPU are needed.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.sharding import Mesh

from recap_jax.decoding.programs import DecodePrograms, decode_programs
from recap_jax.decoding.settings import DecodeSettings
from recap_jax.decoding.steps import decode_state_shardings, init_state
from recap_jax.models.llava import LlavaModel
from recap_jax.models.quantization import abstract_model_params
from recap_jax.parallel import mesh as mesh_lib
from recap_jax.preprocess.image import ImageSettings


@dataclasses.dataclass
class CaptionPrograms:
    """Lowered-not-yet-compiled functions of one caption job (per host) and their abstract inputs."""
    params: Any  # ShapeDtypeStruct tree, with shardings
    state: Any  # the DecodeState, abstract, with shardings
    prefill: dict[int, Any]  # bucket -> jax.stages.Lowered of prefill + insert into slots
    decode: Any  # jax.stages.Lowered of the decode loop


def _with_shardings(shapes, shardings):
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def abstract_caption_params(model: LlavaModel, mesh: Mesh, dtype, boxed: Any = None) -> Any:
    """The params as the caption job places them (`mesh_lib.params_shardings`), without memory.
    `boxed`: the model's boxed abstract params if the caller has them (tracing them takes seconds)."""
    if boxed is None:
        boxed = abstract_model_params(model, dtype)  # int8 leaves for a quantised model
    return _with_shardings(nn.unbox(boxed), nn.unbox(mesh_lib.params_shardings(mesh, boxed)))


def lower_caption_programs(model: LlavaModel, settings: DecodeSettings, mesh: Mesh, dtype,
                           buckets: list[int], programs: DecodePrograms | None = None,
                           pixels_dtype=jnp.uint8, boxed_params: Any = None) -> CaptionPrograms:
    """Lower the sampler's prefill (one per bucket) and decode loop for this host's mesh.
    `programs`: the sampler's own jits (a compile of their lowering fills their caches);
    `pixels_dtype`: the images' dtype as the sampler's requests carry them (the caption job:
    uint8, normalised in the prefill); `boxed_params`: as for `abstract_caption_params`."""
    params = abstract_caption_params(model, mesh, dtype, boxed_params)
    make_state = functools.partial(init_state, model, settings, dtype)
    state_shapes = jax.eval_shape(make_state)
    shardings = decode_state_shardings(mesh)
    state = _with_shardings(state_shapes, shardings)
    batch = mesh_lib.logical_sharding(mesh, ("batch",))
    replicated = mesh_lib.replicated(mesh)
    # Without the job's programs: the CLIP mean/std (other values do not change the program).
    programs = programs or decode_programs(model, settings, dtype, mesh,
                                           ImageSettings(size=model.config.vision.image_size))
    params = programs.arrange_params(params)
    p = settings.prefill_batch
    side = model.config.vision.image_size
    prefill = {}
    for seq in buckets:
        args = (jax.ShapeDtypeStruct((p, seq), jnp.int32, sharding=batch),
                jax.ShapeDtypeStruct((p, side, side, 3), pixels_dtype, sharding=batch),
                jax.ShapeDtypeStruct((p,), jnp.int32, sharding=batch),
                jax.ShapeDtypeStruct((p,), jnp.int32, sharding=batch),
                jax.ShapeDtypeStruct((p,), jnp.int32, sharding=batch))  # lengths, slots, sample seeds
        prefill[seq] = programs.prefill.lower(params, state, *args)
    decode = programs.decode.lower(params, state, jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated))
    return CaptionPrograms(params, state, prefill, decode)

