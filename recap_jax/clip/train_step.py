"""Train state, optimizer and the jitted CLIP training step (a pure function of state and batch).

One step, for a newcomer:
1. The global batch (images uint8 [B, H, W, 3], tokens int32 [B, L]) arrives split over the mesh's batch
   axes (`data`, `fsdp`); parameters are placed by their logical axis names.
2. Images are normalised on the device; both towers embed their half of the batch; embeddings
   are L2-normalised.
3. `loss.sharded_contrastive_loss` compares every image with every text of the GLOBAL batch.
4. AdamW (warmup + cosine) updates the params; `logit_scale` is clamped at log(logit_scale_max).

Gradient accumulation (`accum_steps` > 1) keeps the contrastive loss over the whole global batch
(not over micro-batches, which would change the loss): pass 1 embeds every micro-batch without
storing activations, the loss and its gradient w.r.t. the embeddings are computed on the full
batch, and pass 2 back-propagates those embedding gradients micro-batch by micro-batch (the
"gradient cache" trick). The result equals the gradient of one big batch; activation memory is
that of one micro-batch, at the price of one extra forward pass.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from recap_jax.clip import loss as loss_lib
from recap_jax.clip.data import SOURCE_CONCAT, SOURCE_ORG_CAPTION, normalize_on_device
from recap_jax.clip.model import CLIP, init_params
from recap_jax.errors import ConfigError
from recap_jax.parallel.mesh import LOGICAL_AXIS_RULES, params_shardings
from recap_jax.training import optimizer as optimizer_lib

BATCH_AXES = ("data", "fsdp")


class TrainState(struct.PyTreeNode):
    step: jax.Array
    params: Any
    opt_state: Any


def _settings(cfg: Any) -> optimizer_lib.OptimizerSettings:
    """The optimizer settings named in `cfg` (a `config.train`, or a benchmark's subset)."""
    return optimizer_lib.OptimizerSettings(**{f.name: cfg[f.name] for f in dataclasses.fields(
        optimizer_lib.OptimizerSettings) if f.name in cfg})


def open_clip_schedule(s: optimizer_lib.OptimizerSettings) -> optax.Schedule:
    """The one schedule (training/optimizer.py) with open_clip's warm-up: step s < warmup trains
    at lr x (s + 1) / warmup, so the first step already learns."""
    shared = optimizer_lib.learning_rate_schedule(s)
    return lambda step: shared(jnp.where(step < s.warmup_steps, step + 1, step))


def learning_rate_schedule(cfg: Any) -> optax.Schedule:
    """CLIP's schedule for the fields of `cfg` (a `config.train`, or a benchmark's subset)."""
    return open_clip_schedule(_settings(cfg))


def make_optimizer(cfg: Any) -> optax.GradientTransformation:
    """The one AdamW builder (training/optimizer.py) for the fields of `cfg`, on CLIP's schedule."""
    return optimizer_lib.make_optimizer(_settings(cfg), learning_rate_schedule(cfg))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of every batch array: leading dimension split over the batch axes."""
    return NamedSharding(mesh, P(BATCH_AXES))


def create_train_state(model: CLIP, tx: optax.GradientTransformation, mesh: Mesh, seed: int,
                       init_from: Any = None) -> tuple[TrainState, Any]:
    """A freshly initialised (or `init_from` params) TrainState placed on the mesh + its shardings."""

    def init(rng, init_from):
        boxed = init_params(model, rng)
        if init_from is not None:  # keep the logical boxes, swap in the given values
            boxed = jax.tree.map(lambda box, value: box.replace_boxed(jnp.asarray(value, box.value.dtype)),
                                 boxed, init_from, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
        # optax maps over leaves, so the optimizer state inherits the params' logical boxes.
        return TrainState(step=jnp.zeros((), jnp.int32), params=boxed, opt_state=tx.init(boxed))

    rng = jax.random.key(seed)
    abstract = jax.eval_shape(init, rng, init_from)
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, LOGICAL_AXIS_RULES)
    # `init_from` is an argument (not a closure) so big checkpoints are not baked into the program.
    state = jax.jit(lambda r, p: nn.unbox(init(r, p)), out_shardings=shardings)(rng, init_from)
    return state, shardings


def abstract_train_state(model: CLIP, tx, mesh: Mesh, seed: int = 0):
    """ShapeDtypeStructs (with shardings) of the train state: the target for checkpoint restore."""
    def init(rng):
        boxed = init_params(model, rng)
        return TrainState(step=jnp.zeros((), jnp.int32), params=boxed, opt_state=tx.init(boxed))
    abstract = jax.eval_shape(init, jax.random.key(seed))
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, LOGICAL_AXIS_RULES)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        nn.unbox(abstract), shardings), shardings


def clip_param_shardings(model: CLIP, mesh: Mesh) -> Any:
    """NamedShardings of the CLIP model's params, from their logical axis names."""
    return params_shardings(mesh, jax.eval_shape(lambda: init_params(model, jax.random.key(0))))


def _split_micro(x: jax.Array, accum_steps: int) -> jax.Array:
    """[B, ...] -> [accum, B/accum, ...]; micro-batch k takes rows k, k+accum, ... so that every
    device keeps its own rows (the batch dimension stays split the same way)."""
    x = x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:])
    return jnp.swapaxes(x, 0, 1)


def _merge_micro(x: jax.Array) -> jax.Array:
    """Inverse of `_split_micro`."""
    x = jnp.swapaxes(x, 0, 1)
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def make_train_step(model: CLIP, tx: optax.GradientTransformation, mesh: Mesh, *, loss_kind: str,
                    accum_steps: int, logit_scale_max: float, learning_rate_fn: optax.Schedule | None = None,
                    state_shardings: Any = None) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The jitted `train_step(state, batch) -> (new_state, metrics)`; `state` is donated."""
    contrastive = loss_lib.sharded_contrastive_loss(loss_kind, mesh, BATCH_AXES)
    use_bias = model.cfg.use_logit_bias
    if loss_kind == "sigmoid" and not use_bias:
        raise ConfigError("train.loss=sigmoid needs model.use_logit_bias=True")
    if accum_steps < 1:
        raise ConfigError(f"train.accum_steps must be >= 1, got {accum_steps}")

    def embed(params, images, tokens):
        return model.apply({"params": params}, normalize_on_device(images), tokens)

    def loss_from_embeddings(params, image_emb, text_emb):
        return contrastive(image_emb, text_emb, params["logit_scale"],
                           params["logit_bias"] if use_bias else None)

    def loss_and_grads(params, batch):
        if accum_steps == 1:
            def full_loss(p):
                return loss_from_embeddings(p, *embed(p, batch["image"], batch["tokens"]))
            return jax.value_and_grad(full_loss)(params)

        micro = jax.tree.map(lambda x: _split_micro(x, accum_steps), (batch["image"], batch["tokens"]))

        # Pass 1: embeddings of all micro-batches (no activations kept across iterations).
        def embed_micro(_, images_tokens):
            return None, embed(params, *images_tokens)
        _, (image_emb, text_emb) = jax.lax.scan(embed_micro, None, micro)
        image_emb, text_emb = _merge_micro(image_emb), _merge_micro(text_emb)

        # The full-batch loss; gradients w.r.t. the embeddings and the temperature/bias params.
        loss, (direct_grads, image_grad, text_grad) = jax.value_and_grad(
            loss_from_embeddings, argnums=(0, 1, 2))(params, image_emb, text_emb)

        # Pass 2: push the embedding gradients through each tower, one micro-batch at a time.
        def backprop_micro(grads, xs):
            images_tokens, cotangent = xs
            _, pullback = jax.vjp(lambda p: embed(p, *images_tokens), params)
            return jax.tree.map(jnp.add, grads, pullback(cotangent)[0]), None
        cotangents = (_split_micro(image_grad, accum_steps), _split_micro(text_grad, accum_steps))
        grads, _ = jax.lax.scan(backprop_micro, direct_grads, (micro, cotangents))
        return loss, grads

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        loss, grads = loss_and_grads(state.params, batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # Clamp the temperature as CLIP / open_clip do (1 <= scale <= 100) so the logits cannot blow up.
        params = dict(params, logit_scale=jnp.clip(params["logit_scale"], 0.0, math.log(logit_scale_max)))
        metrics = {"loss": loss, "logit_scale": jnp.exp(params["logit_scale"]),
                   "grad_norm": optax.tree.norm(grads)}
        if "caption_source" in batch:  # what the step trained on (the realised mixing ratio)
            source = batch["caption_source"]
            metrics["org_caption_fraction"] = jnp.mean((source == SOURCE_ORG_CAPTION).astype(jnp.float32))
            metrics["concat_fraction"] = jnp.mean((source == SOURCE_CONCAT).astype(jnp.float32))
        if learning_rate_fn is not None:
            metrics["learning_rate"] = learning_rate_fn(state.step)
        if use_bias:
            metrics["logit_bias"] = params["logit_bias"]
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    batch_spec = batch_sharding(mesh)
    return jax.jit(train_step, in_shardings=(state_shardings, batch_spec),
                   out_shardings=(state_shardings, NamedSharding(mesh, P())), donate_argnums=(0,))


def jit_tower_fns(model: CLIP, mesh: Mesh, param_shardings: Any = None):
    """Jitted (encode_images(params, images), encode_texts(params, tokens)) -> normalised embeddings."""
    batch_spec = batch_sharding(mesh)
    replicated = NamedSharding(mesh, P())
    encode_images = jax.jit(
        lambda params, images: model.apply({"params": params}, normalize_on_device(images),
                                           method=CLIP.encode_image),
        in_shardings=(param_shardings, batch_spec), out_shardings=replicated)
    encode_texts = jax.jit(
        lambda params, tokens: model.apply({"params": params}, tokens, method=CLIP.encode_text),
        in_shardings=(param_shardings, batch_spec), out_shardings=replicated)
    return encode_images, encode_texts
