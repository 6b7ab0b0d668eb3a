"""Contrastive losses over the GLOBAL batch (all devices, all hosts).

Two equivalent ways are provided:
- `softmax_loss` / `sigmoid_loss`: written for the whole [B, D] batch. Under `jax.jit` with
  batch-sharded inputs XLA inserts the all-gathers itself, but it materialises the full [B, B]
  logits. This is the readable reference.
- `sharded_contrastive_loss`: a `shard_map` where each device all-gathers the embeddings of the
  other devices and computes only its own rows of the logits ([B_local, B]), so memory grows
  linearly with the global batch. Gradients flow back through the all-gather (its transpose is a
  reduce-scatter), so every device gets the gradient of the global loss. This is what training uses.

Both normalise like CLIP / SigLIP: softmax = mean over the 2B cross-entropies (image->text and
text->image) / 2; sigmoid = sum over all B*B pairs of -log sigmoid(label * logit), divided by B.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

LOSSES = ("softmax", "sigmoid")


def softmax_loss(image_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array) -> jax.Array:
    """CLIP InfoNCE. Embeddings are L2-normalised [B, D]; `logit_scale` is the LOG temperature inverse."""
    logits = jnp.exp(logit_scale) * image_emb @ text_emb.T  # [B images, B texts]
    labels = jnp.arange(logits.shape[0])
    image_to_text = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=1), labels[:, None], 1)
    text_to_image = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=0), labels[None, :], 0)
    return (image_to_text.mean() + text_to_image.mean()) / 2


def sigmoid_loss(image_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array,
                 logit_bias: jax.Array) -> jax.Array:
    """SigLIP: each (image, text) pair is a binary problem; positives on the diagonal."""
    logits = jnp.exp(logit_scale) * image_emb @ text_emb.T + logit_bias
    labels = 2 * jnp.eye(logits.shape[0]) - 1  # +1 on the diagonal, -1 elsewhere
    return -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / logits.shape[0]


def _local_loss_sum(kind, local_img, local_txt, all_img, all_txt, scale, bias):
    """This device's share of the global loss SUM (before dividing by the global batch).

    The positive pair of a local image is its own local text, so no global row index is needed:
    the positive logit is the row-wise dot product of the local embeddings.
    """
    positive = scale * jnp.sum(local_img * local_txt, axis=-1)  # [B_local]
    if kind == "softmax":
        img_rows = scale * local_img @ all_txt.T  # [B_local, B]: my images vs every text
        txt_rows = scale * local_txt @ all_img.T  # [B_local, B]: my texts vs every image
        i2t = jax.nn.logsumexp(img_rows, axis=1) - positive
        t2i = jax.nn.logsumexp(txt_rows, axis=1) - positive
        return jnp.sum(i2t + t2i) / 2
    # Sigmoid: treat every pair as a negative, then correct the positives.
    img_rows = scale * local_img @ all_txt.T + bias
    as_negatives = -jnp.sum(jax.nn.log_sigmoid(-img_rows))
    pos = positive + bias
    correction = -jnp.sum(jax.nn.log_sigmoid(pos)) + jnp.sum(jax.nn.log_sigmoid(-pos))
    return as_negatives + correction


def sharded_contrastive_loss(kind: str, mesh: Mesh, batch_axes: tuple[str, ...] = ("data", "fsdp")):
    """Returns loss(image_emb [B, D], text_emb [B, D], logit_scale, logit_bias) -> scalar.

    `image_emb`/`text_emb` are global arrays whose batch dimension is split over `batch_axes`
    of `mesh`. The result equals `softmax_loss` / `sigmoid_loss` of the gathered embeddings up to float rounding.
    """
    if kind not in LOSSES:
        raise ValueError(f"train.loss: {kind!r} is not one of {LOSSES}")

    def per_device(local_img, local_txt, log_scale, bias):
        all_img = jax.lax.all_gather(local_img, batch_axes, axis=0, tiled=True)
        all_txt = jax.lax.all_gather(local_txt, batch_axes, axis=0, tiled=True)
        scale = jnp.exp(log_scale)
        local_sum = _local_loss_sum(kind, local_img, local_txt, all_img, all_txt, scale, bias)
        global_batch = all_img.shape[0]
        return jax.lax.psum(local_sum, batch_axes) / global_batch

    mapped = jax.shard_map(per_device, mesh=mesh,
                           in_specs=(P(batch_axes), P(batch_axes), P(), P()), out_specs=P())

    def loss(image_emb, text_emb, logit_scale, logit_bias=None):
        if logit_bias is None:
            logit_bias = jnp.zeros((), jnp.float32)
        return mapped(image_emb, text_emb, logit_scale, logit_bias)

    return loss
