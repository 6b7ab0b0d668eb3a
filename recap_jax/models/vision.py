"""CLIP ViT vision tower, as LLaVA uses it: hidden states of one layer, not the pooled output."""

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from recap_jax.models.config import VisionConfig

Dtype = Any


def _init(names, init=nn.initializers.normal(0.02)):
    return nn.with_logical_partitioning(init, names)


def activation(name: str):
    if name == "quick_gelu":
        return lambda x: x * jax.nn.sigmoid(1.702 * x)
    if name == "gelu":
        return lambda x: jax.nn.gelu(x, approximate=False)
    raise ValueError(f"unknown activation {name!r}")


class VisionEncoderLayer(nn.Module):
    """Pre-layernorm transformer block with biased projections."""
    config: VisionConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, _=None):
        cfg = self.config
        head_dim = cfg.hidden_size // cfg.num_heads
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        norm = dict(epsilon=cfg.layer_norm_eps, dtype=jnp.float32, param_dtype=self.param_dtype,
                    scale_init=_init(("embed",), nn.initializers.ones),
                    bias_init=_init(("embed",), nn.initializers.zeros))

        h = nn.LayerNorm(name="layer_norm1", **norm)(x).astype(self.dtype)
        qkv = [nn.DenseGeneral((cfg.num_heads, head_dim), name=n, **dense,
                               kernel_init=_init(("embed", "heads", "head_dim")),
                               bias_init=_init(("heads", "head_dim"), nn.initializers.zeros))(h)
               for n in ("q_proj", "k_proj", "v_proj")]
        q, k, v = qkv
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * head_dim**-0.5
        probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        attn = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
        attn = nn.DenseGeneral(cfg.hidden_size, axis=(-2, -1), name="out_proj", **dense,
                               kernel_init=_init(("heads", "head_dim", "embed")),
                               bias_init=_init(("embed",), nn.initializers.zeros))(attn)
        x = x + attn

        h = nn.LayerNorm(name="layer_norm2", **norm)(x).astype(self.dtype)
        h = nn.Dense(cfg.intermediate_size, name="fc1", **dense, kernel_init=_init(("embed", "mlp")),
                     bias_init=_init(("mlp",), nn.initializers.zeros))(h)
        h = activation(cfg.hidden_act)(h)
        h = nn.Dense(cfg.hidden_size, name="fc2", **dense, kernel_init=_init(("mlp", "embed")),
                     bias_init=_init(("embed",), nn.initializers.zeros))(h)
        return x + h, None


class VisionTower(nn.Module):
    """pixels [B, H, W, 3] (normalised) -> hidden states after `num_layers` blocks [B, 1 + N, D].

    `num_layers` is how many blocks run: LLaVA's feature layer decides it, so the blocks after
    the feature layer are neither stored nor computed.
    """
    config: VisionConfig
    num_layers: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        cfg = self.config
        patches = nn.Conv(cfg.hidden_size, (cfg.patch_size, cfg.patch_size),
                          strides=(cfg.patch_size, cfg.patch_size), padding="VALID", use_bias=False,
                          dtype=self.dtype, param_dtype=self.param_dtype, name="patch_embedding",
                          kernel_init=_init(("patch_h", "patch_w", "channels", "embed")))(
                              pixels.astype(self.dtype))
        batch = patches.shape[0]
        patches = patches.reshape(batch, -1, cfg.hidden_size)
        cls = self.param("class_embedding", _init(("embed",)), (cfg.hidden_size,), self.param_dtype)
        pos = self.param("position_embedding", _init(("positions", "embed")),
                         (cfg.num_patches + 1, cfg.hidden_size), self.param_dtype)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (batch, 1, cfg.hidden_size)),
                             patches], axis=1)
        x = x + pos.astype(self.dtype)
        x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=jnp.float32, param_dtype=self.param_dtype,
                         scale_init=_init(("embed",), nn.initializers.ones),
                         bias_init=_init(("embed",), nn.initializers.zeros), name="pre_layrnorm")(x)
        x = x.astype(self.dtype)
        if self.num_layers == 0:
            return x
        layers = nn.scan(VisionEncoderLayer, variable_axes={"params": 0}, split_rngs={"params": True},
                         length=self.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
        x, _ = layers(cfg, self.dtype, self.param_dtype, name="layers")(x, None)
        return x
