"""Next-token cross-entropy over the assistant tokens (LLaVA's masked language-modelling loss).

The batch carries `targets` (the next token at each position) and `weights` (1 on assistant
tokens), so the shift is done once on the host and the loss is a weighted sum. The sum is divided
by the weight of the whole global batch, not of one micro-batch: gradients summed over
accumulation steps are then exactly those of the global batch's mean loss.
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


def summed_loss(model: LlavaModel, params, batch: dict[str, jax.Array]) -> jax.Array:
    """Sum over the batch of the weighted per-token losses (divide by the total weight)."""
    logits = model.apply({"params": params}, batch["tokens"], batch["pixels"])
    return jnp.sum(token_cross_entropy(logits, batch["targets"]) * batch["weights"])


def mean_loss(model: LlavaModel, params, batch: dict[str, jax.Array]) -> jax.Array:
    """Mean cross-entropy per assistant token: what HF's `labels=` loss computes."""
    return summed_loss(model, params, batch) / jnp.maximum(jnp.sum(batch["weights"]), 1.0)
