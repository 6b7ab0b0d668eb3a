"""The forward (noising) process DiT trains with: a linear-beta DDPM, and its sampling timesteps.

Tables are computed in float64 numpy, as DiT's `gaussian_diffusion.py` does, and enter jitted code
as float32 constants. Names follow DDPM (Ho et al. 2020): alphas_cumprod = alpha-bar_t.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from recap_jax.errors import ConfigError

SPACINGS = ("dit", "leading", "trailing")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A linear-beta DDPM of `num_steps` steps (DiT: 1000 steps, beta 1e-4 .. 2e-2)."""
    num_steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 2e-2

    @property
    def betas(self) -> np.ndarray:
        return np.linspace(self.beta_start, self.beta_end, self.num_steps, dtype=np.float64)

    @property
    def alphas_cumprod(self) -> np.ndarray:
        return np.cumprod(1.0 - self.betas)

    @property
    def alphas_cumprod_prev(self) -> np.ndarray:
        return np.append(1.0, self.alphas_cumprod[:-1])

    @property
    def posterior_variance(self) -> np.ndarray:
        """Variance of q(x_{t-1} | x_t, x_0): beta_t (1 - alpha-bar_{t-1}) / (1 - alpha-bar_t)."""
        return self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @property
    def posterior_log_variance_clipped(self) -> np.ndarray:
        """Its log, with t = 0 (variance 0) taking t = 1's value, as DiT does."""
        var = self.posterior_variance
        return np.log(np.append(var[1], var[1:]))

    def posterior_mean_coefs(self) -> tuple[np.ndarray, np.ndarray]:
        """(coefficient of x_0, coefficient of x_t) of the posterior mean."""
        ab, ab_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        return self.betas * np.sqrt(ab_prev) / (1.0 - ab), (1.0 - ab_prev) * np.sqrt(1.0 - self.betas) / (1.0 - ab)


def schedule_from_config(cfg) -> Schedule:
    """`config.diffusion` (num_steps, beta_start, beta_end) -> Schedule; ConfigError on bad values."""
    if cfg.num_steps < 2:
        raise ConfigError(f"diffusion.num_steps: {cfg.num_steps} is below 2")
    if not 0.0 < cfg.beta_start < cfg.beta_end < 1.0:
        raise ConfigError(f"diffusion.beta_start/beta_end: need 0 < {cfg.beta_start} < {cfg.beta_end} < 1")
    return Schedule(int(cfg.num_steps), float(cfg.beta_start), float(cfg.beta_end))


def gather(table: np.ndarray, t: jax.Array, ndim: int) -> jax.Array:
    """table[t] as float32, shaped to broadcast over a [B, ...] array of `ndim` dimensions."""
    values = jnp.asarray(table, jnp.float32)[t]
    return values.reshape(values.shape + (1,) * (ndim - 1))


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """x_t = sqrt(alpha-bar_t) x_0 + sqrt(1 - alpha-bar_t) noise."""
    ab = schedule.alphas_cumprod
    return gather(np.sqrt(ab), t, x0.ndim) * x0 + gather(np.sqrt(1.0 - ab), t, x0.ndim) * noise


def sampling_timesteps(num_train: int, steps: int, spacing: str = "dit") -> np.ndarray:
    """The `steps` training timesteps a sampler visits, descending (int64).

    "dit": DiT's `space_timesteps` (evenly spaced from 0 to num_train - 1, rounded half to even:
    250 of 1000 gives 0, 4, 8, ..., 999); "leading" / "trailing": diffusers' spacings of the same
    names ("leading", its default: 0, 4, ..., 996).
    """
    if not 1 <= steps <= num_train:
        raise ConfigError(f"sample.steps: {steps} is not in [1, {num_train}] (the training schedule's steps)")
    if spacing == "dit":
        stride = (num_train - 1) / (steps - 1) if steps > 1 else 0.0
        timesteps, position = [], 0.0
        for _ in range(steps):  # accumulated like DiT, so the rounding is the same
            timesteps.append(round(position))
            position += stride
        return np.array(sorted(set(timesteps))[::-1], np.int64)
    if spacing == "leading":
        return (np.arange(steps) * (num_train // steps))[::-1].astype(np.int64)
    if spacing == "trailing":
        return (np.round(np.arange(num_train, 0, -num_train / steps)) - 1).astype(np.int64)
    raise ConfigError(f"sample.spacing: {spacing!r} is not one of {SPACINGS}")
