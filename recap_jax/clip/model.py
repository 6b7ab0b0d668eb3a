"""A two-tower CLIP in Flax linen: a ViT image tower and a causal text transformer.

The layout mirrors Hugging Face `CLIPModel` (pre-LayerNorm blocks, CLS pooling + post-LayerNorm
for images, final LayerNorm + EOS pooling for text, bias-free projections, a learned log
temperature `logit_scale`), so HF checkpoints load one-to-one (see `hf_weights.py`). SigLIP's
learned `logit_bias` is added when `use_logit_bias` is set (sigmoid loss).

Every parameter carries logical axis names (`nn.with_logical_partitioning`); the rules in
`recap_jax.parallel.mesh` map them onto the device mesh. Compute runs in `dtype` (bfloat16 on
TPU), parameters are stored in `param_dtype` (float32).
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
from recap_jax.models.config import VisionConfig
from recap_jax.models.layers import ACTIVATIONS, dtype_from_name, logical_init
from recap_jax.models.vision import VisionTower, encoder_stack, layer_norm

# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TowerConfig:
    """Size of one transformer tower."""
    width: int  # hidden size
    depth: int  # number of transformer blocks
    heads: int  # attention heads (width must be divisible by it)
    mlp_dim: int  # hidden size of the MLP inside each block


# Image towers: name -> (patch size, tower). Widths/depths are the standard ViT ones.
IMAGE_TOWERS: dict[str, tuple[int, TowerConfig]] = {
    "tiny/8": (8, TowerConfig(width=64, depth=2, heads=4, mlp_dim=128)),
    "S/16": (16, TowerConfig(width=384, depth=12, heads=6, mlp_dim=1536)),
    "B/32": (32, TowerConfig(width=768, depth=12, heads=12, mlp_dim=3072)),
    "B/16": (16, TowerConfig(width=768, depth=12, heads=12, mlp_dim=3072)),
    "L/14": (14, TowerConfig(width=1024, depth=24, heads=16, mlp_dim=4096)),
    "L/16": (16, TowerConfig(width=1024, depth=24, heads=16, mlp_dim=4096)),
    "H/14": (14, TowerConfig(width=1280, depth=32, heads=16, mlp_dim=5120)),
}

# Text towers. "B" is OpenAI CLIP's text tower (also used by ViT-B); "L" is the ViT-L/14 text
# tower; "H" the larger text tower used with big image towers (OpenCLIP ViT-H/14, Recap-CLIP L/16).
TEXT_TOWERS: dict[str, TowerConfig] = {
    "tiny": TowerConfig(width=64, depth=2, heads=4, mlp_dim=128),
    "B": TowerConfig(width=512, depth=12, heads=8, mlp_dim=2048),
    "L": TowerConfig(width=768, depth=12, heads=12, mlp_dim=3072),
    "H": TowerConfig(width=1024, depth=24, heads=16, mlp_dim=4096),
}


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """Everything that fixes the CLIP architecture (hashable: a static jit argument)."""
    image_size: int = 224
    patch_size: int = 16
    vision: TowerConfig = IMAGE_TOWERS["B/16"][1]
    text: TowerConfig = TEXT_TOWERS["B"]
    vocab_size: int = 49408
    text_context: int = 77  # maximum number of text tokens (positions)
    embed_dim: int = 512  # size of the shared image-text embedding space
    eos_token_id: int = 49407  # text pooling position: first occurrence of this token
    pool_text_at_argmax: bool = False  # HF legacy: pool at the highest token id instead
    # open_clip / CLIPA variants (`clip/open_clip_weights.py` maps open_clip's config onto these):
    text_pool: str = "eos"  # "eos" (first EOS), "argmax" (highest id, open_clip's default), "last"
    text_causal: bool = True  # False: every text token sees every other (CLIPA's `no_causal_mask`)
    image_pool: str = "cls"  # "cls" token or "avg" of the patch tokens (CLIPA's pool_type="avg")
    image_ln_pre: bool = True  # LayerNorm before the image blocks (False: open_clip's `no_ln_pre`)
    image_ln_after_pool: bool = False  # post-LayerNorm on the pooled vector, not on every token
    activation: str = "quick_gelu"  # "quick_gelu" (OpenAI CLIP), "gelu" (exact) or "gelu_tanh"
    layer_norm_eps: float = 1e-5
    init_logit_scale: float = math.log(1 / 0.07)  # log of the initial temperature inverse
    use_logit_bias: bool = False  # SigLIP: learned bias added to the logits
    init_logit_bias: float = -10.0
    dtype: Any = jnp.float32  # compute dtype
    param_dtype: Any = jnp.float32  # storage dtype of the parameters
    remat: bool = False  # recompute activations in the backward pass (saves memory)

    @property
    def pools_at_eos(self) -> bool:
        """Whether the text is pooled at the tokenizer's EOS id (which then has to match)."""
        return self.text_pool == "eos" and not self.pool_text_at_argmax


def config_from_dict(model_cfg: Any, vocab_size: int | None = None) -> CLIPConfig:
    """Builds a `CLIPConfig` from the `config.model` ConfigDict of a train/eval config.

    Every field is read, none has a fallback here (recap_jax/clip/defaults.py defines them once):
    image (a key of IMAGE_TOWERS), text (a key of TEXT_TOWERS), image_size, text_context,
    embed_dim, vocab_size (`vocab_size` overrides it), eos_token_id (the tokenizer's), activation,
    use_logit_bias, init_logit_scale, init_logit_bias, dtype, remat, and the `vision_overrides` /
    `text_overrides` dicts that change single tower fields.
    """
    def get(key: str) -> Any:
        if key not in model_cfg:
            raise ConfigError(f"model.{key}: missing (recap_jax/clip/defaults.py defines every model field)")
        return model_cfg[key]

    if get("image") not in IMAGE_TOWERS:
        raise ConfigError(f"model.image: {get('image')!r} is not one of {sorted(IMAGE_TOWERS)}")
    if get("text") not in TEXT_TOWERS:
        raise ConfigError(f"model.text: {get('text')!r} is not one of {sorted(TEXT_TOWERS)}")
    patch, vision = IMAGE_TOWERS[get("image")]
    text = TEXT_TOWERS[get("text")]
    vision = dataclasses.replace(vision, **dict(get("vision_overrides") or {}))
    text = dataclasses.replace(text, **dict(get("text_overrides") or {}))
    cfg = CLIPConfig(
        image_size=int(get("image_size")), patch_size=patch, vision=vision, text=text,
        vocab_size=int(vocab_size or get("vocab_size")),
        text_context=int(get("text_context")), embed_dim=int(get("embed_dim")),
        eos_token_id=int(get("eos_token_id")),
        activation=get("activation"),
        use_logit_bias=bool(get("use_logit_bias")),
        init_logit_scale=float(get("init_logit_scale")),
        init_logit_bias=float(get("init_logit_bias")),
        dtype=dtype_from_name(get("dtype")), remat=bool(get("remat")),
        # A converted open_clip / Recap-CLIP variant names these; absent or None: CLIP's own.
        **{k: model_cfg[k] for k in VARIANT_FIELDS if k in model_cfg and model_cfg[k] is not None})
    check_clip_config(cfg)
    return cfg


VARIANT_FIELDS = ("text_pool", "text_causal", "image_pool", "image_ln_pre", "image_ln_after_pool")
_CHOICES = {"text_pool": ("eos", "argmax", "last"), "image_pool": ("cls", "avg")}


def check_clip_config(cfg: CLIPConfig) -> None:
    """ConfigError naming the `model.*` field when the sizes do not fit together."""
    for field, choices in _CHOICES.items():
        if getattr(cfg, field) not in choices:
            raise ConfigError(f"model.{field}: {getattr(cfg, field)!r} is not one of {choices}")
    if cfg.image_size % cfg.patch_size:
        raise ConfigError(f"model.image_size: {cfg.image_size} is not a multiple of the patch size "
                         f"{cfg.patch_size}")
    for name, tower in (("vision", cfg.vision), ("text", cfg.text)):
        if tower.width % tower.heads:
            raise ConfigError(f"model.{name}: width {tower.width} is not divisible by heads {tower.heads}")
    if cfg.activation not in ACTIVATIONS:
        raise ConfigError(f"model.activation: {cfg.activation!r} is not one of {sorted(ACTIVATIONS)}")


# ---------------------------------------------------------------------------------------------
# Towers
# ---------------------------------------------------------------------------------------------

_dense_init = nn.initializers.normal(stddev=0.02)


def block_init_stds(tower: TowerConfig) -> tuple[float, float, float]:
    """OpenAI CLIP's init of a tower's blocks (q/k/v, fc1, out_proj/fc2 stds; open_clip's too).

    With a flat 0.02 a wide image tower starts with the CLS token barely attending to the patches:
    every image gets nearly the same embedding (cosine 0.9999 at width 256), and a short run
    collapses the text tower onto it (loss = ln batch)."""
    return tower.width**-0.5, (2 * tower.width)**-0.5, tower.width**-0.5 * (2 * tower.depth)**-0.5


def vision_config(cfg: CLIPConfig) -> VisionConfig:
    """The shared ViT's config for this CLIP's image tower."""
    v = cfg.vision
    return VisionConfig(hidden_size=v.width, intermediate_size=v.mlp_dim, num_layers=v.depth,
                        num_heads=v.heads, image_size=cfg.image_size, patch_size=cfg.patch_size,
                        layer_norm_eps=cfg.layer_norm_eps, hidden_act=cfg.activation)


class ImageTower(nn.Module):
    """The shared ViT (models/vision.py), then LN(CLS) -> projection."""
    cfg: CLIPConfig

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        """images: [batch, H, W, 3] normalised float -> unnormalised embeddings [batch, embed_dim]."""
        cfg, width = self.cfg, self.cfg.vision.width
        # OpenAI CLIP's init: CLS and positions ~ N(0, 1/width), so that where a patch sits is as
        # visible at the start as what it shows (with 0.02 the position signal starts ~10x weaker).
        x = VisionTower(vision_config(cfg), cfg.vision.depth, cfg.dtype, cfg.param_dtype,
                        embed_init_std=width**-0.5, remat=cfg.remat, pre_norm=cfg.image_ln_pre,
                        init_stds=block_init_stds(cfg.vision), name="vit")(images)
        post_norm = layer_norm(cfg.layer_norm_eps, cfg.param_dtype, "post_layernorm")
        if cfg.image_pool == "cls":  # LayerNorm acts per token: norm-then-pool = pool-then-norm
            pooled = post_norm(x[:, 0])
        elif cfg.image_ln_after_pool:
            pooled = post_norm(jnp.mean(x[:, 1:].astype(jnp.float32), axis=1))
        else:
            pooled = jnp.mean(post_norm(x[:, 1:]), axis=1)
        pooled = pooled.astype(cfg.dtype)
        return nn.Dense(cfg.embed_dim, use_bias=False, name="proj", dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                        kernel_init=logical_init(("embed", "proj"), nn.initializers.normal(width**-0.5)))(pooled)


class TextTower(nn.Module):
    """Causal transformer (the ViT's block, masked): tokens + positions -> blocks -> LN -> state at EOS -> projection."""
    cfg: CLIPConfig

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        """tokens: int [batch, length] (BOS ... EOS pad...) -> unnormalised embeddings [batch, embed_dim]."""
        cfg, tower = self.cfg, self.cfg.text
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        length = tokens.shape[1]
        if length > cfg.text_context:
            raise ConfigError(f"text of {length} tokens is longer than model.text_context={cfg.text_context}")
        x = nn.Embed(cfg.vocab_size, tower.width, name="token_embedding", **kw,
                     embedding_init=logical_init(("vocab", "embed"), _dense_init))(tokens)
        pos = self.param("position_embedding", logical_init(("positions", "embed"), _dense_init),
                         (cfg.text_context, tower.width), cfg.param_dtype)
        x = x + pos[:length].astype(cfg.dtype)
        x, _ = encoder_stack(tower.depth, tower.heads, tower.mlp_dim, cfg.activation, cfg.layer_norm_eps,
                             causal=cfg.text_causal, remat=cfg.remat, init_stds=block_init_stds(tower), **kw)(x, None)
        x = layer_norm(cfg.layer_norm_eps, cfg.param_dtype, "final_layer_norm")(x).astype(cfg.dtype)
        # Causal attention means the state at the end-of-text token has seen the whole caption.
        if cfg.text_pool == "last":
            eos_position = jnp.full(tokens.shape[:1], length - 1)
        elif cfg.pool_text_at_argmax or cfg.text_pool == "argmax":
            eos_position = jnp.argmax(tokens, axis=-1)
        else:  # first EOS (padding may reuse the EOS id)
            eos_position = jnp.argmax(tokens == cfg.eos_token_id, axis=-1)
        pooled = jnp.take_along_axis(x, eos_position[:, None, None], axis=1)[:, 0]
        return nn.Dense(cfg.embed_dim, use_bias=False, name="proj", **kw,
                        kernel_init=logical_init(("embed", "proj"), nn.initializers.normal(tower.width**-0.5)))(pooled)


class CLIP(nn.Module):
    """Two towers plus the learned temperature (and optional SigLIP bias).

    `__call__` returns L2-normalised float32 embeddings; `encode_image` / `encode_text` run one tower.
    """
    cfg: CLIPConfig

    def setup(self):
        self.image_tower = ImageTower(self.cfg)
        self.text_tower = TextTower(self.cfg)
        self.logit_scale = self.param(
            "logit_scale", logical_init((), nn.initializers.constant(self.cfg.init_logit_scale)),
            (), jnp.float32)
        if self.cfg.use_logit_bias:
            self.logit_bias = self.param(
                "logit_bias", logical_init((), nn.initializers.constant(self.cfg.init_logit_bias)),
                (), jnp.float32)

    def encode_image(self, images: jax.Array, normalize: bool = True) -> jax.Array:
        return _maybe_normalize(self.image_tower(images), normalize)

    def encode_text(self, tokens: jax.Array, normalize: bool = True) -> jax.Array:
        return _maybe_normalize(self.text_tower(tokens), normalize)

    def __call__(self, images: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.encode_image(images), self.encode_text(tokens)


def _maybe_normalize(x: jax.Array, normalize: bool) -> jax.Array:
    x = x.astype(jnp.float32)
    if not normalize:
        return x
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def init_params(model: CLIP, rng: jax.Array) -> Any:
    """Logically boxed params (use `nn.unbox` for plain arrays, `nn.get_partition_spec` for specs)."""
    cfg = model.cfg
    images = jnp.zeros((1, cfg.image_size, cfg.image_size, 3), jnp.float32)
    tokens = jnp.zeros((1, cfg.text_context), jnp.int32)
    return model.init(rng, images, tokens)["params"]


def count_params(params: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nn.unbox(params))))
