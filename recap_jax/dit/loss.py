"""DiT's training loss: epsilon MSE, plus the variational bound term for the learned variance.

With `learn_sigma`, DiT (after Nichol & Dhariwal's improved DDPM) adds the KL between the true
posterior q(x_{t-1} | x_t, x_0) and the model's p(x_{t-1} | x_t), in bits per dimension, with the
mean's gradient stopped (the MSE trains the mean, the bound only the variance); at t = 0 it is the
discretised Gaussian decoder's negative log-likelihood instead. Both per example, then averaged.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from recap_jax.dit.schedule import Schedule, gather


def _mean_flat(x: jax.Array) -> jax.Array:
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2) -> jax.Array:
    return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * jnp.exp(-logvar2))


def _approx_standard_normal_cdf(x: jax.Array) -> jax.Array:
    return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: jax.Array, means: jax.Array, log_scales: jax.Array) -> jax.Array:
    """Log-likelihood of data in [-1, 1] quantised to 256 levels (DDPM's decoder)."""
    centered = x - means
    inv_stdv = jnp.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
    log_cdf_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
    return jnp.where(x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def vb_term(schedule: Schedule, x0: jax.Array, x_t: jax.Array, t: jax.Array, eps: jax.Array,
            var_interp: jax.Array) -> jax.Array:
    """Per-example bound term (bits/dim) of the learned variance; `eps` should be gradient-stopped."""
    nd = x0.ndim
    coef_x0, coef_xt = schedule.posterior_mean_coefs()
    true_mean = gather(coef_x0, t, nd) * x0 + gather(coef_xt, t, nd) * x_t
    true_logvar = gather(schedule.posterior_log_variance_clipped, t, nd)
    ab = schedule.alphas_cumprod
    x0_pred = gather(1.0 / ab**0.5, t, nd) * x_t - gather((1.0 / ab - 1.0) ** 0.5, t, nd) * eps
    model_mean = gather(coef_x0, t, nd) * x0_pred + gather(coef_xt, t, nd) * x_t
    frac = (var_interp + 1.0) / 2.0
    model_logvar = frac * gather(jnp.log(schedule.betas), t, nd) + (1.0 - frac) * true_logvar
    kl = _mean_flat(normal_kl(true_mean, true_logvar, model_mean, model_logvar)) / math.log(2.0)
    nll = -_mean_flat(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar)) / math.log(2.0)
    return jnp.where(t == 0, nll, kl)


def diffusion_loss(schedule: Schedule, out: jax.Array, x0: jax.Array, x_t: jax.Array, t: jax.Array,
                   noise: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(mean loss, {"mse", "vb"}) of the model's raw output `out` for x_t made from (x0, t, noise)."""
    channels = x0.shape[-1]
    eps = out[..., :channels]
    mse = _mean_flat((noise - eps) ** 2)
    if out.shape[-1] == channels:
        return jnp.mean(mse), {"mse": jnp.mean(mse)}
    vb = vb_term(schedule, x0, x_t, t, jax.lax.stop_gradient(eps), out[..., channels:])
    return jnp.mean(mse + vb), {"mse": jnp.mean(mse), "vb": jnp.mean(vb)}
