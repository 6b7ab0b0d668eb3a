"""The decode loop: captioning with a KV cache and continuous batching.

The device holds `batch_size` decode slots; every array of `DecodeState` leads with the slot axis.
One slot's life cycle (the host loop `Sampler.generate` drives it):

    FREE ──prefill_into_slots──> LIVE ──decode_steps──> DONE ──host reads it──> FREE
     (host free list)   (prompt K/V written into   (a stop token or      (Result yielded,
                         the slot's cache rows,     max_new_tokens;       slot back on the
                         first token chosen)        `done[slot]`)         free list)

- FREE -> LIVE: prompts are prefilled in groups of `prefill_batch`, right-padded to a length
  bucket; each lands in a free slot (padding rows of a partial group are dropped).
- LIVE: every live slot gains one token per step, `steps_per_sync` steps per device call.
- DONE -> FREE: after each device call the host collects the finished slots' tokens.

A slot whose caption ended is refilled with the next prompt instead of idling until the longest
caption of the batch ends. `decode_steps` returns to the host early once a prefill group fits
into the free slots. Compiles are bounded: one prefill per prompt-length bucket, one decode loop.
Tokens are chosen by `token_choice.choose_tokens` (greedy unless `settings.sampling` says otherwise).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Iterator
from typing import Generic, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from recap_jax.decoding.settings import DecodeSettings
from recap_jax.decoding.token_choice import choose_tokens
from recap_jax.models.llama import KV_CACHE_AXES, KVCache
from recap_jax.models.llava import LlavaModel
from recap_jax.parallel.mesh import logical_sharding

T = TypeVar("T")


class DecodeState(NamedTuple):
    """Per-slot decoding state; all arrays lead with the slot axis [B]."""
    cache: KVCache
    last_token: jax.Array  # [B] the token to feed next
    position: jax.Array  # [B] cache index of last_token
    generated: jax.Array  # [B, max_new_tokens]
    num_generated: jax.Array  # [B]
    done: jax.Array  # [B] finished (or empty) slots
    sample_seed: jax.Array  # [B] the slot's sample seed (token_choice.sample_seed)


@dataclasses.dataclass
class Request(Generic[T]):
    """One image to caption. `tag` travels back with the result (e.g. the sample)."""
    token_ids: np.ndarray  # [S] int32 prompt with image tokens expanded
    pixels: np.ndarray  # [H, W, 3] float32
    tag: T = None
    sample_seed: int = 0  # token_choice.sample_seed(key): what sampling draws depend on


@dataclasses.dataclass
class Result(Generic[T]):
    tag: T
    tokens: np.ndarray  # generated ids, stop token excluded
    stopped: bool  # ended on a stop token (False: hit max_new_tokens)
    prompt_length: int


def decode_state_shardings(mesh: Mesh) -> DecodeState:
    """Where the decode state lives on a mesh: every array split over the slot (batch) axis."""
    batch = logical_sharding(mesh, ("batch",))
    cache = logical_sharding(mesh, KV_CACHE_AXES)
    return DecodeState(cache=KVCache(cache, cache), last_token=batch, position=batch,
                       generated=logical_sharding(mesh, ("batch", None)), num_generated=batch, done=batch,
                       sample_seed=batch)


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
        sample_seed=jnp.zeros((b,), jnp.int32))


def prefill_into_slots(model: LlavaModel, settings: DecodeSettings, params, state: DecodeState,
                       token_ids: jax.Array, pixels: jax.Array, lengths: jax.Array, slots: jax.Array,
                       seeds: jax.Array) -> DecodeState:
    """Prefill prompts [P, S] and start them in `slots` [P] (an index >= B drops a padding row)."""
    # Methods by name: a Qwix-quantised model (models/quantization.py) intercepts them.
    logits, kv = model.apply({"params": params}, token_ids, pixels, lengths, method="prefill")
    first = choose_tokens(settings, logits, seeds, jnp.zeros_like(lengths))
    seq = token_ids.shape[1]
    cache = KVCache(state.cache.k.at[:, slots, :seq].set(kv.k.astype(state.cache.k.dtype), mode="drop"),
                    state.cache.v.at[:, slots, :seq].set(kv.v.astype(state.cache.v.dtype), mode="drop"))
    first_row = jnp.zeros((slots.shape[0], settings.max_new_tokens), jnp.int32).at[:, 0].set(first)
    done = _is_stop(first, settings.stop_ids) | (settings.max_new_tokens == 1)

    def put(array, values):
        return array.at[slots].set(values, mode="drop")

    return DecodeState(cache, put(state.last_token, first), put(state.position, lengths),
                       put(state.generated, first_row), put(state.num_generated, jnp.ones_like(lengths)),
                       put(state.done, done), put(state.sample_seed, seeds))


def decode_steps(model: LlavaModel, settings: DecodeSettings, params, state: DecodeState,
                 refill_at: jax.Array) -> DecodeState:
    """Up to `steps_per_sync` steps for every live slot. Returns early once `refill_at` slots are
    free (the host can prefill a group into them) or all are done."""

    def step(carry):
        i, s = carry
        logits, cache = model.apply({"params": params}, s.last_token, s.position, s.cache,
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
                                  generated, num_generated, done, s.sample_seed)

    def keep_going(carry):
        i, s = carry
        return (i < settings.steps_per_sync) & ~jnp.all(s.done) & (jnp.sum(s.done) < refill_at)

    return jax.lax.while_loop(keep_going, step, (0, state))[1]


@dataclasses.dataclass
class _PrefillGroup:
    """Host arrays for one prefill call, padded to `prefill_batch` rows."""
    token_ids: np.ndarray
    pixels: np.ndarray
    lengths: np.ndarray
    slots: np.ndarray
    seeds: np.ndarray

    @classmethod
    def build(cls, settings: DecodeSettings, group: list[Request], slots: list[int]) -> _PrefillGroup:
        p = settings.prefill_batch
        lengths = np.array([len(r.token_ids) for r in group], np.int32)
        out = cls(token_ids=np.zeros((p, settings.bucket(int(lengths.max()))), np.int32),
                  pixels=np.zeros((p,) + group[0].pixels.shape, np.float32),
                  lengths=np.ones((p,), np.int32),
                  slots=np.full((p,), settings.batch_size, np.int32),  # out of range = dropped
                  seeds=np.zeros((p,), np.int32))
        for row, (request, slot) in enumerate(zip(group, slots)):
            out.token_ids[row, :lengths[row]] = request.token_ids
            out.pixels[row] = request.pixels
            out.lengths[row] = lengths[row]
            out.slots[row] = slot
            out.seeds[row] = request.sample_seed
        return out


class Sampler(Generic[T]):
    """Host loop around the jitted prefill/decode functions: the slot scheduler.

    With a `mesh`, the decode state and the prefill inputs are split over its batch axes; params
    are already placed.
    """

    def __init__(self, model: LlavaModel, params, settings: DecodeSettings, *, cache_dtype=jnp.float32,
                 mesh: Mesh | None = None):
        self.model, self.params, self.settings = model, params, settings
        self._data_sharding: NamedSharding | None = None
        shardings = None
        if mesh is not None:
            shardings = decode_state_shardings(mesh)
            self._data_sharding = logical_sharding(mesh, ("batch",))
        self._init = jax.jit(functools.partial(init_state, model, settings, cache_dtype), out_shardings=shardings)
        self._prefill = jax.jit(functools.partial(prefill_into_slots, model, settings),
                                out_shardings=shardings, donate_argnums=(1,))
        self._decode = jax.jit(functools.partial(decode_steps, model, settings),
                               out_shardings=shardings, donate_argnums=(1,))
        self.prefill_tokens = 0  # real (unpadded) prompt tokens prefilled
        self.generated_tokens = 0

    def _put(self, array: np.ndarray):
        return jax.device_put(array, self._data_sharding) if self._data_sharding is not None else array

    def _prefill_group(self, state: DecodeState, group: list[Request[T]], slots: list[int]) -> DecodeState:
        g = _PrefillGroup.build(self.settings, group, slots)
        self.prefill_tokens += int(sum(len(r.token_ids) for r in group))
        return self._prefill(self.params, state, self._put(g.token_ids), self._put(g.pixels),
                             self._put(g.lengths), self._put(g.slots), self._put(g.seeds))

    def generate(self, requests: Iterable[Request[T]]) -> Iterator[Result[T]]:
        """Caption every request; results come back in completion order."""
        s = self.settings
        pending = iter(requests)
        exhausted = False
        state = self._init()
        free = list(range(s.batch_size))
        active: dict[int, Request[T]] = {}
        while True:
            # Refill: whole prefill groups while slots allow, a partial one only at the end.
            while not exhausted and len(free) >= s.prefill_batch:
                group = []
                while len(group) < s.prefill_batch:
                    request = next(pending, None)
                    if request is None:
                        exhausted = True
                        break
                    group.append(request)
                if not group:
                    break
                slots = [free.pop(0) for _ in group]
                state = self._prefill_group(state, group, slots)
                active.update(zip(slots, group))
            if not active:
                return
            # While prompts wait, come back as soon as a prefill group fits in the free slots.
            refill_at = s.batch_size + 1 if exhausted else s.prefill_batch
            state = self._decode(self.params, state, np.int32(refill_at))
            done, counts = jax.device_get((state.done, state.num_generated))
            finished = [slot for slot in active if done[slot]]
            if finished:
                generated = jax.device_get(state.generated)
                for slot in finished:
                    request = active.pop(slot)
                    tokens = generated[slot, :counts[slot]]
                    stopped = bool(len(tokens)) and int(tokens[-1]) in s.stop_ids
                    self.generated_tokens += int(counts[slot])
                    free.append(slot)
                    yield Result(request.tag, tokens[:-1] if stopped else tokens, stopped,
                                 len(request.token_ids))
