"""The captioner's jitted train step (gradient accumulation, trainable subsets); the optimizer is
the one of every trainer (training/optimizer.py).

Params are split by `train.trainable` into a trainable and a frozen tree. Gradients are taken
with respect to the trainable tree only (no backward pass into frozen weights) and the optimizer
is built over that tree, so frozen params have no optimizer state and pass through every step
bit for bit. The trainable tree is kept in float32 (master weights) whatever the compute dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from recap_jax.errors import ConfigError
from recap_jax.models.llava import LlavaModel
from recap_jax.training.loss import summed_loss

# Which top-level parts of the LLaVA params each stage trains (the vision tower stays frozen in
# both of LLaVA-1.5's stages and in caption tuning).
TRAINABLE = {
    "projector": ("multi_modal_projector",),
    "projector+llm": ("multi_modal_projector", "language_model"),
    "all": ("multi_modal_projector", "language_model", "vision_tower"),
}
Params = dict[str, Any]


def split_params(params: Params, trainable: str) -> tuple[Params, Params]:
    """(trainable, frozen) subtrees of `params` for a `train.trainable` value."""
    if trainable not in TRAINABLE:
        raise ConfigError(f"train.trainable={trainable!r}: expected one of {sorted(TRAINABLE)}")
    parts = TRAINABLE[trainable]
    flat = traverse_util.flatten_dict(params)
    train = {k: v for k, v in flat.items() if k[0] in parts}
    frozen = {k: v for k, v in flat.items() if k[0] not in parts}
    return traverse_util.unflatten_dict(train), traverse_util.unflatten_dict(frozen)


def merge_params(trainable: Params, frozen: Params) -> Params:
    return traverse_util.unflatten_dict({**traverse_util.flatten_dict(frozen),
                                         **traverse_util.flatten_dict(trainable)})


def init_state(trainable: Params, optimizer: optax.GradientTransformation) -> dict[str, Any]:
    """The state a checkpoint holds: step, trainable params (float32) and optimizer state."""
    trainable = jax.tree.map(lambda p: p.astype(jnp.float32), trainable)
    return {"step": jnp.zeros((), jnp.int32), "trainable": trainable,
            "opt_state": optimizer.init(trainable)}


def make_train_step(model: LlavaModel, optimizer: optax.GradientTransformation, loss_chunk: int = 0
                    ) -> Callable[[dict, Params, dict], tuple[dict, dict]]:
    """step(state, frozen, batch) -> (state, metrics); batch arrays are [accum, rows, ...].
    loss_chunk: positions per row whose logits exist at once (`summed_loss`'s chunk)."""

    def step(state, frozen, batch):
        total_weight = jnp.maximum(jnp.sum(batch["weights"]), 1.0)

        def micro_loss(trainable, micro):
            return summed_loss(model, merge_params(trainable, frozen), micro, loss_chunk) / total_weight

        def accumulate(carry, micro):
            loss, grads = jax.value_and_grad(micro_loss)(state["trainable"], micro)
            return (carry[0] + loss, jax.tree.map(jnp.add, carry[1], grads)), None

        zeros = jax.tree.map(jnp.zeros_like, state["trainable"])
        (loss, grads), _ = jax.lax.scan(accumulate, (jnp.zeros((), jnp.float32), zeros), batch)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["trainable"])
        trainable = optax.apply_updates(state["trainable"], updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "tokens": jnp.sum(batch["weights"])}
        return {"step": state["step"] + 1, "trainable": trainable, "opt_state": opt_state}, metrics

    return step
