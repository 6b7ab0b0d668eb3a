"""LLaVA-1.5: CLIP vision features -> 2-layer GELU projector -> LLaMA, image tokens at `<image>`.

The prompt's `<image>` placeholder is expanded on the host into `num_image_tokens` copies of the
image token id (as llava-hf processors do), so merging is a static-shape `where`: the k-th image
token of a row takes the k-th projected patch feature of that row's image.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from recap_jax.models.attention import KVCache
from recap_jax.models.config import LlavaConfig
from recap_jax.models.layers import logical_init
from recap_jax.models.llama import LlamaDecoder
from recap_jax.models.vision import VisionTower

Dtype = Any


class Projector(nn.Module):
    """linear_1 -> GELU -> linear_2 (LLaVA's `mlp2x_gelu`)."""
    out_features: int
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dense = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                     bias_init=logical_init(("embed",), nn.initializers.zeros))
        x = nn.Dense(self.out_features, name="linear_1", kernel_init=logical_init(("vision_embed", "embed")),
                     **dense)(x)
        x = jax.nn.gelu(x, approximate=False)
        return nn.Dense(self.out_features, name="linear_2", kernel_init=logical_init(("mlp", "embed")), **dense)(x)


def merge_image_features(text_embeds: jax.Array, image_features: jax.Array,
                         is_image_token: jax.Array) -> jax.Array:
    """Put row b's image features, in order, where row b has image tokens.

    text_embeds [B, S, D], image_features [B, N, D], is_image_token [B, S] (N True per row).
    """
    index = jnp.clip(jnp.cumsum(is_image_token, axis=1) - 1, 0, image_features.shape[1] - 1)
    gathered = jnp.take_along_axis(image_features, index[..., None], axis=1)
    return jnp.where(is_image_token[..., None], gathered.astype(text_embeds.dtype), text_embeds)


class LlavaModel(nn.Module):
    config: LlavaConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: str = "none"  # decoder-layer checkpointing for training (llama.REMAT_CHOICES)
    scan_layers: bool = True  # False: the decoder's layers unrolled (LlamaDecoder)
    head_columns: int = 0  # > 0: the LM head computed this many columns at a time (LlamaDecoder)
    split_layers: bool = False  # per-layer decoder params (LlamaDecoder; models.llama.split_layer_params)
    attention: Callable | None = None  # the decode attention (LlamaDecoder); None: XLA's

    def setup(self):
        cfg = self.config
        self.vision_tower = VisionTower(cfg.vision, cfg.num_vision_layers_used, self.dtype, self.param_dtype)
        self.multi_modal_projector = Projector(cfg.text.hidden_size, cfg.projector_bias, self.dtype,
                                               self.param_dtype)
        self.language_model = LlamaDecoder(cfg.text, self.dtype, self.param_dtype, self.remat,
                                           self.scan_layers, self.head_columns, self.split_layers,
                                           self.attention)

    def encode_images(self, pixels: jax.Array) -> jax.Array:
        """pixels [B, H, W, 3] -> projected image features [B, num_image_tokens, D_text]."""
        features = self.vision_tower(pixels)
        if self.config.vision_feature_select_strategy == "default":
            features = features[:, 1:]  # drop CLS
        return self.multi_modal_projector(features)

    def embed_prompt(self, token_ids: jax.Array, pixels: jax.Array) -> jax.Array:
        is_image = token_ids == self.config.image_token_id
        # The image token id may lie outside the text vocabulary; its embedding is replaced anyway.
        safe_ids = jnp.where(is_image, 0, token_ids)
        embeds = self.language_model.embed(safe_ids)
        return merge_image_features(embeds, self.encode_images(pixels), is_image)

    def prefill(self, token_ids: jax.Array, pixels: jax.Array, lengths: jax.Array
                ) -> tuple[jax.Array, KVCache]:
        """Right-padded prompts [B, S] with their images -> (logits of each row's last prompt
        token [B, V], K/V of all prompt positions [L, B, S, KVH, Dh])."""
        positions = jnp.broadcast_to(jnp.arange(token_ids.shape[1]), token_ids.shape)
        hidden, kv = self.language_model.prefill(self.embed_prompt(token_ids, pixels), positions)
        last = jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1)[:, 0]
        return self.language_model.logits(last), kv

    def decode(self, token_ids: jax.Array, positions: jax.Array, cache: KVCache, column: jax.Array
               ) -> tuple[jax.Array, KVCache]:
        """One new token per row [B] at positions [B], its K/V written to cache `column` (a ring:
        LlamaDecoder.decode) -> (next-token logits [B, V], cache)."""
        embeds = self.language_model.embed(token_ids[:, None])
        return self.language_model.decode(embeds, positions, cache, column)

    def __call__(self, token_ids: jax.Array, pixels: jax.Array) -> jax.Array:
        """Logits at every prompt position [B, S, V] (init, parity tests)."""
        positions = jnp.broadcast_to(jnp.arange(token_ids.shape[1]), token_ids.shape)
        hidden, _ = self.language_model.prefill(self.embed_prompt(token_ids, pixels), positions)
        return self.language_model.logits(hidden)

    def normed_hidden(self, token_ids: jax.Array, pixels: jax.Array) -> jax.Array:
        """The LM head's input at every prompt position [B, S, D]: `head` of it = `__call__`."""
        positions = jnp.broadcast_to(jnp.arange(token_ids.shape[1]), token_ids.shape)
        hidden, _ = self.language_model.prefill(self.embed_prompt(token_ids, pixels), positions)
        return self.language_model.final_norm(hidden)

    def head(self, normed: jax.Array) -> jax.Array:
        """Normed hidden states [..., D] -> float32 logits [..., V]."""
        return self.language_model.head(normed)
