"""train_dit on the one training loop (training/loop.py): the DiT's state, step and data.

One step: captions -> frozen CLIP text tower (token features + mask, pooled embedding); a
timestep t ~ U{0..T-1} and noise per example from (seed, step); x_t = q_sample(latent, t, noise);
DiT(x_t, t, text) -> epsilon (+ variance); DiT's loss (MSE + variational bound); AdamW; the EMA
of the weights. The loop does the rest (mesh, resume at the same data position, metrics,
checkpoints, SIGINT/SIGTERM).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import linen as nn
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec as P

from recap_jax.clip.data import CheckpointableIterator
from recap_jax.clip.model import TextTower
from recap_jax.dit import data as data_lib
from recap_jax.dit.loss import diffusion_loss
from recap_jax.dit.model import DiT, config_from_dict, count_params, init_params
from recap_jax.dit.schedule import Schedule, q_sample, schedule_from_config
from recap_jax.dit.text_encoder import TextEncoder, load_text_encoder
from recap_jax.errors import ConfigError
from recap_jax.parallel.mesh import LOGICAL_AXIS_RULES, params_shardings
from recap_jax.training import loop, optimizer

BATCH_AXES = ("data", "fsdp")


class TrainState(struct.PyTreeNode):
    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any


def validate(config: ml_collections.ConfigDict) -> None:
    """ConfigError naming the field, before anything is loaded."""
    if not config.data.dir:
        raise ConfigError("data.dir: required (an encode_latents output folder)")
    if not config.text.encoder:
        raise ConfigError("text.encoder: required (a train_clip workdir or a HF CLIP folder)")
    if not 0.0 <= config.train.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay: {config.train.ema_decay} is not in [0, 1)")
    batch, hosts = config.train.global_batch_size, jax.process_count()
    if batch % hosts or batch % config.train.accum_steps:
        raise ConfigError(f"train.global_batch_size: {batch} must be divisible by the {hosts} hosts and by "
                          f"train.accum_steps ({config.train.accum_steps})")


def build(config: ml_collections.ConfigDict, mesh) -> tuple[DiT, TextEncoder, Schedule, dict[str, Any]]:
    """(model, frozen text encoder, schedule, latents.json) of a config: what training and sampling share."""
    info = data_lib.read_latents_info(config.data.dir)
    text = load_text_encoder(config.text.encoder, max_tokens=config.text.max_tokens,
                             tokenizer=config.text.tokenizer, dtype=config.text.dtype, mesh=mesh)
    model = DiT(config_from_dict(config.model, info["latent_shape"], text.width, text.embed_dim))
    return model, text, schedule_from_config(config.diffusion), info


def text_params_on(mesh, text: TextEncoder) -> Any:
    """The frozen text params placed on the mesh by their logical axes."""
    tokens = jnp.zeros((1, text.max_tokens), jnp.int32)
    boxed = jax.eval_shape(lambda: TextTower(text.cfg).init(jax.random.key(0), tokens)["params"])
    return jax.device_put(text.params, params_shardings(mesh, boxed))


def abstract_state(model: DiT, tx, mesh) -> tuple[Any, Any]:
    """(ShapeDtypeStructs with shardings, shardings) of the TrainState."""
    def init(rng):
        boxed = init_params(model, rng)
        return TrainState(step=jnp.zeros((), jnp.int32), params=boxed, opt_state=tx.init(boxed), ema_params=boxed)
    abstract = jax.eval_shape(init, jax.random.key(0))
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, LOGICAL_AXIS_RULES)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        nn.unbox(abstract), shardings), shardings


def make_train_step(model: DiT, text: TextEncoder, schedule: Schedule, tx, *, seed: int, accum_steps: int,
                    ema_decay: float, learning_rate_fn, state_shardings):
    """jit(step)(state, batch, text_params) -> (state, metrics); the state is donated."""
    def loss_fn(params, text_params, batch, rng):
        features, mask, pooled = text.encode(text_params, batch["tokens"])
        x0 = batch["latent"]
        k_t, k_noise = jax.random.split(rng)
        t = jax.random.randint(k_t, (x0.shape[0],), 0, schedule.num_steps)
        noise = jax.random.normal(k_noise, x0.shape, jnp.float32)
        x_t = q_sample(schedule, x0, t, noise)
        out = model.apply({"params": params}, x_t, t, features, mask, pooled)
        return diffusion_loss(schedule, out, x0, x_t, t, noise)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: TrainState, batch: dict[str, jax.Array], text_params: Any):
        rng = jax.random.fold_in(jax.random.key(seed), state.step)
        if accum_steps == 1:
            (loss, parts), grads = grad_fn(state.params, text_params, batch, rng)
        else:  # micro-batch k: rows k, k + accum, ... (each device keeps its own rows)
            micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(-1, accum_steps, *x.shape[1:]), 0, 1), batch)

            def body(carry, inputs):
                k, mb = inputs
                (l, p), g = grad_fn(state.params, text_params, mb, jax.random.fold_in(rng, k))
                return jax.tree.map(jnp.add, carry, (l, p, g)), None
            (l0, p0), g0 = jax.eval_shape(grad_fn, state.params, text_params,
                                          jax.tree.map(lambda x: x[0], micro), rng)
            zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), (l0, p0, g0))
            (loss, parts, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(accum_steps), micro))
            loss, parts, grads = jax.tree.map(lambda x: x / accum_steps, (loss, parts, grads))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.ema_params, params)
        metrics = {"loss": loss, **parts, "grad_norm": optax.global_norm(grads),
                   "learning_rate": learning_rate_fn(state.step),
                   "org_caption_fraction": jnp.mean(batch["org_caption"]),
                   "dropped_fraction": jnp.mean(batch["dropped"])}
        return TrainState(state.step + 1, params, opt_state, ema), metrics

    return jax.jit(step, donate_argnums=(0,), out_shardings=(state_shardings, None))


class _DeviceBatches:
    """Host batches as global arrays split over the batch axes; the position is the iterator's."""

    def __init__(self, host: CheckpointableIterator, mesh):
        self.host, self.sharding = host, NamedSharding(mesh, P(BATCH_AXES))

    def __next__(self) -> dict[str, jax.Array]:
        local = next(self.host)
        return {k: jax.make_array_from_process_local_data(self.sharding, v) for k, v in local.items()}

    def get_state(self) -> Any:
        return self.host.get_state()


class DitTrainer(loop.Trainer):
    name, unit = "train_dit", "images"
    progress_keys = ("mse", "vb", "grad_norm")

    def __init__(self, config: ml_collections.ConfigDict, mesh):
        validate(config)
        self.config, self.mesh, t = config, mesh, config.train
        self.model, self.text, self.schedule, self.info = build(config, mesh)
        settings = optimizer.settings_from_config(t)
        self.num_steps = settings.num_steps
        self.tx = optimizer.make_optimizer(settings)
        self.learning_rate_fn = optimizer.learning_rate_schedule(settings)
        self.abstract, self.shardings = abstract_state(self.model, self.tx, mesh)
        self.text_params = text_params_on(mesh, self.text)
        self._step = make_train_step(self.model, self.text, self.schedule, self.tx, seed=config.seed,
                                     accum_steps=t.accum_steps, ema_decay=t.ema_decay,
                                     learning_rate_fn=self.learning_rate_fn, state_shardings=self.shardings)

    def identity(self) -> dict[str, Any]:
        c = self.config
        return {"data.dir": os.path.abspath(c.data.dir), "text.encoder": os.path.abspath(c.text.encoder),
                "text.max_tokens": c.text.max_tokens, "model": c.model.to_dict(), "diffusion": c.diffusion.to_dict(),
                "data.org_caption_prob": c.data.org_caption_prob, "train.cond_drop_prob": c.train.cond_drop_prob,
                "train.global_batch_size": c.train.global_batch_size, "seed": c.seed}

    def abstract_state(self) -> Any:
        return self.abstract

    def init_state(self) -> TrainState:
        def init(rng):
            params = nn.unbox(init_params(self.model, rng))
            return TrainState(jnp.zeros((), jnp.int32), params, self.tx.init(params), params)
        state = jax.jit(init, out_shardings=self.shardings)(jax.random.key(self.config.seed))
        self.say(f"new run in {self.config.workdir}: {count_params(state.params) / 1e6:.2f}M params, "
                 f"latents {self.info['latent_shape']}, mesh {dict(self.mesh.shape)}")
        return state

    def data(self, position: Any | None) -> _DeviceBatches:
        c = self.config
        batches = data_lib.train_dataset(
            c.data.dir, self.text.tokenizer, max_tokens=self.text.max_tokens,
            per_host_batch=c.train.global_batch_size // jax.process_count(), seed=c.seed,
            org_caption_prob=c.data.org_caption_prob, cond_drop_prob=c.train.cond_drop_prob,
            process_index=jax.process_index(), process_count=jax.process_count())
        host = CheckpointableIterator(batches, c.data.num_threads, c.data.prefetch)
        if position is not None:
            host.set_state(position)
        return _DeviceBatches(host, self.mesh)

    def step(self, state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, Any]]:
        return self._step(state, batch, self.text_params)

    def units(self, batch: Any) -> int:
        return self.config.train.global_batch_size


def train(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Runs (or resumes) training as configured; the summary, with the final TrainState as "state"."""
    return loop.run(config, DitTrainer)
