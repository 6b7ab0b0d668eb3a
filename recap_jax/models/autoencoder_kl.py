"""The latent-diffusion KL autoencoder (`AutoencoderKL`: Stable Diffusion's and DiT's VAE) in Flax.

The layout is diffusers' `AutoencoderKL` (NHWC here, NCHW there), so its weights convert
name for name (`conversion/autoencoder_kl.py`):
- encoder: conv_in, down blocks (resnets, then a stride-2 conv padded right/bottom only, except
  the last block), mid block (resnet, single-head self-attention, resnet), GroupNorm, SiLU,
  conv_out to 2 x latent channels (mean and log-variance); `quant_conv` (1x1) after it;
- decoder: `post_quant_conv` (1x1), conv_in, mid block, up blocks of `layers_per_block + 1`
  resnets with nearest x2 upsampling and a conv (except the last), GroupNorm, SiLU, conv_out.
Every GroupNorm has eps 1e-6; the posterior's log-variance is clipped to [-30, 20] as diffusers does.
Images are float [-1, 1] NHWC; `scale_factor` (0.18215 for SD's KL-f8) scales latents for diffusion.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class AutoencoderKLConfig:
    """The fields of a diffusers `AutoencoderKL` config.json that shape the network."""
    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    shift_factor: float = 0.0
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    @property
    def downsample(self) -> int:
        """Pixels per latent side (8 for KL-f8)."""
        return 2 ** (len(self.block_out_channels) - 1)


def _norm(groups: int, name: str) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, epsilon=EPS, name=name)


def _conv(features: int, name: str, kernel: int = 3, stride: int = 1, padding="SAME") -> nn.Conv:
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding, name=name)


class ResnetBlock(nn.Module):
    """diffusers' ResnetBlock2D without a time embedding: norm, SiLU, conv, twice, plus a skip."""
    out_channels: int
    groups: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = _conv(self.out_channels, "conv1")(nn.silu(_norm(self.groups, "norm1")(x)))
        h = _conv(self.out_channels, "conv2")(nn.silu(_norm(self.groups, "norm2")(h)))
        if x.shape[-1] != self.out_channels:
            x = _conv(self.out_channels, "conv_shortcut", kernel=1, padding="VALID")(x)
        return x + h


class Attention(nn.Module):
    """The mid block's single-head self-attention over all positions, with a residual."""
    groups: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        t = _norm(self.groups, "group_norm")(x).reshape(b, h * w, c)
        q, k, v = (nn.Dense(c, name=n)(t) for n in ("to_q", "to_k", "to_v"))
        scores = jnp.einsum("bqc,bkc->bqk", q, k, preferred_element_type=jnp.float32) * c ** -0.5
        out = jnp.einsum("bqk,bkc->bqc", jax.nn.softmax(scores, axis=-1).astype(v.dtype), v)
        return x + nn.Dense(c, name="to_out_0")(out).reshape(b, h, w, c)


class MidBlock(nn.Module):
    channels: int
    groups: int
    attention: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = ResnetBlock(self.channels, self.groups, name="resnets_0")(x)
        if self.attention:
            x = Attention(self.groups, name="attentions_0")(x)
        return ResnetBlock(self.channels, self.groups, name="resnets_1")(x)


class Encoder(nn.Module):
    cfg: AutoencoderKLConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg, groups = self.cfg, self.cfg.norm_num_groups
        x = _conv(cfg.block_out_channels[0], "conv_in")(x)
        for i, channels in enumerate(cfg.block_out_channels):
            for j in range(cfg.layers_per_block):
                x = ResnetBlock(channels, groups, name=f"down_{i}_resnets_{j}")(x)
            if i < len(cfg.block_out_channels) - 1:
                # diffusers' Downsample2D with padding=0: pad one row/column at the end, then stride 2
                x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
                x = _conv(channels, f"down_{i}_downsample", stride=2, padding="VALID")(x)
        x = MidBlock(cfg.block_out_channels[-1], groups, cfg.mid_block_add_attention, name="mid")(x)
        x = nn.silu(_norm(groups, "conv_norm_out")(x))
        return _conv(2 * cfg.latent_channels, "conv_out")(x)


class Decoder(nn.Module):
    cfg: AutoencoderKLConfig

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        cfg, groups = self.cfg, self.cfg.norm_num_groups
        channels = tuple(reversed(cfg.block_out_channels))
        x = _conv(channels[0], "conv_in")(z)
        x = MidBlock(channels[0], groups, cfg.mid_block_add_attention, name="mid")(x)
        for i, out in enumerate(channels):
            for j in range(cfg.layers_per_block + 1):
                x = ResnetBlock(out, groups, name=f"up_{i}_resnets_{j}")(x)
            if i < len(channels) - 1:
                x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # nearest-neighbour x2
                x = _conv(out, f"up_{i}_upsample")(x)
        x = nn.silu(_norm(groups, "conv_norm_out")(x))
        return _conv(cfg.out_channels, "conv_out")(x)


class AutoencoderKL(nn.Module):
    """`moments(images)` -> (mean, logvar) of the posterior; `decode(latents)` -> images (unscaled)."""
    cfg: AutoencoderKLConfig

    def setup(self):
        c = self.cfg.latent_channels
        self.encoder = Encoder(self.cfg)
        self.decoder = Decoder(self.cfg)
        if self.cfg.use_quant_conv:
            self.quant_conv = _conv(2 * c, "quant_conv", kernel=1, padding="VALID")
        if self.cfg.use_post_quant_conv:
            self.post_quant_conv = _conv(c, "post_quant_conv", kernel=1, padding="VALID")

    def moments(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = self.encoder(images)
        if self.cfg.use_quant_conv:
            h = self.quant_conv(h)
        mean, logvar = jnp.split(h, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode(self, latents: jax.Array) -> jax.Array:
        if self.cfg.use_post_quant_conv:
            latents = self.post_quant_conv(latents)
        return self.decoder(latents)

    def __call__(self, images: jax.Array) -> jax.Array:
        """Reconstruction from the posterior mean (used to initialise every parameter)."""
        return self.decode(self.moments(images)[0])


def init_params(cfg: AutoencoderKLConfig, rng: jax.Array, image_size: int = 32) -> dict:
    return AutoencoderKL(cfg).init(rng, jnp.zeros((1, image_size, image_size, cfg.in_channels)))["params"]


def latent_shape(cfg: AutoencoderKLConfig, image_size: int) -> tuple[int, int, int]:
    if image_size % cfg.downsample:
        raise ValueError(f"image_size {image_size} is not a multiple of the autoencoder's downsampling "
                         f"{cfg.downsample}")
    side = image_size // cfg.downsample
    return side, side, cfg.latent_channels


def encode_scaled(module: AutoencoderKL, params, images: jax.Array, noise: jax.Array | None = None
                  ) -> jax.Array:
    """Scaled latents of images in [-1, 1]: the posterior mean, or a sample of it given `noise`
    (standard normal, latent-shaped), then `(z - shift) * scale` as diffusers pipelines do."""
    mean, logvar = module.apply({"params": params}, images, method=AutoencoderKL.moments)
    z = mean if noise is None else mean + jnp.exp(0.5 * logvar) * noise
    return (z - module.cfg.shift_factor) * module.cfg.scaling_factor


def decode_scaled(module: AutoencoderKL, params, latents: jax.Array) -> jax.Array:
    """Images (about [-1, 1]) from scaled latents."""
    z = latents / module.cfg.scaling_factor + module.cfg.shift_factor
    return module.apply({"params": params}, z, method=AutoencoderKL.decode)


def check_blocks(down: Sequence[str], up: Sequence[str]) -> None:
    """Only the plain VAE blocks are ported (what every KL-f8 checkpoint uses)."""
    bad = [b for b in down if b != "DownEncoderBlock2D"] + [b for b in up if b != "UpDecoderBlock2D"]
    if bad:
        raise ValueError(f"block types {sorted(set(bad))} are not supported (DownEncoderBlock2D / "
                         "UpDecoderBlock2D only)")
