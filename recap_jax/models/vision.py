"""The one ViT of the project (CLIP's pre-LayerNorm layout) and its transformer block.

The captioner runs `VisionTower` for LLaVA's feature layer (hidden states, no pooling); CLIP's
image tower (`clip/model.py`) adds its pooling and projection on top, and CLIP's text tower stacks
the same `EncoderLayer` with a causal mask. Parameter names follow Hugging Face's CLIP, so the
converter's rules (`conversion/llava.py`) map checkpoints onto both.
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from recap_jax.models.config import VisionConfig
from recap_jax.models.layers import activation, logical_init

Dtype = Any


def layer_norm(eps: float, param_dtype: Dtype, name: str) -> nn.LayerNorm:
    """LayerNorm computed in float32 (the caller casts back to its compute dtype)."""
    return nn.LayerNorm(epsilon=eps, dtype=jnp.float32, param_dtype=param_dtype, name=name,
                        scale_init=logical_init(("embed",), nn.initializers.ones),
                        bias_init=logical_init(("embed",), nn.initializers.zeros))


class EncoderLayer(nn.Module):
    """Pre-layernorm transformer block with biased projections; `causal` for text towers."""
    num_heads: int
    mlp_dim: int
    hidden_act: str
    eps: float
    causal: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    init_stds: tuple[float, float, float] | None = None  # (q/k/v, fc1, out_proj/fc2); None: 0.02

    @nn.compact
    def __call__(self, x: jax.Array, _=None):
        hidden = x.shape[-1]
        head_dim = hidden // self.num_heads
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        attn_init, fc_init, out_init = (nn.initializers.normal(s) for s in (self.init_stds or (0.02,) * 3))

        h = layer_norm(self.eps, self.param_dtype, "layer_norm1")(x).astype(self.dtype)
        q, k, v = [nn.DenseGeneral((self.num_heads, head_dim), name=n, **dense,
                                   kernel_init=logical_init(("embed", "heads", "head_dim"), attn_init),
                                   bias_init=logical_init(("heads", "head_dim"), nn.initializers.zeros))(h)
                   for n in ("q_proj", "k_proj", "v_proj")]
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * head_dim**-0.5
        if self.causal:  # token i only sees tokens <= i
            length = x.shape[1]
            mask = jnp.tril(jnp.ones((length, length), dtype=bool))
            scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        attn = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
        attn = nn.DenseGeneral(hidden, axis=(-2, -1), name="out_proj", **dense,
                               kernel_init=logical_init(("heads", "head_dim", "embed"), out_init),
                               bias_init=logical_init(("embed",), nn.initializers.zeros))(attn)
        x = x + attn

        h = layer_norm(self.eps, self.param_dtype, "layer_norm2")(x).astype(self.dtype)
        h = nn.Dense(self.mlp_dim, name="fc1", **dense, kernel_init=logical_init(("embed", "mlp"), fc_init),
                     bias_init=logical_init(("mlp",), nn.initializers.zeros))(h)
        h = activation(self.hidden_act)(h)
        h = nn.Dense(hidden, name="fc2", **dense, kernel_init=logical_init(("mlp", "embed"), out_init),
                     bias_init=logical_init(("embed",), nn.initializers.zeros))(h)
        return x + h, None


def encoder_stack(num_layers: int, num_heads: int, mlp_dim: int, hidden_act: str, eps: float, *,
                  causal: bool = False, remat: bool = False, dtype: Dtype = jnp.float32,
                  param_dtype: Dtype = jnp.float32, name: str = "layers",
                  init_stds: tuple[float, float, float] | None = None) -> nn.Module:
    """`num_layers` EncoderLayers as one scanned module (params stacked on a leading "layers" axis)."""
    layer = nn.remat(EncoderLayer, prevent_cse=False) if remat else EncoderLayer
    stack = nn.scan(layer, variable_axes={"params": 0}, split_rngs={"params": True},
                    length=num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
    return stack(num_heads, mlp_dim, hidden_act, eps, causal, dtype, param_dtype, init_stds, name=name)


class VisionTower(nn.Module):
    """pixels [B, H, W, 3] (normalised) -> hidden states after `num_layers` blocks [B, 1 + N, D].

    `num_layers` is how many blocks run: LLaVA's feature layer decides it, so the blocks after
    the feature layer are neither stored nor computed. `embed_init_std` sets the init of the class
    and position embeddings (None: 0.02, as HF).
    """
    config: VisionConfig
    num_layers: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    embed_init_std: float | None = None
    remat: bool = False
    pre_norm: bool = True  # the LayerNorm before the blocks (CLIPA / open_clip `no_ln_pre` drop it)
    init_stds: tuple[float, float, float] | None = None  # of the blocks, see EncoderLayer

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        cfg = self.config
        patches = nn.Conv(cfg.hidden_size, (cfg.patch_size, cfg.patch_size),
                          strides=(cfg.patch_size, cfg.patch_size), padding="VALID", use_bias=False,
                          dtype=self.dtype, param_dtype=self.param_dtype, name="patch_embedding",
                          kernel_init=logical_init(("patch_h", "patch_w", "channels", "embed")))(
                              pixels.astype(self.dtype))
        batch = patches.shape[0]
        patches = patches.reshape(batch, -1, cfg.hidden_size)  # row-major patches, like HF
        embed_init = nn.initializers.normal(self.embed_init_std or 0.02)
        cls = self.param("class_embedding", logical_init(("embed",), embed_init), (cfg.hidden_size,),
                         self.param_dtype)
        pos = self.param("position_embedding", logical_init(("positions", "embed"), embed_init),
                         (cfg.num_patches + 1, cfg.hidden_size), self.param_dtype)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (batch, 1, cfg.hidden_size)),
                             patches], axis=1)
        x = x + pos.astype(self.dtype)
        if self.pre_norm:
            x = layer_norm(cfg.layer_norm_eps, self.param_dtype, "pre_layrnorm")(x)
        x = x.astype(self.dtype)
        if self.num_layers == 0:
            return x
        layers = encoder_stack(self.num_layers, cfg.num_heads, cfg.intermediate_size, cfg.hidden_act,
                               cfg.layer_norm_eps, remat=self.remat, dtype=self.dtype,
                               param_dtype=self.param_dtype, init_stds=self.init_stds)
        x, _ = layers(x, None)
        return x
