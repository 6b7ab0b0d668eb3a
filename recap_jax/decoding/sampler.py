"""Greedy captioning with a KV cache and continuous batching.

The device holds `batch_size` decode slots. New prompts are prefilled in groups of
`prefill_batch` (image + prompt, right-padded to a length bucket) and their K/V are copied into
free slots; then every slot advances one token per decode step. A slot whose caption ended (a
stop token or `max_new_tokens`) is refilled with the next prompt instead of idling until the
longest caption of the batch ends.

Compiles are bounded: one prefill and one insert per prompt-length bucket, one decode loop.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from recap_jax.models.llama import KVCache
from recap_jax.models.llava import LlavaModel


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    max_new_tokens: int = 128
    batch_size: int = 16  # decode slots kept in flight
    prefill_batch: int = 4  # prompts prefilled together when slots free up
    prompt_buckets: tuple[int, ...] = (64, 128, 256, 512, 640, 768, 1024)  # padded prompt lengths
    steps_per_sync: int = 8  # decode steps per device call between host checks
    stop_ids: tuple[int, ...] = ()

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"decode.max_new_tokens={self.max_new_tokens}: must be >= 1")
        if not 1 <= self.prefill_batch <= self.batch_size:
            raise ValueError(f"decode.prefill_batch={self.prefill_batch}: must be in 1..decode.batch_size"
                             f" ({self.batch_size})")
        if self.steps_per_sync < 1:
            raise ValueError(f"decode.steps_per_sync={self.steps_per_sync}: must be >= 1")

    def bucket(self, length: int) -> int:
        for b in sorted(self.prompt_buckets):
            if length <= b:
                return b
        raise ValueError(f"prompt of {length} tokens exceeds the largest decode.prompt_buckets entry "
                         f"({max(self.prompt_buckets)})")

    @property
    def cache_length(self) -> int:
        return max(self.prompt_buckets) + self.max_new_tokens


class DecodeState(NamedTuple):
    """Per-slot decoding state; all arrays lead with the slot axis [B]."""
    cache: KVCache
    last_token: jax.Array  # [B] the token to feed next
    position: jax.Array  # [B] cache index of last_token
    generated: jax.Array  # [B, max_new_tokens]
    num_generated: jax.Array  # [B]
    done: jax.Array  # [B] finished (or empty) slots


@dataclasses.dataclass
class Request:
    """One image to caption. `tag` travels back with the result (e.g. the sample)."""
    token_ids: np.ndarray  # [S] int32 prompt with image tokens expanded
    pixels: np.ndarray  # [H, W, 3] float32
    tag: Any = None


@dataclasses.dataclass
class Result:
    tag: Any
    tokens: np.ndarray  # generated ids, stop token excluded
    stopped: bool  # ended on a stop token (False: hit max_new_tokens)
    prompt_length: int


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
        num_generated=jnp.zeros((b,), jnp.int32), done=jnp.ones((b,), bool))


def prefill_into_slots(model: LlavaModel, settings: DecodeSettings, params, state: DecodeState,
                       token_ids: jax.Array, pixels: jax.Array, lengths: jax.Array, slots: jax.Array
                       ) -> DecodeState:
    """Prefill prompts [P, S] and start them in `slots` [P] (an index >= B drops a padding row)."""
    logits, kv = model.apply({"params": params}, token_ids, pixels, lengths, method=LlavaModel.prefill)
    first = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    seq = token_ids.shape[1]
    cache = KVCache(state.cache.k.at[:, slots, :seq].set(kv.k.astype(state.cache.k.dtype), mode="drop"),
                    state.cache.v.at[:, slots, :seq].set(kv.v.astype(state.cache.v.dtype), mode="drop"))
    first_row = jnp.zeros((slots.shape[0], settings.max_new_tokens), jnp.int32).at[:, 0].set(first)
    done = _is_stop(first, settings.stop_ids) | (settings.max_new_tokens == 1)

    def put(array, values):
        return array.at[slots].set(values, mode="drop")

    return DecodeState(cache, put(state.last_token, first), put(state.position, lengths),
                       put(state.generated, first_row), put(state.num_generated, jnp.ones_like(lengths)),
                       put(state.done, done))


def decode_steps(model: LlavaModel, settings: DecodeSettings, params, state: DecodeState,
                 refill_at: jax.Array) -> DecodeState:
    """Up to `steps_per_sync` greedy steps for every live slot. Returns early once `refill_at`
    slots are free (the host can prefill a group into them) or all are done."""

    def step(carry):
        i, s = carry
        logits, cache = model.apply({"params": params}, s.last_token, s.position, s.cache,
                                    method=LlavaModel.decode)
        token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        live = ~s.done
        rows = jnp.arange(token.shape[0])
        index = jnp.where(live, s.num_generated, settings.max_new_tokens)  # out of range: dropped
        generated = s.generated.at[rows, index].set(token, mode="drop")
        num_generated = s.num_generated + live
        done = s.done | (live & (_is_stop(token, settings.stop_ids)
                                 | (num_generated >= settings.max_new_tokens)))
        return i + 1, DecodeState(cache, jnp.where(live, token, s.last_token), s.position + live,
                                  generated, num_generated, done)

    def keep_going(carry):
        i, s = carry
        return (i < settings.steps_per_sync) & ~jnp.all(s.done) & (jnp.sum(s.done) < refill_at)

    return jax.lax.while_loop(keep_going, step, (0, state))[1]


class Sampler:
    """Host loop around the jitted prefill/decode functions.

    `state_sharding` (optional) places the decode state on a mesh; params are already placed.
    """

    def __init__(self, model: LlavaModel, params, settings: DecodeSettings, *, cache_dtype=jnp.float32,
                 state_sharding: Callable[[DecodeState], Any] | None = None, data_sharding=None):
        self.model, self.params, self.settings = model, params, settings
        self._state_shardings = state_sharding
        self._data_sharding = data_sharding
        make_state = functools.partial(init_state, model, settings, cache_dtype)
        shardings = state_sharding(jax.eval_shape(make_state)) if state_sharding else None
        self._init = jax.jit(make_state, out_shardings=shardings)
        self._prefill = jax.jit(functools.partial(prefill_into_slots, model, settings),
                                out_shardings=shardings, donate_argnums=(1,))
        self._decode = jax.jit(functools.partial(decode_steps, model, settings),
                               out_shardings=shardings, donate_argnums=(1,))
        self.prefill_tokens = 0  # real (unpadded) prompt tokens prefilled
        self.generated_tokens = 0

    def _put(self, array: np.ndarray):
        return jax.device_put(array, self._data_sharding) if self._data_sharding is not None else array

    def _prefill_group(self, state: DecodeState, group: list[Request], slots: list[int]) -> DecodeState:
        s = self.settings
        lengths = np.array([len(r.token_ids) for r in group], np.int32)
        seq = s.bucket(int(lengths.max()))
        p = s.prefill_batch
        token_ids = np.zeros((p, seq), np.int32)
        pixels = np.zeros((p,) + group[0].pixels.shape, np.float32)
        padded_lengths = np.ones((p,), np.int32)
        padded_slots = np.full((p,), s.batch_size, np.int32)  # out of range = dropped
        for row, (request, slot) in enumerate(zip(group, slots)):
            token_ids[row, :lengths[row]] = request.token_ids
            pixels[row] = request.pixels
            padded_lengths[row] = lengths[row]
            padded_slots[row] = slot
        self.prefill_tokens += int(lengths.sum())
        return self._prefill(self.params, state, self._put(token_ids), self._put(pixels),
                             self._put(padded_lengths), self._put(padded_slots))

    def generate(self, requests: Iterable[Request]) -> Iterator[Result]:
        """Caption every request; results come back in completion order."""
        s = self.settings
        pending = iter(requests)
        exhausted = False
        state = self._init()
        free = list(range(s.batch_size))
        active: dict[int, Request] = {}
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
