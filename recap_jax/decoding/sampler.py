"""The decode loop: captioning with a KV cache and continuous batching.

The device holds `batch_size` decode slots; every array of `DecodeState` leads with the slot axis.
One slot's life cycle (the host loop `Sampler.generate` drives it):

    FREE ──prefill_into_slots──> LIVE ──decode_steps──> DONE ──host reads it──> FREE
     (host free list)   (prompt K/V written into   (a stop token or      (Result yielded,
                         the slot's cache rows,     max_new_tokens;       slot back on the
                         first token chosen)        `done[slot]`)         free list)

- FREE -> LIVE: prompts are prefilled in groups of `prefill_batch`, right-padded to a length
  bucket (by default the prompt's own length); each lands in a free slot of its own batch shard,
  so no K/V crosses devices (padding rows of a partial group are dropped).
- LIVE: every live slot gains one token per step, `steps_per_sync` steps per device call.
- DONE -> FREE: after each device call the host collects the finished slots' tokens.

A slot whose caption ended is refilled with the next prompt instead of idling until the longest
caption of the batch ends. `decode_steps` returns to the host early once a prefill group fits
into the free slots of every shard. Compiles are bounded: one prefill per prompt-length bucket, one decode loop.
Tokens are chosen by `token_choice.choose_tokens` (greedy unless `settings.sampling` says otherwise).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from recap_jax.decoding.programs import DecodePrograms, decode_programs
from recap_jax.decoding.settings import DecodeSettings
from recap_jax.decoding.steps import DecodeState, batch_shards
from recap_jax.models.llava import LlavaModel
from recap_jax.parallel.mesh import logical_sharding, replicated
from recap_jax.preprocess.image import ImageSettings

T = TypeVar("T")


@dataclasses.dataclass
class Request(Generic[T]):
    """One image to caption. `tag` travels back with the result (e.g. the sample)."""
    token_ids: np.ndarray  # [S] int32 prompt with image tokens expanded
    pixels: np.ndarray  # [H, W, 3]: float32 normalised, or uint8 (`preprocess.image.resize_image`)
    tag: T = None
    sample_seed: int = 0  # token_choice.sample_seed(key): what sampling draws depend on


@dataclasses.dataclass
class Result(Generic[T]):
    tag: T
    tokens: np.ndarray  # generated ids, stop token excluded
    stopped: bool  # ended on a stop token (False: hit max_new_tokens)
    prompt_length: int


@dataclasses.dataclass
class _PrefillGroup:
    """Host arrays for one prefill call, padded to `prefill_batch` rows."""
    token_ids: np.ndarray
    pixels: np.ndarray
    lengths: np.ndarray
    slots: np.ndarray
    seeds: np.ndarray

    @classmethod
    def build(cls, settings: DecodeSettings, placed: list[tuple[int, Request, int]], slots_per_shard: int
              ) -> _PrefillGroup:
        """`placed`: (row, request, slot inside the row's shard) for each prompt of the group."""
        p = settings.prefill_batch
        first = placed[0][1]
        length = settings.bucket(max(len(r.token_ids) for _, r, _ in placed))
        out = cls(token_ids=np.zeros((p, length), np.int32),
                  pixels=np.zeros((p,) + first.pixels.shape, first.pixels.dtype),
                  lengths=np.ones((p,), np.int32),
                  slots=np.full((p,), slots_per_shard, np.int32),  # out of range = dropped
                  seeds=np.zeros((p,), np.int32))
        for row, request, slot in placed:
            out.token_ids[row, :len(request.token_ids)] = request.token_ids
            out.pixels[row] = request.pixels
            out.lengths[row] = len(request.token_ids)
            out.slots[row] = slot
            out.seeds[row] = request.sample_seed
        return out


class Sampler(Generic[T]):
    """Host loop around the jitted prefill/decode functions: the slot scheduler.

    With a `mesh`, the decode state and the prefill inputs are split over its batch axes; params
    are already placed. Slots are chosen per batch shard: each shard's block of a prefill group
    goes into free slots of that shard.
    """

    def __init__(self, model: LlavaModel, params, settings: DecodeSettings, *, cache_dtype=jnp.float32,
                 mesh: Mesh | None = None, image: ImageSettings | None = None,
                 programs: DecodePrograms | None = None):
        self.model, self.settings = model, settings
        self.shards = batch_shards(mesh)
        for field in ("batch_size", "prefill_batch"):
            if getattr(settings, field) % self.shards:
                raise ValueError(f"decode.{field}={getattr(settings, field)} must be a multiple of the mesh's "
                                 f"batch shards ({self.shards})")
        self._data_sharding = logical_sharding(mesh, ("batch",)) if mesh is not None else None
        # The decode loop's scalar as the programs are lowered (decoding/lowering.py): replicated.
        self._scalar_sharding = replicated(mesh) if mesh is not None else None
        self._scalars: dict[int, jax.Array] = {}
        # `programs`: built (and maybe compiled ahead) by the caller with the same arguments.
        self.programs = programs or decode_programs(model, settings, cache_dtype, mesh, image)
        self.params = self.programs.arrange_params(params)
        self.prefill_tokens = 0  # real (unpadded) prompt tokens prefilled
        self.generated_tokens = 0
        self.device_idle_s = 0.0  # host time with no device call in flight (generate's doc)

    def _put(self, array: np.ndarray):
        return jax.device_put(array, self._data_sharding) if self._data_sharding is not None else array

    def _scalar(self, value: int):
        if self._scalar_sharding is None:
            return np.int32(value)
        if value not in self._scalars:  # two values per run: a group's rows, or "all free"
            self._scalars[value] = jax.device_put(np.int32(value), self._scalar_sharding)
        return self._scalars[value]

    def _prefill_group(self, state: DecodeState, placed: list[tuple[int, Request[T], int]]) -> DecodeState:
        g = _PrefillGroup.build(self.settings, placed, self.settings.batch_size // self.shards)
        self.prefill_tokens += int(sum(len(r.token_ids) for _, r, _ in placed))
        return self.programs.prefill(self.params, state, self._put(g.token_ids), self._put(g.pixels),
                                     self._put(g.lengths), self._put(g.slots), self._put(g.seeds))

    def generate(self, requests: Iterable[Request[T]]) -> Iterator[Result[T]]:
        """Caption every request; results come back in completion order.

        A call's finished captions are yielded after the next device call is dispatched, so the
        caller's work on them (detokenising, writing) overlaps the device's. `device_idle_s`
        counts the time with no device call in flight."""
        s = self.settings
        per_shard, rows = s.batch_size // self.shards, s.prefill_batch // self.shards
        pending = iter(requests)
        exhausted = False
        state = self.programs.init()
        free = [list(range(per_shard)) for _ in range(self.shards)]  # slot indices inside each shard
        active: dict[int, Request[T]] = {}  # global slot -> request
        ready: list[Result[T]] = []  # finished, yielded once the next device call is in flight
        idle_since = time.perf_counter()
        while True:
            # Refill: whole prefill groups while every shard has room, a partial one only at the end.
            while not exhausted and all(len(f) >= rows for f in free):
                placed = []
                while len(placed) < s.prefill_batch:
                    request = next(pending, None)
                    if request is None:
                        exhausted = True
                        break
                    shard = len(placed) // rows
                    placed.append((len(placed), request, free[shard].pop(0)))
                if not placed:
                    break
                idle_since = self._note_dispatch(idle_since)
                state = self._prefill_group(state, placed)
                active.update(((row // rows) * per_shard + slot, request) for row, request, slot in placed)
            if not active:
                yield from ready
                return
            # While prompts wait, come back as soon as every shard has room for its rows of a group.
            refill_at = per_shard + 1 if exhausted else rows
            idle_since = self._note_dispatch(idle_since)
            state = self.programs.decode(self.params, state, self._scalar(refill_at))
            yield from ready
            ready = []
            done, counts = jax.device_get((state.done, state.num_generated))
            idle_since = time.perf_counter()
            finished = [slot for slot in active if done[slot]]
            if finished:
                generated = jax.device_get(state.generated)
                for slot in finished:
                    request = active.pop(slot)
                    tokens = generated[slot, :counts[slot]]
                    stopped = bool(len(tokens)) and int(tokens[-1]) in s.stop_ids
                    self.generated_tokens += int(counts[slot])
                    free[slot // per_shard].append(slot % per_shard)
                    ready.append(Result(request.tag, tokens[:-1] if stopped else tokens, stopped,
                                        len(request.token_ids)))

    def _note_dispatch(self, idle_since: float | None) -> None:
        """Count the idle time up to a dispatch (None: a call is already in flight); returns the
        new idle start: None, a call is in flight now."""
        if idle_since is not None:
            self.device_idle_s += time.perf_counter() - idle_since
        return None
