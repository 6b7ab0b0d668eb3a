"""Decode attention that reads only each slot's live columns of the ring KV cache (Pallas TPU).

The decode cache of one layer is a ring [B, KVH, T, D]: slot b's earlier tokens are the `length[b]`
columns from `start[b]` on, wrapping mod T (`models/attention.py::ring_window`). The kernel's grid is
(B, T // block); grid step i of slot b reads the i-th cache block (all kv heads) that intersects b's window
(counted from the block holding `start[b]`, wrapping), so a slot with a short window stops after its
live blocks: past them the block index stays on the last live block, which the pipeline does not
copy again, and the body does nothing. Columns of a block outside the window are masked.

The kernel returns the online softmax's parts (unnormalised output, running max, sum); the caller
merges the new token's own score with them, as `decode_attention` does, so the cache is only read.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import Mesh, PartitionSpec

from recap_jax.models.attention import KV_CACHE_AXES
from recap_jax.models.llama import largest_divisor
from recap_jax.parallel.mesh import logical_sharding

# Finite: a masked score minus a running max stays finite (no inf - inf).
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
BLOCK_COLUMNS = 128  # cache columns per kernel block: a TPU lane tile


def block_columns(cache_length: int, most: int = BLOCK_COLUMNS) -> int:
    """The block size for a cache of `cache_length` columns: the largest divisor <= `most`."""
    return largest_divisor(cache_length, most)


def live_blocks(start: jax.Array, length: jax.Array, block: int, blocks: int) -> tuple[jax.Array, jax.Array]:
    """(first block, how many blocks) of a window of `length` columns from column `start` on a
    ring of `blocks` blocks. A window that wraps back into its first block counts it once (the
    mask of that block takes both parts)."""
    # lax.div truncates: equal to floor division for the non-negative operands that matter here
    # (Mosaic lowers `//` through `sign`, which needs the TPU generation at trace time).
    first = jax.lax.div(start, block)
    last = jax.lax.div(start + length - 1, block)  # unwrapped: may be past the ring's end
    count = jnp.where(length > 0, jnp.minimum(last - first + 1, blocks), 0)
    return first, count


def mean_live_columns(prompt_length: int, new_tokens: int, block: int, cache_length: int) -> float:
    """Cache columns the kernel reads per slot and layer in a decode step, averaged over a caption
    of `new_tokens` tokens after a `prompt_length` prompt: at step t a slot's window holds
    prompt + t columns, and a window of n columns from a start spread evenly over a block's columns
    touches (n - 1) / block + 1 blocks on average (the ring puts windows at any column)."""
    steps = [min(cache_length / block, (prompt_length + t - 1) / block + 1) for t in range(new_tokens)]
    return block * sum(steps) / len(steps)


def block_at(i: jax.Array, start: jax.Array, length: jax.Array, block: int, blocks: int) -> jax.Array:
    """The ring block read at grid step i: the i-th live block, or the last one once i is past them."""
    first, count = live_blocks(start, length, block, blocks)
    index = first + jnp.minimum(i, jnp.maximum(count - 1, 0))
    return jnp.where(index >= blocks, index - blocks, index)


def _kernel(layer_ref, start_ref, length_ref, q_ref, k_ref, v_ref, acc_ref, max_ref, sum_ref, *, block: int,
            cache_length: int, scale: float):
    b, i = pl.program_id(0), pl.program_id(1)
    blocks = cache_length // block
    start, length = start_ref[b], length_ref[b]

    @pl.when(i == 0)
    def _init():
        acc_ref[...] = jnp.zeros(acc_ref.shape, acc_ref.dtype)
        max_ref[...] = jnp.full(max_ref.shape, MASK_VALUE, max_ref.dtype)
        sum_ref[...] = jnp.zeros(sum_ref.shape, sum_ref.dtype)

    @pl.when(i < live_blocks(start, length, block, blocks)[1])
    def _accumulate():
        column = block_at(i, start, length, block, blocks) * block + jax.lax.broadcasted_iota(
            jnp.int32, (q_ref.shape[2], block), 1)
        offset = column - start  # in (-T, T): the column's place in the window, mod T
        live = jnp.where(offset < 0, offset + cache_length, offset) < length  # [G, block]
        for h in range(q_ref.shape[1]):  # the kv heads of one block, each a 2-D attention
            q = q_ref[0, h]  # [G, D]
            k, v = k_ref[0, 0, h].astype(q.dtype), v_ref[0, 0, h].astype(q.dtype)  # [block, D]
            scores = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())),
                                         preferred_element_type=jnp.float32) * scale  # [G, block]
            scores = jnp.where(live, scores, MASK_VALUE)
            previous = max_ref[0, h]  # [G, 1]
            top = jnp.maximum(previous, jnp.max(scores, axis=-1, keepdims=True))
            probs = jnp.where(live, jnp.exp(scores - top), 0.0)
            rescale = jnp.exp(previous - top)
            sum_ref[0, h] = rescale * sum_ref[0, h] + jnp.sum(probs, axis=-1, keepdims=True)
            acc_ref[0, h] = rescale * acc_ref[0, h] + jax.lax.dot_general(
                probs.astype(v.dtype), v, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
            max_ref[0, h] = top


def ragged_decode_parts(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, start: jax.Array,
                        length: jax.Array, layer: jax.Array, *, block: int | None = None,
                        interpret: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
    """q [B, KVH, G, D] against layer `layer` (a scalar) of the stacked cache [L, B, KVH, T, D]
    over each slot's window (start, length [B]) -> (unnormalised output [B, KVH, G, D] f32,
    running max [B, KVH, G, 1], sum [B, KVH, G, 1]). The whole stack is the operand: a layer's
    slice passed in would be a copy of it (a custom call reads whole buffers). One grid step
    reads one block of columns of every kv head of a slot ([KVH, block, D]: few, large copies)."""
    batch, kv_heads, group, head_dim = q.shape
    cache_length = k_cache.shape[3]
    block = block or block_columns(cache_length)
    if cache_length % block:
        raise ValueError(f"ragged decode: cache length {cache_length} is not a multiple of block {block}")
    blocks = cache_length // block

    def cache_map(b, i, layer_ref, start_ref, length_ref):
        return layer_ref[0], b, 0, block_at(i, start_ref[b], length_ref[b], block, blocks), 0

    def row_map(b, i, layer_ref, start_ref, length_ref):
        return b, 0, 0, 0

    q_spec = pl.BlockSpec((1, kv_heads, group, head_dim), row_map)
    cache_spec = pl.BlockSpec((1, 1, kv_heads, block, head_dim), cache_map)
    stat_spec = pl.BlockSpec((1, kv_heads, group, 1), row_map)
    kernel = functools.partial(_kernel, block=block, cache_length=cache_length, scale=head_dim**-0.5)
    return pl.pallas_call(
        kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(num_scalar_prefetch=3, grid=(batch, blocks),
                                               in_specs=[q_spec, cache_spec, cache_spec],
                                               out_specs=[q_spec, stat_spec, stat_spec]),
        out_shape=[jax.ShapeDtypeStruct(q.shape, jnp.float32),
                   jax.ShapeDtypeStruct((batch, kv_heads, group, 1), jnp.float32),
                   jax.ShapeDtypeStruct((batch, kv_heads, group, 1), jnp.float32)],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
        interpret=interpret,
    )(jnp.reshape(layer, (1,)).astype(jnp.int32), start.astype(jnp.int32), length.astype(jnp.int32),
      q, k_cache, v_cache)


def ragged_decode_attention(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, k_new: jax.Array,
                            v_new: jax.Array, start: jax.Array, length: jax.Array, layer: jax.Array | None = None,
                            *, mesh: Mesh | None = None, block: int | None = None, interpret: bool = False
                            ) -> jax.Array:
    """`models/attention.py::decode_attention` with the cache read by the kernel: q/k_new/v_new
    [B, 1, heads, D], the cache [B, KVH, T, D] (or with `layer`, the stack [L, B, KVH, T, D] and
    the layer to read), each row's window (start, length [B]) -> [B, 1, heads, D].

    With a `mesh` the kernel runs per shard (rows over the batch axes, kv heads over theirs): a
    Mosaic call is opaque to the partitioner, which would otherwise gather the cache."""
    batch, _, heads, head_dim = q.shape
    kv_heads = k_new.shape[2]
    grouped = q.reshape(batch, kv_heads, heads // kv_heads, head_dim)
    if layer is None:
        k_cache, v_cache, layer = k_cache[None], v_cache[None], jnp.zeros((), jnp.int32)
    parts = functools.partial(ragged_decode_parts, block=block, interpret=interpret)
    if mesh is not None:
        rows = logical_sharding(mesh, ("batch", "kv_heads", None, None)).spec
        cache = logical_sharding(mesh, KV_CACHE_AXES).spec
        window = PartitionSpec(rows[0])
        parts = jax.shard_map(parts, mesh=mesh, in_specs=(rows, cache, cache, window, window, PartitionSpec()),
                              out_specs=(rows, rows, rows), check_vma=False)
    acc, top_cached, total_cached = parts(grouped, k_cache, v_cache, start, length, layer)
    scale = head_dim**-0.5
    own = jnp.einsum("bkgd,bkd->bkg", grouped, k_new[:, 0]).astype(jnp.float32)[..., None] * scale
    top = jnp.maximum(top_cached, own)
    rescale, e_own = jnp.exp(top_cached - top), jnp.exp(own - top)
    total = total_cached * rescale + e_own
    out = ((acc * (rescale / total)).astype(q.dtype)
           + (e_own / total).astype(q.dtype) * v_new[:, 0, :, None, :].astype(q.dtype))
    return out.reshape(batch, 1, heads, head_dim)
