"""How the next token is chosen from the logits: greedy by default, or seeded top-k / top-p.

Every sampled row draws from its own key, derived from the run's seed, the row's sample seed (a
hash of the image key, `sample_seed`) and the index of the token in the caption. Nothing depends
on the slot or the batch, so an image's caption is the same whatever the batch size, device
count or resume point.
"""

from __future__ import annotations

import hashlib

import jax
import jax.numpy as jnp

from recap_jax.decoding.settings import DecodeSettings


def sample_seed(key: str) -> int:
    """A stable 31-bit seed for a sample key (Python's `hash` changes between processes)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:4], "little") & 0x7FFFFFFF


def greedy(logits: jax.Array) -> jax.Array:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def row_keys(seed: int, sample_seeds: jax.Array, token_index: jax.Array) -> jax.Array:
    """One PRNG key per row from (seed, sample seed, index of the token in the caption)."""
    base = jax.random.PRNGKey(seed)
    return jax.vmap(lambda s, i: jax.random.fold_in(jax.random.fold_in(base, s), i))(sample_seeds, token_index)


def _top_k(logits: jax.Array, keys: jax.Array, k: int) -> jax.Array:
    values, indices = jax.lax.top_k(logits, min(k, logits.shape[-1]))
    choice = jax.vmap(jax.random.categorical)(keys, values)
    return jnp.take_along_axis(indices, choice[:, None], axis=-1)[:, 0]


def _top_p(logits: jax.Array, keys: jax.Array, p: float) -> jax.Array:
    values, indices = jax.lax.top_k(logits, logits.shape[-1])  # sorted, likeliest first
    probs = jax.nn.softmax(values, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = mass_before < p  # the likeliest token always stays
    choice = jax.vmap(jax.random.categorical)(keys, jnp.where(keep, values, -jnp.inf))
    return jnp.take_along_axis(indices, choice[:, None], axis=-1)[:, 0]


def choose_tokens(settings: DecodeSettings, logits: jax.Array, sample_seeds: jax.Array,
                  token_index: jax.Array) -> jax.Array:
    """Next tokens [B] from logits [B, V]; `token_index` [B]: how many tokens each row has made."""
    if settings.sampling == "greedy":
        return greedy(logits)
    keys = row_keys(settings.seed, sample_seeds, token_index)
    scaled = logits.astype(jnp.float32) / settings.temperature
    if settings.sampling == "top_k":
        return _top_k(scaled, keys, settings.top_k).astype(jnp.int32)
    return _top_p(scaled, keys, settings.top_p).astype(jnp.int32)
