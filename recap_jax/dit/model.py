"""DiT (Peebles & Xie, "Scalable Diffusion Models with Transformers") with text cross-attention.

    latents [B, H, W, C] -> patchify (p x p conv) + fixed 2-D sin-cos positions -> N blocks
      -> final adaLN layer -> linear -> unpatchify -> [B, H, W, C] epsilon (+ C variance channels)

Every block is DiT's adaLN-Zero block with a cross-attention sub-block between self-attention and
the MLP (the Recap-DiT paper's "cross-attention design"): the condition c = timestep embedding +
pooled text embedding gives each of the three sub-blocks a shift, a scale and a gate, all from one
zero-initialised linear layer, so every block is the identity at initialisation. The cross-attention
reads the frozen text encoder's token features, padding masked out.

Parameters carry logical axis names (`recap_jax.parallel.mesh` maps them to the mesh); the blocks
are one scanned module (parameters stacked on a leading "layers" axis).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from recap_jax.errors import ConfigError
from recap_jax.models.layers import activation, dtype_from_name, logical_init

# name -> (width, depth, heads), the DiT paper's Table 1; "tiny" is for tests and CPU runs.
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (64, 2, 4),
    "S": (384, 12, 6),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "XL": (1152, 28, 16),
}
PATCH_SIZES = (1, 2, 4, 8)


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    """Everything that fixes the DiT architecture (hashable: a static jit argument)."""
    latent_shape: tuple[int, int, int] = (32, 32, 4)  # (h, w, c) of the latents it denoises
    patch_size: int = 4
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    text_width: int = 512  # width of the text encoder's token features (cross-attention keys/values)
    text_embed_dim: int = 512  # size of its pooled embedding (added to the timestep embedding)
    learn_sigma: bool = True  # DiT's learned variance: C more output channels
    frequency_dim: int = 256  # sinusoidal timestep features before the timestep MLP
    dtype: Any = jnp.float32  # compute dtype
    param_dtype: Any = jnp.float32
    remat: bool = False

    @property
    def out_channels(self) -> int:
        return self.latent_shape[2] * (2 if self.learn_sigma else 1)

    @property
    def grid(self) -> tuple[int, int]:
        return self.latent_shape[0] // self.patch_size, self.latent_shape[1] // self.patch_size


def config_from_dict(model_cfg: Any, latent_shape: tuple[int, int, int], text_width: int,
                     text_embed_dim: int) -> DiTConfig:
    """A DiTConfig from `config.model` (size "B", patch 4, learn_sigma, dtype, remat) and the data."""
    if model_cfg.size not in SIZES:
        raise ConfigError(f"model.size: {model_cfg.size!r} is not one of {sorted(SIZES)}")
    if model_cfg.patch_size not in PATCH_SIZES:
        raise ConfigError(f"model.patch_size: {model_cfg.patch_size} is not one of {PATCH_SIZES}")
    h, w, _ = latent_shape
    if h % model_cfg.patch_size or w % model_cfg.patch_size:
        raise ConfigError(f"model.patch_size: {model_cfg.patch_size} does not divide the latents' "
                          f"{h}x{w} (data.dir's latents.json)")
    width, depth, heads = SIZES[model_cfg.size]
    return DiTConfig(latent_shape=tuple(int(s) for s in latent_shape), patch_size=int(model_cfg.patch_size),
                     width=width, depth=depth, heads=heads, text_width=int(text_width),
                     text_embed_dim=int(text_embed_dim), learn_sigma=bool(model_cfg.learn_sigma),
                     dtype=dtype_from_name(model_cfg.dtype), remat=bool(model_cfg.remat))


# ---------------------------------------------------------------------------------------------
# Fixed embeddings
# ---------------------------------------------------------------------------------------------


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """[len(positions), dim]: sines then cosines at frequencies 1 / 10000^(2i/dim) (DiT's)."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.outer(positions.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d(dim: int, grid: tuple[int, int]) -> np.ndarray:
    """[gh * gw, dim] fixed positions of a row-major patch grid: half the channels code the row,
    half the column (DiT's `get_2d_sincos_pos_embed`, for any grid shape)."""
    rows, cols = np.meshgrid(np.arange(grid[0]), np.arange(grid[1]), indexing="ij")
    return np.concatenate([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], axis=1).astype(np.float32)


def timestep_features(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """[B, dim] float32: cosines then sines of t at geometric frequencies (DiT's TimestepEmbedder)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------

# DiT initialises every linear layer Xavier-uniform over its (fan-in, fan-out), biases zero
# (DenseGeneral hands the initializer its kernel flattened to 2-D, so plain Xavier is right there).
_xavier = nn.initializers.xavier_uniform()
_zeros = nn.initializers.zeros


def _dense(features: int, names: tuple[str, str], cfg: DiTConfig, name: str,
           init: Any = nn.initializers.xavier_uniform()) -> nn.Dense:
    return nn.Dense(features, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name,
                    kernel_init=logical_init(names, init), bias_init=logical_init(names[1:], _zeros))


def plain_norm(name: str) -> nn.LayerNorm:
    """DiT's LayerNorm: no learned scale or bias (adaLN supplies them), eps 1e-6, float32."""
    return nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False, dtype=jnp.float32, name=name)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head attention of x over `context` (self-attention when context is x); `mask` [B, Lk]
    marks the context positions that may be attended to."""
    heads: int
    cfg: DiTConfig

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        cfg, width = self.cfg, x.shape[-1]
        head_dim = width // self.heads
        proj = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                    kernel_init=logical_init(("embed", "heads", "head_dim"), _xavier),
                    bias_init=logical_init(("heads", "head_dim"), _zeros))
        q = nn.DenseGeneral((self.heads, head_dim), name="query", **proj)(x)
        k = nn.DenseGeneral((self.heads, head_dim), name="key", **proj)(context)
        v = nn.DenseGeneral((self.heads, head_dim), name="value", **proj)(context)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * head_dim**-0.5
        if mask is not None:
            scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(cfg.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
        return nn.DenseGeneral(width, axis=(-2, -1), name="out", dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                               kernel_init=logical_init(("heads", "head_dim", "embed"), _xavier),
                               bias_init=logical_init(("embed",), _zeros))(out)


class Mlp(nn.Module):
    cfg: DiTConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.cfg
        h = _dense(int(cfg.width * cfg.mlp_ratio), ("embed", "mlp"), cfg, "fc1")(x)
        h = activation("gelu_tanh")(h)  # DiT: GELU, tanh approximation
        return _dense(cfg.width, ("mlp", "embed"), cfg, "fc2")(h)


class DiTBlock(nn.Module):
    """adaLN-Zero block: self-attention, cross-attention to the text, MLP; each sub-block's input is
    normalised, shifted and scaled by c, and its output gated by c (gates start at zero)."""
    cfg: DiTConfig

    @nn.compact
    def __call__(self, x: jax.Array, c: jax.Array, text: jax.Array, text_mask: jax.Array):
        cfg = self.cfg
        mod = _dense(9 * cfg.width, ("embed", "mlp"), cfg, "adaLN_modulation", _zeros)(nn.silu(c))
        (shift_sa, scale_sa, gate_sa, shift_ca, scale_ca, gate_ca,
         shift_mlp, scale_mlp, gate_mlp) = jnp.split(mod.astype(jnp.float32), 9, axis=-1)

        def sub_block(x, layer, shift, scale, gate, norm_name):
            h = modulate(plain_norm(norm_name)(x), shift, scale).astype(cfg.dtype)
            return x + gate[:, None] * layer(h).astype(jnp.float32)

        x = sub_block(x, lambda h: Attention(cfg.heads, cfg, name="attn")(h, h),
                      shift_sa, scale_sa, gate_sa, "norm1")
        x = sub_block(x, lambda h: Attention(cfg.heads, cfg, name="cross_attn")(h, text, text_mask),
                      shift_ca, scale_ca, gate_ca, "norm2")
        x = sub_block(x, Mlp(cfg, name="mlp"), shift_mlp, scale_mlp, gate_mlp, "norm3")
        return x, None


class FinalLayer(nn.Module):
    """adaLN (shift, scale; zero-initialised) then a zero-initialised linear to the patch pixels."""
    cfg: DiTConfig

    @nn.compact
    def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
        cfg = self.cfg
        mod = _dense(2 * cfg.width, ("embed", "mlp"), cfg, "adaLN_modulation", _zeros)(nn.silu(c))
        shift, scale = jnp.split(mod.astype(jnp.float32), 2, axis=-1)
        x = modulate(plain_norm("norm_final")(x), shift, scale).astype(cfg.dtype)
        return _dense(cfg.patch_size**2 * cfg.out_channels, ("embed", "channels"), cfg, "linear", _zeros)(x)


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


class DiT(nn.Module):
    """(noisy latents, timesteps, text token features, their mask, pooled text) -> float32 output
    [B, H, W, C] (epsilon) or [B, H, W, 2C] (epsilon, then DiT's variance interpolation in [-1, 1])."""
    cfg: DiTConfig

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, text: jax.Array, text_mask: jax.Array,
                 pooled: jax.Array) -> jax.Array:
        cfg, p = self.cfg, self.cfg.patch_size
        patch_init = nn.initializers.xavier_uniform(in_axis=(0, 1, 2), out_axis=3)
        h = nn.Conv(cfg.width, (p, p), strides=(p, p), padding="VALID", dtype=cfg.dtype,
                    param_dtype=cfg.param_dtype, name="patch_embed",
                    kernel_init=logical_init(("patch_h", "patch_w", "channels", "embed"), patch_init),
                    bias_init=logical_init(("embed",), _zeros))(x.astype(cfg.dtype))
        batch = h.shape[0]
        h = h.reshape(batch, -1, cfg.width).astype(jnp.float32) + sincos_2d(cfg.width, cfg.grid)[None]

        normal = nn.initializers.normal(0.02)  # DiT's init of the timestep (and label) embedders
        c = _dense(cfg.width, ("channels", "embed"), cfg, "t_embed_1", normal)(
            timestep_features(t, cfg.frequency_dim).astype(cfg.dtype))
        c = _dense(cfg.width, ("mlp", "embed"), cfg, "t_embed_2", normal)(nn.silu(c))
        c = c + _dense(cfg.width, ("channels", "embed"), cfg, "text_embed", normal)(pooled.astype(cfg.dtype))
        text = text.astype(cfg.dtype)

        block = nn.remat(DiTBlock, prevent_cse=False) if cfg.remat else DiTBlock
        blocks = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                         in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=cfg.depth,
                         metadata_params={nn.PARTITION_NAME: "layers"})
        h, _ = blocks(cfg, name="blocks")(h, c, text, text_mask)
        out = FinalLayer(cfg, name="final")(h, c).astype(jnp.float32)
        return unpatchify(out, cfg)


def unpatchify(x: jax.Array, cfg: DiTConfig) -> jax.Array:
    """[B, gh * gw, p * p * C] -> [B, gh * p, gw * p, C]."""
    (gh, gw), p, channels = cfg.grid, cfg.patch_size, cfg.out_channels
    x = x.reshape(x.shape[0], gh, gw, p, p, channels)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(x.shape[0], gh * p, gw * p, channels)


def init_params(model: DiT, rng: jax.Array, text_length: int = 8) -> Any:
    """Logically boxed params (`nn.unbox` for arrays, `nn.get_partition_spec` for their specs)."""
    cfg = model.cfg
    return model.init(rng, jnp.zeros((1, *cfg.latent_shape), jnp.float32), jnp.zeros((1,), jnp.int32),
                      jnp.zeros((1, text_length, cfg.text_width), jnp.float32),
                      jnp.ones((1, text_length), bool), jnp.zeros((1, cfg.text_embed_dim), jnp.float32))["params"]


def count_params(params: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nn.unbox(params))))
