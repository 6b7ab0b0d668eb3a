"""LLaMA-3 decoder: RMSNorm, SwiGLU, grouped-query attention (MQA included), RoPE, KV cache.

Two ways through the same weights:
- prefill: a right-padded block of tokens attends causally; returns every layer's K/V so the
  sampler can store them in its cache.
- decode: one token per row at its own position; the row attends to the cache columns of its
  ring window (`ring_window`), and every row's new K/V is written into one cache column (the caller's
  cursor, a ring over the cache). Rows are independent, which is what lets the sampler refill
  finished rows with new captions (continuous batching).
The cache is an explicit input and output (no flax "cache" collection): decode is a pure function.
The attention itself (cache, RoPE, prefill and decode attention) is `attention.py`.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from recap_jax.models.attention import (KVCache, apply_rope, decode_attention, grouped_attention,
                                        rope_inverse_frequencies, ring_window)
from recap_jax.models.config import TextConfig
from recap_jax.parallel.layer_views import layer_views

Dtype = Any

# Activation checkpointing of the decoder layer (training only; the caption job keeps "none"):
# "full" saves only each layer's input and recomputes the layer in the backward pass,
# "dots_saveable" also keeps the matmul outputs (faster, more memory), "none" keeps everything.
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
REMAT_CHOICES = ("none", *REMAT_POLICIES)


def _init(names, init=nn.initializers.normal(0.02)):
    return nn.with_logical_partitioning(init, names)



class RMSNorm(nn.Module):
    eps: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", _init(("embed",), nn.initializers.ones), (x.shape[-1],),
                           self.param_dtype)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        # HF casts back to the input dtype before the scale; so do we, for bf16 parity.
        return scale.astype(self.dtype) * normed.astype(self.dtype)



class DecoderLayer(nn.Module):
    """`attention`: the decode attention, a function with `decode_attention`'s signature
    (`kernels/ragged_decode.py`); None is `decode_attention`."""
    config: TextConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention: Callable | None = None

    @nn.compact
    def __call__(self, x: jax.Array, cache: tuple | None, positions: jax.Array,
                 window: tuple[jax.Array, jax.Array] | None = None, layer: jax.Array | None = None):
        """Returns (x, this block's new (k, v)). cache None: causal prefill over x [B, S, D].
        Else cache = this layer's (k, v) [B, KVH, T, D] (with `layer`: every layer's
        [L, B, KVH, T, D] and this layer's index), x is one token per row at `positions`
        [B, 1] and `window` (start, length [B]) the ring columns it attends to; the cache is only read
        (LlamaDecoder.decode writes the new K/V of all layers in one update: writing it here,
        inside the layer scan, copied the whole cache once per layer and step)."""
        cfg = self.config
        dense = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
        norm = dict(eps=cfg.rms_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype)
        inv_freq = rope_inverse_frequencies(cfg)

        h = RMSNorm(name="input_layernorm", **norm)(x)
        q = nn.DenseGeneral((cfg.num_heads, cfg.head_dim), name="q_proj", **dense,
                            kernel_init=_init(("embed", "heads", "head_dim")))(h)
        k = nn.DenseGeneral((cfg.num_kv_heads, cfg.head_dim), name="k_proj", **dense,
                            kernel_init=_init(("embed", "kv_heads", "head_dim")))(h)
        v = nn.DenseGeneral((cfg.num_kv_heads, cfg.head_dim), name="v_proj", **dense,
                            kernel_init=_init(("embed", "kv_heads", "head_dim")))(h)
        q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)

        if cache is None:
            seq = x.shape[1]
            # Right padding: padded keys sit after every real query, so the causal mask hides them.
            causal = jnp.tril(jnp.ones((seq, seq), bool))[None]
            attn = grouped_attention(q, k, v, causal)
        else:
            k_cache, v_cache = cache
            if self.attention is None:
                attn = decode_attention(q, k_cache.astype(self.dtype), v_cache.astype(self.dtype), k, v, *window,
                                        layer)
            else:  # reads the cache in its own dtype, block by block
                attn = self.attention(q, k_cache, v_cache, k, v, *window, layer)
        attn = nn.DenseGeneral(cfg.hidden_size, axis=(-2, -1), name="o_proj", **dense,
                               kernel_init=_init(("heads", "head_dim", "embed")))(attn)
        x = x + attn

        h = RMSNorm(name="post_attention_layernorm", **norm)(x)
        gate = nn.Dense(cfg.intermediate_size, name="gate_proj", **dense, kernel_init=_init(("embed", "mlp")))(h)
        up = nn.Dense(cfg.intermediate_size, name="up_proj", **dense, kernel_init=_init(("embed", "mlp")))(h)
        down = nn.Dense(cfg.hidden_size, name="down_proj", **dense,
                        kernel_init=_init(("mlp", "embed")))(jax.nn.silu(gate) * up)
        return x + down, (k, v)


def column_chunked_dot(columns: int):
    """A `lax.dot_general` for `x @ kernel` that loops over `columns` output columns of the kernel
    at a time. On CPU, where XLA computes bf16 dots in f32, the f32 copy of the kernel is then one
    slice, not the whole LM head (2 GiB for LLaMA-3-8B's); each output column is the same dot."""

    def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
        (_, contract_rhs), batch = dimension_numbers
        if batch != ((), ()) or contract_rhs != (0,) or rhs.ndim != 2 or rhs.shape[1] % columns:
            raise ValueError(f"column_chunked_dot: a [in, out] kernel with out a multiple of {columns}, "
                             f"got {rhs.shape} and {dimension_numbers}")

        def part(i):
            kernel = jax.lax.dynamic_slice_in_dim(rhs, i * columns, columns, axis=1)
            return jax.lax.dot_general(lhs, kernel, dimension_numbers, precision=precision,
                                       preferred_element_type=preferred_element_type)

        parts = jax.lax.map(part, jnp.arange(rhs.shape[1] // columns))  # [chunks, ..., columns]
        return jnp.moveaxis(parts, 0, -2).reshape(*parts.shape[1:-1], rhs.shape[1])

    return dot_general


def largest_divisor(n: int, most: int) -> int:
    """The largest divisor of `n` that is at most `most` (>= 1)."""
    return max(c for c in range(1, min(max(most, 1), n) + 1) if n % c == 0)


def head_columns(vocab_size: int, hidden_size: int, max_bytes: int) -> int:
    """The most LM-head columns, a divisor of `vocab_size`, whose f32 kernel slice fits `max_bytes`."""
    return largest_divisor(vocab_size, max_bytes // (4 * hidden_size))


def split_layer_params(decoder_params: dict) -> dict | None:
    """A `LlamaDecoder`'s params for `split_layers=True`: the stacked `layers` subtree as one
    subtree per layer, `blocks_{i}`, each a view of the stack's memory (`layer_views`). None when
    a stacked leaf cannot be viewed per layer (its layers split across devices)."""
    stacked = decoder_params["layers"]
    leaves, treedef = jax.tree.flatten(stacked)
    views = [layer_views(leaf) for leaf in leaves]
    if any(v is None for v in views):
        return None
    split = {k: v for k, v in decoder_params.items() if k != "layers"}
    for i in range(len(views[0]) if views else 0):
        split[f"blocks_{i}"] = jax.tree.unflatten(treedef, [v[i] for v in views])
    return split


class LlamaDecoder(nn.Module):
    """Token embeddings, the decoder blocks, final norm and LM head. `remat` is one of
    REMAT_CHOICES; `scan_layers` False unrolls the blocks (the same stacked `[layers, ...]` params,
    but no loop over layers in the compiled program); `head_columns` > 0 computes the LM head
    that many vocabulary columns at a time (`column_chunked_dot`); `attention` is the decode
    attention (DecoderLayer): None, XLA's, gets each layer's slice of the cache from the layer
    scan; a kernel gets the whole stacked cache and the layer's index (a custom call's operand
    is a whole buffer: a slice passed in is a copy of it, in every step). The params are the
    same whatever these are, except with `split_layers`: then the blocks are unrolled and each
    has its own params, `blocks_{i}` (`split_layer_params` of the stacked tree). XLA:CPU copies a
    layer's weights out of a stack before each dot (a slice is a new buffer there), every step;
    per-layer params are the dots' operands as they are."""
    config: TextConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: str = "none"
    scan_layers: bool = True
    head_columns: int = 0
    split_layers: bool = False
    attention: Callable | None = None

    def setup(self):
        cfg = self.config
        if self.remat not in REMAT_CHOICES:
            raise ValueError(f"remat={self.remat!r}: expected one of {REMAT_CHOICES}")
        layer = DecoderLayer
        if self.remat != "none":
            # prevent_cse=False: inside a scan the loop already keeps XLA from merging recomputation.
            layer = nn.remat(DecoderLayer, policy=REMAT_POLICIES[self.remat], prevent_cse=False)
        self.embed_tokens = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=self.dtype,
                                     param_dtype=self.param_dtype,
                                     embedding_init=_init(("vocab", "embed")))
        if self.split_layers:
            self.blocks = [layer(cfg, self.dtype, self.param_dtype, self.attention) for _ in range(cfg.num_layers)]
        else:
            cache_axis = 0 if self.attention is None else nn.broadcast
            self.layers = nn.scan(layer, variable_axes={"params": 0}, split_rngs={"params": True},
                                  in_axes=(cache_axis, nn.broadcast, nn.broadcast, 0), length=cfg.num_layers,
                                  unroll=1 if self.scan_layers else cfg.num_layers,
                                  metadata_params={nn.PARTITION_NAME: "layers"})(
                                      cfg, self.dtype, self.param_dtype, self.attention)
        self.norm = RMSNorm(cfg.rms_norm_eps, self.dtype, self.param_dtype)
        if not cfg.tie_word_embeddings:
            chunked = column_chunked_dot(self.head_columns) if self.head_columns else None
            self.lm_head = nn.Dense(cfg.vocab_size, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                                    kernel_init=_init(("embed", "vocab")), dot_general=chunked)

    def embed(self, token_ids: jax.Array) -> jax.Array:
        return self.embed_tokens(token_ids)

    def run_layers(self, x: jax.Array, cache: tuple | None, positions: jax.Array,
                   window: tuple[jax.Array, jax.Array] | None, layers: jax.Array | None
                   ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """Every block in turn (`DecoderLayer`); cache (k, v) [L, ...] or None; `layers` [L]: the
        layer indices a kernel `attention` reads the stacked cache at (else None). Returns (x, the
        blocks' new (k, v) stacked [L, ...])."""
        if not self.split_layers:
            return self.layers(x, cache, positions, window, layers)
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            if cache is None or layers is not None:  # prefill, or a kernel reading the whole stack
                block_cache, index = cache, None if layers is None else layers[i]
            else:
                block_cache, index = (cache[0][i], cache[1][i]), None
            x, (k, v) = block(x, block_cache, positions, window, index)
            keys.append(k)
            values.append(v)
        return x, (jnp.stack(keys), jnp.stack(values))

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Final hidden states (before the norm) -> logits in float32."""
        return self.head(self.norm(hidden))

    def final_norm(self, hidden: jax.Array) -> jax.Array:
        return self.norm(hidden)

    def head(self, normed: jax.Array) -> jax.Array:
        """Normed hidden states -> logits in float32 (the LM head, or the tied embeddings)."""
        if self.config.tie_word_embeddings:
            return self.embed_tokens.attend(normed).astype(jnp.float32)
        return self.lm_head(normed).astype(jnp.float32)

    def prefill(self, embeds: jax.Array, positions: jax.Array) -> tuple[jax.Array, KVCache]:
        """embeds [B, S, D] -> (final hidden states [B, S, D] before the norm, K/V [L, B, S, KVH, Dh])."""
        hidden, (k, v) = self.run_layers(embeds, None, positions, None, None)
        return hidden, KVCache(k, v)

    def decode(self, embeds: jax.Array, positions: jax.Array, cache: KVCache, column: jax.Array
               ) -> tuple[jax.Array, KVCache]:
        """embeds [B, 1, D] at positions [B] -> (logits [B, V], updated cache).

        The cache is a ring: every row's new K/V goes into `column` (a scalar), and a row's
        earlier `positions` tokens are the columns just before it (`ring_window`). One column
        for all rows is a dynamic-update-slice; a column per row (its position) was a scatter,
        whose preferred TPU layout is the transpose of the attention dots', so the compiled
        decode step copied the whole cache into the other layout every step."""
        window = ring_window(positions, column, cache.k.shape[3])
        layers = None if self.attention is None else jnp.arange(self.config.num_layers, dtype=jnp.int32)
        hidden, (k, v) = self.run_layers(embeds, (cache.k, cache.v), positions[:, None], window,
                                         layers)  # [L, B, 1, KVH, Dh]
        k = jax.lax.dynamic_update_slice_in_dim(cache.k, k.swapaxes(2, 3).astype(cache.k.dtype), column, axis=3)
        v = jax.lax.dynamic_update_slice_in_dim(cache.v, v.swapaxes(2, 3).astype(cache.v.dtype), column, axis=3)
        return self.logits(hidden[:, 0]), KVCache(k, v)

    def __call__(self, token_ids: jax.Array, positions: jax.Array) -> jax.Array:
        """Text-only forward (all positions' logits); used for init and tests."""
        hidden, _ = self.prefill(self.embed(token_ids), positions)
        return self.logits(hidden)
