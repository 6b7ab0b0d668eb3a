"""DiT: adaLN-Zero blocks are the identity at initialisation, shapes, sizes, the text mask."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from recap_jax.dit import model as dit


def tiny_cfg(**kw) -> dit.DiTConfig:
    base = dict(latent_shape=(8, 8, 4), patch_size=2, width=32, depth=2, heads=4, text_width=16, text_embed_dim=12)
    return dit.DiTConfig(**{**base, **kw})


def _inputs(cfg, batch=2, length=5, seed=0):
    r = np.random.default_rng(seed)
    x = jnp.asarray(r.normal(size=(batch, *cfg.latent_shape)), jnp.float32)
    c = jnp.asarray(r.normal(size=(batch, cfg.width)), jnp.float32)
    text = jnp.asarray(r.normal(size=(batch, length, cfg.text_width)), jnp.float32)
    mask = jnp.asarray(np.arange(length)[None] < np.array([[3], [5]])[:batch])
    pooled = jnp.asarray(r.normal(size=(batch, cfg.text_embed_dim)), jnp.float32)
    return x, c, text, mask, pooled


def test_block_is_identity_at_init_and_not_after_a_gate_moves():
    cfg = tiny_cfg()
    x, c, text, mask, _ = _inputs(cfg)
    h = x.reshape(2, -1, cfg.width // 2)[:, :, :cfg.width // 2]
    h = jnp.concatenate([h, h], axis=-1)  # [B, N, width]
    block = dit.DiTBlock(cfg)
    params = nn.unbox(block.init(jax.random.key(1), h, c, text, mask)["params"])
    apply = jax.jit(block.apply)
    out, _ = apply({"params": params}, h, c, text, mask)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(h))
    # The identity comes from the zero gates only: a non-zero modulation changes the output.
    moved = jax.tree.map(lambda a: a, params)
    moved["adaLN_modulation"]["bias"] = jnp.full_like(params["adaLN_modulation"]["bias"], 0.5)
    out2, _ = apply({"params": moved}, h, c, text, mask)
    assert float(jnp.abs(out2 - h).max()) > 1e-3


def test_model_output_is_zero_at_init_and_has_learned_variance_channels():
    cfg = tiny_cfg()
    x, _, text, mask, pooled = _inputs(cfg)
    model = dit.DiT(cfg)
    params = nn.unbox(dit.init_params(model, jax.random.key(0)))
    out = model.apply({"params": params}, x, jnp.array([3, 999]), text, mask, pooled)
    assert out.shape == (2, 8, 8, 8) and out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), 0.0)  # final layer zero-initialised (adaLN-Zero)
    no_sigma = dit.DiTConfig(**{**cfg.__dict__, "learn_sigma": False})
    params2 = nn.unbox(dit.init_params(dit.DiT(no_sigma), jax.random.key(0)))
    assert dit.DiT(no_sigma).apply({"params": params2}, x, jnp.array([3, 9]), text, mask, pooled).shape == (2, 8, 8, 4)


def _randomised(params, seed=3):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return treedef.unflatten([0.1 * jax.random.normal(k, a.shape) for k, a in zip(keys, leaves)])


def test_padding_is_masked_and_text_matters():
    cfg = tiny_cfg()
    x, _, text, mask, pooled = _inputs(cfg)
    model = dit.DiT(cfg)
    params = _randomised(nn.unbox(dit.init_params(model, jax.random.key(0))))
    t = jnp.array([10, 500])
    model = jax.jit(model.apply)  # one compile, five calls
    out = model({"params": params}, x, t, text, mask, pooled)
    # Changing padded token features (row 0 has 3 valid of 5) leaves the output unchanged ...
    text_pad = text.at[0, 3:].set(7.0)
    np.testing.assert_allclose(model({"params": params}, x, t, text_pad, mask, pooled), out, atol=1e-6)
    # ... changing a valid one does not; nor does the pooled embedding or the timestep.
    assert float(jnp.abs(model({"params": params}, x, t, text.at[0, 1].set(7.0), mask, pooled) - out).max()) > 1e-4
    assert float(jnp.abs(model({"params": params}, x, t, text, mask, pooled + 1) - out).max()) > 1e-4
    assert float(jnp.abs(model({"params": params}, x, t + 100, text, mask, pooled) - out).max()) > 1e-4


@pytest.mark.parametrize("size,patch,expected_millions", [("B", 4, 130.3), ("XL", 2, 675.1)])
def test_sizes_match_dit_paper_without_the_text_path(size, patch, expected_millions):
    width, depth, heads = dit.SIZES[size]
    cfg = dit.DiTConfig(latent_shape=(32, 32, 4), patch_size=patch, width=width, depth=depth, heads=heads,
                        text_width=768, text_embed_dim=768)
    shapes = nn.unbox(jax.eval_shape(lambda: dit.init_params(dit.DiT(cfg), jax.random.key(0))))
    blocks = shapes["blocks"]
    text_path = (dit.count_params(blocks["cross_attn"]) + dit.count_params(shapes["text_embed"])
                 + depth * 3 * width * width)  # the 3 extra adaLN chunks of the cross-attention
    # DiT's class-label table (1001 x width) is replaced by the text path; the rest is DiT's.
    dit_paper = dit.count_params(shapes) - text_path + 1001 * width
    assert abs(dit_paper / 1e6 - expected_millions) < 0.5, dit_paper


def test_sincos_positions_match_dit_layout():
    pos = dit.sincos_2d(8, (2, 3))
    assert pos.shape == (6, 8)
    # First half codes the column, second half the row (DiT's meshgrid(w, h) order).
    np.testing.assert_allclose(pos[1, :4], dit.sincos_1d(4, np.array([1]))[0])
    np.testing.assert_allclose(pos[3, 4:], dit.sincos_1d(4, np.array([1]))[0])
