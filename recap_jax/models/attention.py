"""Attention pieces of the LLaMA-3 decoder: the KV cache (a ring of columns per slot), rotary
positions (LLaMA-3.1's "llama3" scaling included), grouped-query attention for prefill, and the
one-token decode attention over the cache (XLA; kernels/ragged_decode.py is the Pallas variant)."""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from recap_jax.models.config import TextConfig

Dtype = Any


class KVCache(NamedTuple):
    """Keys and values of every layer: [layers, batch, kv_heads, cache_length, head_dim].

    Heads before positions: the layout the decode attention's dots read (row and head are their
    batch dimensions). A decode step writes one column for all rows (`LlamaDecoder.decode`), a
    dynamic-update-slice; RoPE is applied before caching, so which column holds which position
    does not matter to attention, only the row's window (`ring_window`) does. (Prefill returns its K/V in this tuple in
    the layers' own order [layers, batch, seq, kv_heads, head_dim], PREFILL_KV_AXES.)"""
    k: jax.Array
    v: jax.Array

    @classmethod
    def zeros(cls, config: TextConfig, batch: int, length: int, dtype: Dtype) -> "KVCache":
        shape = (config.num_layers, batch, config.num_kv_heads, length, config.head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


KV_CACHE_AXES = ("layers", "batch", "kv_heads", "cache_length", "head_dim")
PREFILL_KV_AXES = ("layers", "batch", "cache_length", "kv_heads", "head_dim")  # prefill's K/V [L, B, S, KVH, Dh]


def rope_inverse_frequencies(config: TextConfig) -> np.ndarray:
    """Per-pair RoPE frequencies, with LLaMA-3.1's "llama3" scaling when configured."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq.astype(np.float32)
    low_freq_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_freq_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = ((scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor)
              / (scaling.high_freq_factor - scaling.low_freq_factor))
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """x [B, S, heads, head_dim], positions [B, S]; HF's rotate-half layout."""
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, S, head_dim/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


def grouped_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """q [B, S, H, D], k/v [B, T, KVH, D], mask [B, S, T] (True = attend) -> [B, S, H, D]."""
    batch, q_len, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(batch, q_len, kv_heads, heads // kv_heads, head_dim)
    scores = jnp.einsum("bskgd,btkd->bkgst", q, k).astype(jnp.float32) * head_dim**-0.5
    scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgst,btkd->bskgd", probs, v)
    return out.reshape(batch, q_len, heads, head_dim)


def decode_attention(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, k_new: jax.Array,
                     v_new: jax.Array, start: jax.Array, length: jax.Array, layer: jax.Array | None = None
                     ) -> jax.Array:
    """One new token per row: q/k_new/v_new [B, 1, heads, D], the cache [B, KVH, T, D] (or with
    `layer`, the stack [L, B, KVH, T, D] and the layer to read) with the row's earlier tokens in
    its ring window (start, length [B], `ring_window`). The new token's own key joins the softmax
    directly, so the cache is only read here and written once per step for all layers (by the
    caller). This XLA form reads every column; `kernels/ragged_decode.py` has the same function
    reading only the window's blocks."""
    if layer is not None:
        k_cache = jax.lax.dynamic_index_in_dim(k_cache, layer, keepdims=False)
        v_cache = jax.lax.dynamic_index_in_dim(v_cache, layer, keepdims=False)
    batch, _, heads, head_dim = q.shape
    kv_heads, cache_length = k_cache.shape[1], k_cache.shape[2]
    visible = window_visible(start, length, cache_length)
    q = q.reshape(batch, kv_heads, heads // kv_heads, head_dim)
    scale = head_dim**-0.5
    cached = jnp.einsum("bkgd,bktd->bkgt", q, k_cache).astype(jnp.float32) * scale
    cached = jnp.where(visible[:, None, None, :], cached, jnp.finfo(jnp.float32).min)
    own = jnp.einsum("bkgd,bkd->bkg", q, k_new[:, 0]).astype(jnp.float32)[..., None] * scale
    # The softmax over [cached, own] written out: concatenating the own score made every score
    # row one longer than the cache (769 of 768), off the TPU's 128-lane tiles, and copied it.
    top = jnp.maximum(jnp.max(cached, axis=-1, keepdims=True), own)
    e_cached, e_own = jnp.exp(cached - top), jnp.exp(own - top)
    total = jnp.sum(e_cached, axis=-1, keepdims=True) + e_own
    out = (jnp.einsum("bkgt,bktd->bkgd", (e_cached / total).astype(v_cache.dtype), v_cache)
           + (e_own / total).astype(v_cache.dtype) * v_new[:, 0, :, None, :])
    return out.reshape(batch, 1, heads, head_dim)


def ring_columns(start: jax.Array, length: int, cache_length: int) -> jax.Array:
    """Cache columns of `length` consecutive positions from column `start` [B] -> [B, length]."""
    return (start[:, None] + jnp.arange(length)) % cache_length


def ring_window(positions: jax.Array, column: jax.Array, cache_length: int) -> tuple[jax.Array, jax.Array]:
    """(start, length) [B]: a row's `positions` [B] earlier tokens are the `length` columns from
    `start` on, the columns just before `column` (the one the current token's K/V goes to),
    wrapping around the ring; never `column` itself."""
    length = jnp.minimum(positions, cache_length - 1)
    return (column - length) % cache_length, length


def window_visible(start: jax.Array, length: jax.Array, cache_length: int) -> jax.Array:
    """[B, T]: the cache columns inside each row's ring window (start, length [B])."""
    return (jnp.arange(cache_length)[None, :] - start[:, None]) % cache_length < length[:, None]
