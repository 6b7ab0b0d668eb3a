"""Next-token cross-entropy over the assistant tokens (LLaVA's masked language-modelling loss).

The batch carries `targets` (the next token at each position) and `weights` (1 on assistant
tokens), so the shift is done once on the host and the loss is a weighted sum. The sum is divided
by the weight of the whole global batch, not of one micro-batch: gradients summed over
accumulation steps are then exactly those of the global batch's mean loss.

With `chunk` > 0 the [rows, length, vocab] float32 logits (4 GiB per 2048-token row for
LLaMA-3's 128,256-token vocabulary) are never held at once: the LM head and the loss run over
`chunk` positions at a time in a scan whose body is rematerialised, so the backward pass
recomputes one chunk's logits at a time too. Same sum, taken in chunks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from recap_jax.models.llava import LlavaModel


def token_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """logits [B, L, V] (any float), targets [B, L] -> -log p(target) [B, L] in float32."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    # An image token id may lie outside the vocabulary (the original layout's `<image>` = vocab
    # size); such targets have weight 0, but an out-of-range gather would give NaN, and NaN x 0 = NaN.
    targets = jnp.where(targets < logits.shape[-1], targets, 0)
    return -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]


def summed_loss(model: LlavaModel, params, batch: dict[str, jax.Array], chunk: int = 0) -> jax.Array:
    """Sum over the batch of the weighted per-token losses (divide by the total weight).
    chunk: positions per row whose logits exist at once (0 = all of them)."""
    variables = {"params": params}
    if chunk <= 0:
        logits = model.apply(variables, batch["tokens"], batch["pixels"])
        return jnp.sum(token_cross_entropy(logits, batch["targets"]) * batch["weights"])
    normed = model.apply(variables, batch["tokens"], batch["pixels"], method=LlavaModel.normed_hidden)
    rows, length, width = normed.shape
    chunks = -(-length // chunk)
    pad = chunks * chunk - length  # padded positions get weight 0
    targets = jnp.pad(batch["targets"], ((0, 0), (0, pad)))
    weights = jnp.pad(batch["weights"].astype(jnp.float32), ((0, 0), (0, pad)))
    normed = jnp.pad(normed, ((0, 0), (0, pad), (0, 0)))

    # Chunks along the sequence, rows kept whole: the rows' batch sharding carries into each chunk.
    def split(x):
        return jnp.moveaxis(x.reshape(rows, chunks, chunk, *x.shape[2:]), 1, 0)

    @jax.checkpoint
    def chunk_loss(total, xs):
        h, t, w = xs
        logits = model.apply(variables, h, method=LlavaModel.head)
        return total + jnp.sum(token_cross_entropy(logits, t) * w), None

    total, _ = jax.lax.scan(chunk_loss, jnp.zeros((), jnp.float32),
                            (split(normed), split(targets), split(weights)))
    return total
