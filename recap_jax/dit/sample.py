"""Text -> images with a trained Recap-DiT: `generate(config, prompts, keys)`.

The model, text encoder, schedule and codec are the training run's (its WORKDIR/config.json); the
weights its newest checkpoint's EMA (or raw) params; the sampler and guidance `config.sample`'s.
Every image is seeded by (sample.seed, its key) alone: the same prompt and key give the same image
whatever the batch size, device count, host or resumption.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import linen as nn

from recap_jax.dit import sampling
from recap_jax.dit.codec import load_codec, to_uint8
from recap_jax.dit.model import init_params
from recap_jax.dit.trainer import build, text_params_on
from recap_jax.errors import ConfigError
from recap_jax.parallel.mesh import make_mesh, params_shardings
from recap_jax.training import checkpoints

RUN_CONFIG = "config.json"


def key_seed(seed: int, key: str) -> np.ndarray:
    """Raw PRNG key data [2] uint32 of one image: its key's SHA-256 folded into `seed`."""
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little")
    return np.asarray(jax.random.key_data(jax.random.fold_in(jax.random.key(seed), digest)))


def run_config(workdir: str) -> ml_collections.ConfigDict:
    """The training config recorded in a train_dit workdir."""
    path = epath.Path(workdir) / RUN_CONFIG if workdir else None
    if path is None or not path.exists():
        raise ConfigError(f"workdir: {workdir!r} has no {RUN_CONFIG} (not a train_dit workdir?)")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


class Generator:
    """A trained DiT ready to sample: `generator(prompts, keys) -> uint8 images [N, H, W, 3]`."""

    def __init__(self, config: ml_collections.ConfigDict):
        s = config.sample
        if s.guidance_scale < 1.0:
            raise ConfigError(f"sample.guidance_scale: {s.guidance_scale} is below 1 (1 = no guidance)")
        if s.batch_size < 1:
            raise ConfigError(f"sample.batch_size: {s.batch_size} must be >= 1")
        self.config, self.run = config, run_config(config.workdir)
        self.mesh = make_mesh(dict(config.mesh))
        self.model, self.text, self.schedule, info = build(self.run, self.mesh)
        self.codec = load_codec(s.autoencoder_dir or ("pixels" if info["codec"] == "pixels" else
                                                      info.get("autoencoder_dir") or ""),
                                field="sample.autoencoder_dir")
        sampling.sampling_timesteps(self.schedule.num_steps, s.steps, s.spacing)  # checks steps, spacing
        if s.sampler not in sampling.SAMPLERS:
            raise ConfigError(f"sample.sampler: {s.sampler!r} is not one of {sampling.SAMPLERS}")
        workdir = config.workdir if "://" in config.workdir else os.path.abspath(config.workdir)  # Orbax: absolute
        self.params, self.step = self._restore(workdir, "ema_params" if s.use_ema else "params")
        self.text_params = text_params_on(self.mesh, self.text)
        self._latents = jax.jit(functools.partial(
            _sample_latents, self.model, self.text, self.schedule, float(s.guidance_scale), int(s.steps),
            s.sampler, s.spacing, float(s.eta)))

    def _restore(self, workdir: str, name: str) -> tuple[Any, int]:
        boxed = jax.eval_shape(lambda: init_params(self.model, jax.random.key(0)))
        shardings = params_shardings(self.mesh, boxed)
        target = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                              nn.unbox(boxed), shardings)
        tree, step = checkpoints.restore_params(workdir, {name: target}, "workdir")
        return tree[name], step

    def __call__(self, prompts: list[str], keys: list[str]) -> np.ndarray:
        if len(prompts) != len(keys):
            raise ValueError(f"{len(prompts)} prompts but {len(keys)} keys")
        size = int(self.config.sample.batch_size)
        out = []
        for start in range(0, len(prompts), size):
            chunk, chunk_keys = prompts[start:start + size], keys[start:start + size]
            pad = size - len(chunk)  # one compiled shape: the last batch repeats its first prompt
            tokens = self.text.tokenize(chunk + [chunk[0]] * pad)
            seeds = np.stack([key_seed(self.config.sample.seed, k) for k in chunk_keys + [chunk_keys[0]] * pad])
            latents = self._latents(self.params, self.text_params, jnp.asarray(tokens), jnp.asarray(seeds))
            out.append(to_uint8(self.codec.decode(np.asarray(latents)[:len(chunk)])))
        return np.concatenate(out) if out else np.zeros((0,), np.uint8)


def _sample_latents(model, text, schedule, scale: float, steps: int, sampler: str, spacing: str, eta: float,
                    params, text_params, tokens, seeds) -> jax.Array:
    features, mask, pooled = text.encode(text_params, tokens)
    channels = model.cfg.latent_shape[2]
    if scale == 1.0:  # no guidance: one pass per step
        def denoise(x, t):
            return sampling.split_output(model.apply({"params": params}, x, t, features, mask, pooled), channels)
    else:
        empty = jnp.asarray(text.tokenize([""]))
        f0, m0, p0 = text.encode(text_params, jnp.broadcast_to(empty, tokens.shape))
        both = [jnp.concatenate(pair) for pair in ((features, f0), (mask, m0), (pooled, p0))]
        denoise = sampling.guided(lambda x, t: model.apply({"params": params}, x, t, *both), scale, channels)
    keys = jax.random.wrap_key_data(seeds)
    return sampling.sample(denoise, keys, model.cfg.latent_shape, schedule, steps, sampler, spacing, eta)


def generate(config: ml_collections.ConfigDict, prompts: list[str], keys: list[str]) -> np.ndarray:
    """uint8 images [len(prompts), H, W, 3] for `prompts`, image i seeded by (sample.seed, keys[i])."""
    return Generator(config)(prompts, keys)
