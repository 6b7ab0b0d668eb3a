"""The optimizer and the jitted train step (gradient accumulation, trainable subsets).

Params are split by `train.trainable` into a trainable and a frozen tree. Gradients are taken
with respect to the trainable tree only (no backward pass into frozen weights) and the optimizer
is built over that tree, so frozen params have no optimizer state and pass through every step
bit for bit. The trainable tree is kept in float32 (master weights) whatever the compute dtype.
"""

from __future__ import annotations

import dataclasses
import math
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


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
    learning_rate: float
    num_steps: int
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float = 1.0  # 0 = no clipping

    @property
    def warmup_steps(self) -> int:
        return int(math.ceil(self.warmup_ratio * self.num_steps))


def learning_rate_schedule(s: OptimizerSettings) -> optax.Schedule:
    """Linear warm-up from 0, then cosine decay to 0 at `num_steps` (LLaVA-1.5's schedule)."""
    return optax.warmup_cosine_decay_schedule(0.0, s.learning_rate, s.warmup_steps,
                                              max(s.num_steps, s.warmup_steps + 1), 0.0)


def make_optimizer(s: OptimizerSettings) -> optax.GradientTransformation:
    """AdamW (decoupled decay on matrices only, as HF's Trainer) after global-norm clipping."""
    def decay_mask(params):
        return jax.tree.map(lambda p: p.ndim >= 2, params)

    adamw = optax.adamw(learning_rate_schedule(s), b1=s.b1, b2=s.b2, eps=s.eps,
                        weight_decay=s.weight_decay, mask=decay_mask)
    if s.max_grad_norm > 0:
        return optax.chain(optax.clip_by_global_norm(s.max_grad_norm), adamw)
    return adamw


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
