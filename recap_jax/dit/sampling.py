"""DDPM and DDIM sampling over a subset of the training timesteps, with classifier-free guidance.

A sampler visits timesteps t_1 > t_2 > ... > t_n of the training schedule; a step from t to the
next one t' uses alpha-bar_t and alpha-bar_t' (1 after the last), which is exactly DDPM on the
respaced schedule beta'_t = 1 - alpha-bar_t / alpha-bar_t' (DiT's respacing; diffusers' steps).
Randomness is per sample: sample b's noise at step i is drawn from fold_in(key_b, i), so an image
depends on its own key only, never on the batch it was generated in.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from recap_jax.dit.schedule import Schedule, sampling_timesteps
from recap_jax.errors import ConfigError

SAMPLERS = ("ddpm", "ddim")
# denoise(x_t, t) -> (epsilon, variance interpolation in [-1, 1] or None)
Denoiser = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array | None]]


def predict_x0(x: jax.Array, eps: jax.Array, a_t: jax.Array) -> jax.Array:
    return (x - jnp.sqrt(1.0 - a_t) * eps) / jnp.sqrt(a_t)


def ddpm_step(x: jax.Array, eps: jax.Array, var_interp: jax.Array | None, a_t: jax.Array,
              a_prev: jax.Array, noise: jax.Array, add_noise: jax.Array | bool) -> jax.Array:
    """x_{t'} ~ p(x_{t'} | x_t): the posterior mean at the predicted x_0 plus noise.

    Variance: the posterior's (diffusers' "fixed_small"), or with DiT's learned variance the
    log-space interpolation between it and beta'_t ("learned_range").
    """
    alpha = a_t / a_prev
    beta = 1.0 - alpha
    mean = (jnp.sqrt(a_prev) * beta / (1.0 - a_t)) * predict_x0(x, eps, a_t) \
        + (jnp.sqrt(alpha) * (1.0 - a_prev) / (1.0 - a_t)) * x
    small = jnp.maximum((1.0 - a_prev) / (1.0 - a_t) * beta, 1e-20)
    if var_interp is None:
        std = jnp.sqrt(small)
    else:
        frac = (var_interp + 1.0) / 2.0
        std = jnp.exp(0.5 * (frac * jnp.log(beta) + (1.0 - frac) * jnp.log(small)))
    return jnp.where(add_noise, mean + std * noise, mean)


def ddim_step(x: jax.Array, eps: jax.Array, a_t: jax.Array, a_prev: jax.Array, eta: float,
              noise: jax.Array) -> jax.Array:
    """DDIM (Song et al.): deterministic at eta = 0, DDPM-like at eta = 1."""
    x0 = predict_x0(x, eps, a_t)
    std = eta * jnp.sqrt((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev))
    out = jnp.sqrt(a_prev) * x0 + jnp.sqrt(1.0 - a_prev - std**2) * eps
    return out + std * noise if eta > 0 else out


def guided(denoise_both: Callable[[jax.Array, jax.Array], jax.Array], scale: float, channels: int) -> Denoiser:
    """Classifier-free guidance: `denoise_both` sees the batch doubled (conditional half first,
    then the same latents with the empty text) and returns the model's raw output;
    eps = eps_uncond + scale * (eps_cond - eps_uncond); the variance is the conditional half's."""
    def denoise(x, t):
        out = denoise_both(jnp.concatenate([x, x]), jnp.concatenate([t, t]))
        cond, uncond = jnp.split(out, 2)
        eps = uncond[..., :channels] + scale * (cond[..., :channels] - uncond[..., :channels])
        return eps, (cond[..., channels:] if out.shape[-1] > channels else None)
    return denoise


def split_output(out: jax.Array, channels: int) -> tuple[jax.Array, jax.Array | None]:
    """The model's raw output as (epsilon, variance interpolation or None)."""
    return out[..., :channels], (out[..., channels:] if out.shape[-1] > channels else None)


def _noise(keys: jax.Array, index: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, index), shape, jnp.float32))(keys)


def sample(denoise: Denoiser, keys: jax.Array, shape: tuple[int, ...], schedule: Schedule, steps: int,
           sampler: str = "ddpm", spacing: str = "dit", eta: float = 0.0) -> jax.Array:
    """Latents [len(keys), *shape] from pure noise; `keys` holds one PRNG key per sample."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"sample.sampler: {sampler!r} is not one of {SAMPLERS}")
    timesteps = sampling_timesteps(schedule.num_steps, steps, spacing)
    ab = schedule.alphas_cumprod
    a_t = jnp.asarray(ab[timesteps], jnp.float32)
    a_prev = jnp.asarray(np.append(ab[timesteps[1:]], 1.0), jnp.float32)
    batch = keys.shape[0]

    def step(x, inputs):
        i, t, at, ap = inputs
        eps, var_interp = denoise(x, jnp.full((batch,), t, jnp.int32))
        noise = _noise(keys, i + 1, shape)
        if sampler == "ddim":
            return ddim_step(x, eps, at, ap, eta, noise), None
        return ddpm_step(x, eps, var_interp, at, ap, noise, i < len(timesteps) - 1), None

    x = _noise(keys, 0, shape)
    x, _ = jax.lax.scan(step, x, (jnp.arange(len(timesteps)), jnp.asarray(timesteps, jnp.int32), a_t, a_prev))
    return x
