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
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

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
    activation: str = "quick_gelu"  # "quick_gelu" (OpenAI CLIP), "gelu" (exact) or "gelu_tanh"
    layer_norm_eps: float = 1e-5
    init_logit_scale: float = math.log(1 / 0.07)  # log of the initial temperature inverse
    use_logit_bias: bool = False  # SigLIP: learned bias added to the logits
    init_logit_bias: float = -10.0
    dtype: Any = jnp.float32  # compute dtype
    param_dtype: Any = jnp.float32  # storage dtype of the parameters
    remat: bool = False  # recompute activations in the backward pass (saves memory)


def _dtype(name: str | Any) -> Any:
    if not isinstance(name, str):
        return name
    try:
        return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]
    except KeyError:
        raise ValueError(f"model.dtype: unknown dtype {name!r}; use float32 or bfloat16") from None


def config_from_dict(model_cfg: Any, vocab_size: int | None = None) -> CLIPConfig:
    """Builds a `CLIPConfig` from the `config.model` ConfigDict of a train/eval config.

    Fields: image (a key of IMAGE_TOWERS), text (a key of TEXT_TOWERS), image_size, text_context,
    embed_dim, vocab_size, eos_token_id, activation, use_logit_bias, init_logit_scale,
    init_logit_bias, dtype, remat, and optional
    `vision_overrides` / `text_overrides` dicts to change single tower fields.
    """
    get = lambda k, d=None: model_cfg.get(k, d)  # noqa: E731
    if get("image") not in IMAGE_TOWERS:
        raise ValueError(f"model.image: {get('image')!r} is not one of {sorted(IMAGE_TOWERS)}")
    if get("text") not in TEXT_TOWERS:
        raise ValueError(f"model.text: {get('text')!r} is not one of {sorted(TEXT_TOWERS)}")
    patch, vision = IMAGE_TOWERS[get("image")]
    text = TEXT_TOWERS[get("text")]
    vision = dataclasses.replace(vision, **dict(get("vision_overrides") or {}))
    text = dataclasses.replace(text, **dict(get("text_overrides") or {}))
    cfg = CLIPConfig(
        image_size=int(get("image_size", 224)), patch_size=patch, vision=vision, text=text,
        vocab_size=int(vocab_size or get("vocab_size", 49408)),
        text_context=int(get("text_context", 77)), embed_dim=int(get("embed_dim", 512)),
        eos_token_id=int(get("eos_token_id", 49407)),
        activation=get("activation", "quick_gelu"),
        use_logit_bias=bool(get("use_logit_bias", False)),
        init_logit_scale=float(get("init_logit_scale", math.log(1 / 0.07))),
        init_logit_bias=float(get("init_logit_bias", -10.0)),
        dtype=_dtype(get("dtype", "float32")), remat=bool(get("remat", False)))
    validate(cfg)
    return cfg


def validate(cfg: CLIPConfig) -> None:
    if cfg.image_size % cfg.patch_size:
        raise ValueError(f"model.image_size: {cfg.image_size} is not a multiple of the patch size "
                         f"{cfg.patch_size}")
    for name, tower in (("vision", cfg.vision), ("text", cfg.text)):
        if tower.width % tower.heads:
            raise ValueError(f"model.{name}: width {tower.width} is not divisible by heads {tower.heads}")
    if cfg.activation not in _ACTIVATIONS:
        raise ValueError(f"model.activation: {cfg.activation!r} is not one of {sorted(_ACTIVATIONS)}")


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}

_dense_init = nn.initializers.normal(stddev=0.02)


def _param(module: nn.Module, name: str, init, shape, axes, dtype):
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


class LayerNorm(nn.Module):
    """LayerNorm whose scale/bias carry the logical axis "norm" (replicated)."""
    eps: float
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x):
        return nn.LayerNorm(
            epsilon=self.eps, dtype=self.dtype, param_dtype=self.param_dtype,
            scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
            name="norm")(x)


class Attention(nn.Module):
    """Multi-head self-attention; q/k/v kernels are (embed, heads, head_dim) for tensor parallelism."""
    heads: int
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, causal: bool) -> jax.Array:
        width = x.shape[-1]
        head_dim = width // self.heads

        def project(name):
            return nn.DenseGeneral(
                (self.heads, head_dim), dtype=self.dtype, param_dtype=self.param_dtype, name=name,
                kernel_init=nn.with_logical_partitioning(_dense_init, ("embed", "heads", "head_dim")),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("heads", "head_dim")))(x)

        q, k, v = project("query"), project("key"), project("value")  # [batch, length, heads, head_dim]
        q = q * head_dim**-0.5
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
        if causal:  # token i may only look at tokens <= i
            length = x.shape[1]
            mask = jnp.tril(jnp.ones((length, length), dtype=bool))
            logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
        # Softmax in float32 even under bfloat16 compute: it is the numerically fragile part.
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        return nn.DenseGeneral(
            width, axis=(-2, -1), dtype=self.dtype, param_dtype=self.param_dtype, name="out",
            kernel_init=nn.with_logical_partitioning(_dense_init, ("heads", "head_dim", "embed")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))(out)


class MLP(nn.Module):
    mlp_dim: int
    activation: str
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        h = nn.Dense(self.mlp_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="fc1",
                     kernel_init=nn.with_logical_partitioning(_dense_init, ("embed", "mlp")),
                     bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)))(x)
        h = _ACTIVATIONS[self.activation](h)
        return nn.Dense(width, dtype=self.dtype, param_dtype=self.param_dtype, name="fc2",
                        kernel_init=nn.with_logical_partitioning(_dense_init, ("mlp", "embed")),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))(h)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""
    tower: TowerConfig
    causal: bool
    activation: str
    eps: float
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = x + Attention(self.tower.heads, name="attn", **kw)(
            LayerNorm(self.eps, name="ln1", **kw)(x), causal=self.causal)
        x = x + MLP(self.tower.mlp_dim, self.activation, name="mlp", **kw)(
            LayerNorm(self.eps, name="ln2", **kw)(x))
        return x


class Encoder(nn.Module):
    tower: TowerConfig
    causal: bool
    activation: str
    eps: float
    dtype: Any
    param_dtype: Any
    remat: bool = False

    @nn.compact
    def __call__(self, x):
        block_cls = nn.remat(Block, static_argnums=()) if self.remat else Block
        for i in range(self.tower.depth):
            x = block_cls(self.tower, self.causal, self.activation, self.eps, self.dtype,
                          self.param_dtype, name=f"block_{i}")(x)
        return x


# ---------------------------------------------------------------------------------------------
# Towers
# ---------------------------------------------------------------------------------------------


class ImageTower(nn.Module):
    """ViT: patches -> [CLS] + patches + positions -> LN -> blocks -> LN(CLS) -> projection."""
    cfg: CLIPConfig

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        """images: [batch, H, W, 3] normalised float -> unnormalised embeddings [batch, embed_dim]."""
        cfg, width = self.cfg, self.cfg.vision.width
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        p = cfg.patch_size
        x = nn.Conv(width, (p, p), strides=(p, p), padding="VALID", use_bias=False, name="patch_embed",
                    kernel_init=nn.with_logical_partitioning(
                        _dense_init, ("patch_h", "patch_w", "channels", "embed")), **kw)(
                            images.astype(cfg.dtype))
        x = x.reshape(x.shape[0], -1, width)  # [batch, patches, width], row-major like HF
        # OpenAI CLIP's init: CLS and positions ~ N(0, 1/width), so that where a patch sits is as
        # visible at the start as what it shows (with 0.02 the position signal starts ~10x weaker).
        embed_init = nn.initializers.normal(stddev=width**-0.5)
        cls = _param(self, "cls_token", embed_init, (width,), ("embed",), cfg.param_dtype)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(cfg.dtype), (x.shape[0], 1, width)), x], axis=1)
        pos = _param(self, "pos_embed", embed_init, (x.shape[1], width), ("positions", "embed"),
                     cfg.param_dtype)
        x = x + pos.astype(cfg.dtype)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        x = LayerNorm(cfg.layer_norm_eps, name="pre_norm", **kw)(x)
        x = Encoder(cfg.vision, False, cfg.activation, cfg.layer_norm_eps, remat=cfg.remat,
                    name="encoder", **kw)(x)
        pooled = LayerNorm(cfg.layer_norm_eps, name="post_norm", **kw)(x[:, 0])
        return nn.Dense(cfg.embed_dim, use_bias=False, name="proj", **kw,
                        kernel_init=nn.with_logical_partitioning(_dense_init, ("embed", "proj")))(pooled)


class TextTower(nn.Module):
    """Causal transformer: tokens + positions -> blocks -> LN -> state at EOS -> projection."""
    cfg: CLIPConfig

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        """tokens: int [batch, length] (BOS ... EOS pad...) -> unnormalised embeddings [batch, embed_dim]."""
        cfg, width = self.cfg, self.cfg.text.width
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        length = tokens.shape[1]
        if length > cfg.text_context:
            raise ValueError(f"text of {length} tokens is longer than model.text_context={cfg.text_context}")
        embed = nn.Embed(cfg.vocab_size, width, name="token_embed", **kw,
                         embedding_init=nn.with_logical_partitioning(_dense_init, ("vocab", "embed")))
        x = embed(tokens)
        pos = _param(self, "pos_embed", _dense_init, (cfg.text_context, width), ("positions", "embed"),
                     cfg.param_dtype)
        x = x + pos[:length].astype(cfg.dtype)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        x = Encoder(cfg.text, True, cfg.activation, cfg.layer_norm_eps, remat=cfg.remat,
                    name="encoder", **kw)(x)
        x = LayerNorm(cfg.layer_norm_eps, name="final_norm", **kw)(x)
        # Causal attention means the state at the end-of-text token has seen the whole caption.
        if cfg.pool_text_at_argmax:
            eos_position = jnp.argmax(tokens, axis=-1)
        else:  # first EOS (padding may reuse the EOS id)
            eos_position = jnp.argmax(tokens == cfg.eos_token_id, axis=-1)
        pooled = jnp.take_along_axis(x, eos_position[:, None, None], axis=1)[:, 0]
        return nn.Dense(cfg.embed_dim, use_bias=False, name="proj", **kw,
                        kernel_init=nn.with_logical_partitioning(_dense_init, ("embed", "proj")))(pooled)


class CLIP(nn.Module):
    """Two towers plus the learned temperature (and optional SigLIP bias).

    `__call__` returns L2-normalised float32 embeddings; `encode_image` / `encode_text` run one tower.
    """
    cfg: CLIPConfig

    def setup(self):
        self.image_tower = ImageTower(self.cfg)
        self.text_tower = TextTower(self.cfg)
        self.logit_scale = self.param(
            "logit_scale", nn.with_logical_partitioning(
                nn.initializers.constant(self.cfg.init_logit_scale), ()), (), jnp.float32)
        if self.cfg.use_logit_bias:
            self.logit_bias = self.param(
                "logit_bias", nn.with_logical_partitioning(
                    nn.initializers.constant(self.cfg.init_logit_bias), ()), (), jnp.float32)

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
