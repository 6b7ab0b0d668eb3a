"""Parity of the noise schedule and of one sampler step with diffusers' DDPMScheduler / DDIMScheduler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from recap_jax.dit import sampling
from recap_jax.dit.schedule import Schedule, q_sample, sampling_timesteps
from recap_jax.errors import ConfigError

DIT = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
SHAPE = (2, 4, 8, 8)  # NCHW, as diffusers


def _inputs(seed=0):
    g = np.random.default_rng(seed)
    return [torch.from_numpy(g.normal(size=SHAPE).astype(np.float32)) for _ in range(3)]


def _nhwc(t: torch.Tensor) -> jax.Array:
    return jnp.asarray(t.numpy().transpose(0, 2, 3, 1))


def _nchw(x) -> np.ndarray:
    return np.asarray(x).transpose(0, 3, 1, 2)


def test_alphas_and_posterior_variance_equal_diffusers():
    ours, ref = Schedule(), DDPMScheduler(**DIT)
    np.testing.assert_allclose(ours.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours.betas, ref.betas.numpy(), rtol=0, atol=1e-6)
    ref_var = np.array([float(ref._get_variance(t)) for t in range(1000)])
    np.testing.assert_allclose(ours.posterior_variance, ref_var, rtol=0, atol=1e-6)
    assert ours.posterior_variance[1] > 0 and abs(ours.alphas_cumprod[-1] - 4.04e-5) < 1e-6


@pytest.mark.parametrize("learned", [False, True])
@pytest.mark.parametrize("index", [3, 249])  # a middle step and the last (no noise)
def test_ddpm_step_equals_diffusers(learned, index):
    timesteps = sampling_timesteps(1000, 250, "dit")
    ref = DDPMScheduler(**DIT, clip_sample=False, variance_type="learned_range" if learned else "fixed_small")
    ref.set_timesteps(timesteps=timesteps.tolist())
    x, eps, var = _inputs()
    t = int(timesteps[index])
    out = torch.cat([eps, torch.tanh(var)], 1) if learned else eps
    expected = ref.step(out, t, x, generator=torch.Generator().manual_seed(7)).prev_sample.numpy()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))  # what diffusers drew
    ab = Schedule().alphas_cumprod
    a_prev = ab[timesteps[index + 1]] if index + 1 < len(timesteps) else 1.0
    got = sampling.ddpm_step(_nhwc(x), _nhwc(eps), _nhwc(torch.tanh(var)) if learned else None,
                             jnp.float32(ab[t]), jnp.float32(a_prev), _nhwc(noise), index < len(timesteps) - 1)
    np.testing.assert_allclose(_nchw(got), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_step_equals_diffusers(eta):
    ref = DDIMScheduler(**DIT, clip_sample=False, set_alpha_to_one=True)
    ref.set_timesteps(50)
    ours = sampling_timesteps(1000, 50, "leading")
    np.testing.assert_array_equal(ours, ref.timesteps.numpy())
    x, eps, _ = _inputs(1)
    ab = Schedule().alphas_cumprod
    for index in (10, 49):
        t = int(ours[index])
        expected = ref.step(eps, t, x, eta=eta, generator=torch.Generator().manual_seed(3)).prev_sample.numpy()
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
        a_prev = ab[ours[index + 1]] if index + 1 < len(ours) else 1.0
        got = sampling.ddim_step(_nhwc(x), _nhwc(eps), jnp.float32(ab[t]), jnp.float32(a_prev), eta, _nhwc(noise))
        np.testing.assert_allclose(_nchw(got), expected, rtol=0, atol=1e-6)


def test_timestep_spacings():
    dit = sampling_timesteps(1000, 250, "dit")
    assert len(dit) == 250 and dit[0] == 999 and dit[-1] == 0 and list(dit[-3:]) == [8, 4, 0]
    ref = DDPMScheduler(**DIT, timestep_spacing="trailing")
    ref.set_timesteps(250)
    np.testing.assert_array_equal(sampling_timesteps(1000, 250, "trailing"), ref.timesteps.numpy())
    with pytest.raises(ConfigError, match="sample.steps"):
        sampling_timesteps(1000, 0)
    with pytest.raises(ConfigError, match="sample.spacing"):
        sampling_timesteps(1000, 10, "cosine")


def test_q_sample_equals_diffusers_add_noise():
    x, noise, _ = _inputs(2)
    t = torch.tensor([0, 999])
    expected = DDPMScheduler(**DIT).add_noise(x, noise, t).numpy()
    got = q_sample(Schedule(), _nhwc(x), jnp.asarray(t.numpy()), _nhwc(noise))
    # Not a sampler step: diffusers takes sqrt of its float32 alpha-bar (ours is float64, as DiT's),
    # which moves x_t at t = 999 by a few float32 ulps of the noise (measured 2.4e-6).
    np.testing.assert_allclose(_nchw(got), expected, rtol=0, atol=5e-6)


def test_sampler_is_per_sample_and_guidance_mixes_the_halves():
    """A batch's samples equal the same keys sampled one at a time; guidance at scale 1 is the
    conditional output and at scale s moves away from the unconditional one s times as far."""
    keys = jax.random.split(jax.random.key(0), 3)

    def denoise(x, t):  # a fixed, input-dependent stand-in for the model
        return 0.1 * x + 0.001 * t[:, None, None, None], None

    batch = sampling.sample(denoise, keys, (4, 4, 2), Schedule(), 10)
    single = sampling.sample(denoise, keys[1:2], (4, 4, 2), Schedule(), 10)
    np.testing.assert_allclose(np.asarray(batch[1:2]), np.asarray(single), rtol=0, atol=1e-6)
    assert float(jnp.abs(batch[0] - batch[1]).max()) > 0.1

    def both(x, t):  # conditional half -> 1, unconditional -> 0
        half = x.shape[0] // 2
        return jnp.concatenate([jnp.ones_like(x[:half]), jnp.zeros_like(x[half:])])
    eps, var = sampling.guided(both, 3.0, 2)(jnp.zeros((2, 4, 4, 2)), jnp.zeros((2,), jnp.int32))
    np.testing.assert_allclose(np.asarray(eps), 3.0)
    assert var is None
