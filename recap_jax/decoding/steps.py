"""The decode loop's jitted pieces: the per-slot state, prefilling prompts into free slots, and
the decode steps (`sampler.py` drives them from the host; `programs.py` jits them)."""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from recap_jax.decoding.settings import DecodeSettings
from recap_jax.decoding.token_choice import choose_tokens
from recap_jax.models.attention import KV_CACHE_AXES, PREFILL_KV_AXES, KVCache, ring_columns
from recap_jax.models.llava import LlavaModel
from recap_jax.parallel.mesh import logical_sharding, replicated
from recap_jax.preprocess.image import normalise_on_device


class DecodeState(NamedTuple):
    """Per-slot decoding state; all arrays lead with the slot axis [B]."""
    cache: KVCache
    last_token: jax.Array  # [B] the token to feed next
    position: jax.Array  # [B] cache index of last_token
    generated: jax.Array  # [B, max_new_tokens]
    num_generated: jax.Array  # [B]
    done: jax.Array  # [B] finished (or empty) slots
    sample_seed: jax.Array  # [B] the slot's sample seed (token_choice.sample_seed)
    column: jax.Array  # [] the cache column the next decode step writes (the cache is a ring)


def decode_state_shardings(mesh: Mesh) -> DecodeState:
    """Where the decode state lives on a mesh: every array split over the slot (batch) axis."""
    batch = logical_sharding(mesh, ("batch",))
    cache = logical_sharding(mesh, KV_CACHE_AXES)
    return DecodeState(cache=KVCache(cache, cache), last_token=batch, position=batch,
                       generated=logical_sharding(mesh, ("batch", None)), num_generated=batch, done=batch,
                       sample_seed=batch, column=replicated(mesh))


def _is_stop(tokens: jax.Array, stop_ids: tuple[int, ...]) -> jax.Array:
    if not stop_ids:
        return jnp.zeros(tokens.shape, bool)
    return jnp.isin(tokens, jnp.asarray(stop_ids, tokens.dtype))


def init_state(model: LlavaModel, settings: DecodeSettings, cache_dtype) -> DecodeState:
    b = settings.batch_size
    return DecodeState(
        cache=KVCache.zeros(model.config.text, b, settings.cache_length, cache_dtype),
        last_token=jnp.zeros((b,), jnp.int32), position=jnp.zeros((b,), jnp.int32),
        generated=jnp.zeros((b, settings.max_new_tokens), jnp.int32),
        num_generated=jnp.zeros((b,), jnp.int32), done=jnp.ones((b,), bool),
        sample_seed=jnp.zeros((b,), jnp.int32), column=jnp.zeros((), jnp.int32))


def batch_shards(mesh: Mesh | None) -> int:
    """How many pieces the slot axis is split into on `mesh` (1 without one)."""
    if mesh is None:
        return 1
    axes = logical_sharding(mesh, ("batch",)).spec[0] or ()
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)


def _insert_rows(settings: DecodeSettings, state: DecodeState, kv: KVCache, first: jax.Array,
                 lengths: jax.Array, slots: jax.Array, seeds: jax.Array) -> DecodeState:
    """Start prefilled rows [P] (K/V [L, P, S, KVH, Dh]) in `slots` of `state` (an index >= its
    slot count drops a row). A row's prompt goes into the ring's columns just before
    `state.column`, where its first decode step writes (models/llama.py::LlamaDecoder.decode)."""
    cache_length = state.cache.k.shape[3]
    columns = ring_columns((state.column - lengths) % cache_length, kv.k.shape[2], cache_length)  # [P, S]

    def put_rows(cache, new):  # the two index arrays, split by a slice, index [P, S, L, KVH, Dh]
        return cache.at[:, slots[:, None], :, columns].set(new.transpose(1, 2, 0, 3, 4).astype(cache.dtype),
                                                          mode="drop")

    cache = KVCache(put_rows(state.cache.k, kv.k), put_rows(state.cache.v, kv.v))
    first_row = jnp.zeros((slots.shape[0], settings.max_new_tokens), jnp.int32).at[:, 0].set(first)
    done = _is_stop(first, settings.stop_ids) | (settings.max_new_tokens == 1)

    def put(array, values):
        return array.at[slots].set(values, mode="drop")

    return DecodeState(cache, put(state.last_token, first), put(state.position, lengths),
                       put(state.generated, first_row), put(state.num_generated, jnp.ones_like(lengths)),
                       put(state.done, done), put(state.sample_seed, seeds), state.column)


def prefill_into_slots(model: LlavaModel, settings: DecodeSettings, mesh: Mesh | None,
                       pixel_table: np.ndarray | None, params, state: DecodeState, token_ids: jax.Array,
                       pixels: jax.Array, lengths: jax.Array, slots: jax.Array, seeds: jax.Array) -> DecodeState:
    """Prefill prompts [P, S] and start them in `slots` [P].

    uint8 `pixels` are normalised here with `pixel_table` (`preprocess.image.normalise_table`):
    the host sends a quarter of float32's bytes and does no float work on them.

    Rows and slots are per batch shard: the i-th of the `batch_shards(mesh)` equal blocks of rows
    goes into the i-th block of slots, and `slots` holds indices inside the block (the block's
    size drops a padding row). So every shard writes its own rows into its own slots: the insert
    moves no K/V across devices (a global slot index made the partitioner all-gather the group's
    K/V on every device)."""
    if pixels.dtype == jnp.uint8:
        if pixel_table is None:
            raise ValueError("uint8 pixels need the image settings' table (Sampler(..., image=...))")
        pixels = normalise_on_device(pixels, pixel_table)
    # Methods by name: a Qwix-quantised model (models/quantization.py) intercepts them.
    logits, kv = model.apply({"params": params}, token_ids, pixels, lengths, method="prefill")
    first = choose_tokens(settings, logits, seeds, jnp.zeros_like(lengths))
    insert = functools.partial(_insert_rows, settings)
    if mesh is not None:
        state_specs = jax.tree.map(lambda s: s.spec, decode_state_shardings(mesh))
        rows = logical_sharding(mesh, ("batch",)).spec
        new = logical_sharding(mesh, PREFILL_KV_AXES).spec
        insert = jax.shard_map(insert, mesh=mesh, in_specs=(state_specs, KVCache(new, new), rows, rows, rows, rows),
                               out_specs=state_specs)
    return insert(state, kv, first, lengths, slots, seeds)


def decode_steps(model: LlavaModel, settings: DecodeSettings, shards: int, params, state: DecodeState,
                 refill_at: jax.Array) -> DecodeState:
    """Up to `steps_per_sync` steps for every live slot. Returns early once every one of the
    `shards` blocks of slots has `refill_at` free slots (the host can prefill a group into them)
    or all are done."""

    def step(carry):
        i, s = carry
        logits, cache = model.apply({"params": params}, s.last_token, s.position, s.cache, s.column,
                                    method="decode")
        token = choose_tokens(settings, logits, s.sample_seed, s.num_generated)
        live = ~s.done
        rows = jnp.arange(token.shape[0])
        index = jnp.where(live, s.num_generated, settings.max_new_tokens)  # out of range: dropped
        generated = s.generated.at[rows, index].set(token, mode="drop")
        num_generated = s.num_generated + live
        done = s.done | (live & (_is_stop(token, settings.stop_ids)
                                 | (num_generated >= settings.max_new_tokens)))
        return i + 1, DecodeState(cache, jnp.where(live, token, s.last_token), s.position + live,
                                  generated, num_generated, done, s.sample_seed,
                                  (s.column + 1) % s.cache.k.shape[3])

    def keep_going(carry):
        i, s = carry
        free_per_shard = jnp.min(jnp.sum(s.done.reshape(shards, -1), axis=1))
        return (i < settings.steps_per_sync) & ~jnp.all(s.done) & (free_per_shard < refill_at)

    return jax.lax.while_loop(keep_going, step, (0, state))[1]
