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
import functools
import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from recap_jax.decoding.settings import DecodeSettings
from recap_jax.decoding.token_choice import choose_tokens
from recap_jax.kernels.ragged_decode import ragged_decode_attention
from recap_jax.models.llama import (KV_CACHE_AXES, PREFILL_KV_AXES, KVCache, head_columns, ring_columns,
                                    split_layer_params)
from recap_jax.models.llava import LlavaModel
from recap_jax.models.quantization import mode_of
from recap_jax.parallel.mesh import logical_sharding, replicated
from recap_jax.preprocess.image import ImageSettings, normalise_on_device, normalise_table

T = TypeVar("T")
# On CPU with bf16 weights, the f32 bytes of one slice of the LM head (cpu_upcast_options).
CPU_HEAD_SLICE_BYTES = 64 * 2**20


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


@dataclasses.dataclass(frozen=True)
class DecodePrograms:
    """The jitted functions of the decode loop: what `Sampler` runs and `decoding/lowering.py`
    compiles for a TPU slice (built here only, so both are the same programs)."""
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
