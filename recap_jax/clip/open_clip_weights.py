"""open_clip checkpoints (the hub layout: `open_clip_config.json` + `open_clip_model.safetensors`)
to and from our CLIP, through the converter's rules (`conversion/rules.py`, `conversion/tensors.py`).

open_clip stores torch `nn.MultiheadAttention` blocks (`attn.in_proj_weight` = q, k, v stacked),
`[in, out]` projection matrices (`visual.proj`, `text_projection`, used as `x @ proj`) and, for a
`CustomTextCLIP`, its text tower under `text.`. Supported: ViT image towers with CLS or average
pooling (with or without the pre-LayerNorm, post-LayerNorm before or after pooling: the OpenAI,
LAION, DataComp and CLIPA / Recap-CLIP configs) and the built-in text transformer (causal or
not, pooled at argmax / EOS / last). A config field we cannot represent raises ModelConfigError
naming it, before any tensor is read.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import jax
import numpy as np
from flax import linen as nn

from recap_jax.clip.model import CLIP, CLIPConfig, TowerConfig, init_params
from recap_jax.conversion.rules import (ParamRule, layer_norm_rules, params_from_plan, plan_params,
                                        tensors_from_params)
from recap_jax.conversion.tensors import CheckpointTensors
from recap_jax.errors import ConversionError, ModelConfigError

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"

# open_clip config values that our CLIP reproduces exactly; anything else is refused by name.
_VISION_DEFAULTS = dict(ls_init_value=None, patch_dropout=0.0, attentional_pool=False, pos_embed_type="learnable",
                        act_kwargs=None, norm_kwargs=None, block_type=None, qk_norm=False,
                        scaled_cosine_attn=False, scale_heads=False, scale_attn_inner=False, scale_attn=False,
                        scale_fc=False, timm_model_name=None, output_tokens=False)
_TEXT_DEFAULTS = dict(ls_init_value=None, embed_cls=False, final_ln_after_pool=False, proj_bias=False,
                      proj_type="linear", act_kwargs=None, norm_kwargs=None, block_type=None, qk_norm=False,
                      scaled_cosine_attn=False, scale_heads=False, scale_attn_inner=False, scale_attn=False,
                      scale_fc=False, hf_model_name=None, output_tokens=False)
_MODEL_DEFAULTS = dict(cast_dtype=None, init_logit_scale=math.log(1 / 0.07), nonscalar_logit_scale=False)
_IGNORED = {"hf_tokenizer_name", "tokenizer_mode", "tokenizer_kwargs", "pad_id", "hf_model_pretrained",
            "hf_proj_type", "hf_pooler_type", "timm_model_pretrained", "timm_pool", "timm_proj",
            "timm_proj_bias", "timm_drop", "timm_drop_path", "attn_pooler_queries", "attn_pooler_heads"}


def read_config(folder: str) -> dict:
    """The folder's open_clip_config.json (hub layout: {"model_cfg": ..., "preprocess_cfg": ...})."""
    path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isdir(folder):
        raise ConversionError(f"{folder}: not a folder (an open_clip folder with {CONFIG_FILE} + {WEIGHTS_FILE})")
    if not os.path.isfile(path):
        raise ConversionError(f"{folder}: no {CONFIG_FILE} (an open_clip hub folder is expected)")
    try:
        with open(path) as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_cfg", config), dict):
        raise ConversionError(f"{path}: no model_cfg object")
    return config


def _check_defaults(where: str, given: dict, defaults: dict, known: set) -> None:
    for key, value in given.items():
        if key in defaults and value != defaults[key] and not (value in (None, {}) and defaults[key] is None):
            raise ModelConfigError(f"{where}.{key}={value!r}: not supported by our CLIP (only {defaults[key]!r})")
        if key not in defaults and key not in known and key not in _IGNORED:
            raise ModelConfigError(f"{where}.{key}: an open_clip field this converter cannot map")


def clip_config_from_open_clip(model_cfg: dict, dtype: Any = None) -> CLIPConfig:
    """Our CLIPConfig for an open_clip `model_cfg`; ModelConfigError names a field we cannot map."""
    v, t = dict(model_cfg.get("vision_cfg") or {}), dict(model_cfg.get("text_cfg") or {})
    _check_defaults("model_cfg", {k: x for k, x in model_cfg.items() if k not in ("vision_cfg", "text_cfg")},
                    _MODEL_DEFAULTS, {"embed_dim", "quick_gelu", "custom_text", "init_logit_bias"})
    _check_defaults("model_cfg.vision_cfg", v, _VISION_DEFAULTS,
                    {"layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size", "no_ln_pre",
                     "final_ln_after_pool", "pool_type"})
    _check_defaults("model_cfg.text_cfg", t, _TEXT_DEFAULTS,
                    {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "no_causal_mask",
                     "pool_type", "eos_id"})
    for where, value in (("vision_cfg.layers", v.get("layers", 12)), ("vision_cfg.image_size", v.get("image_size", 224)),
                         ("vision_cfg.patch_size", v.get("patch_size", 16))):
        if not isinstance(value, int):
            raise ModelConfigError(f"model_cfg.{where}={value!r}: only a single int is supported (a ViT)")
    if v.get("pool_type", "tok") not in ("tok", "avg"):
        raise ModelConfigError(f"model_cfg.vision_cfg.pool_type={v['pool_type']!r}: only 'tok' or 'avg'")
    text_pool = t.get("pool_type", "argmax")
    if text_pool not in ("argmax", "eos", "last"):
        raise ModelConfigError(f"model_cfg.text_cfg.pool_type={text_pool!r}: only 'argmax', 'eos' or 'last'")
    width, text_width = int(v.get("width", 768)), int(t.get("width", 512))
    kw = {} if dtype is None else {"dtype": dtype}
    return CLIPConfig(
        image_size=int(v.get("image_size", 224)), patch_size=int(v.get("patch_size", 16)),
        vision=TowerConfig(width, int(v.get("layers", 12)), width // int(v.get("head_width", 64)),
                           int(width * float(v.get("mlp_ratio", 4.0)))),
        text=TowerConfig(text_width, int(t.get("layers", 12)), int(t.get("heads", 8)),
                         int(text_width * float(t.get("mlp_ratio", 4.0)))),
        vocab_size=int(t.get("vocab_size", 49408)), text_context=int(t.get("context_length", 77)),
        embed_dim=int(model_cfg["embed_dim"]), eos_token_id=int(t.get("eos_id", 2)),
        activation="quick_gelu" if model_cfg.get("quick_gelu") else "gelu",
        init_logit_scale=float(model_cfg.get("init_logit_scale", math.log(1 / 0.07))),
        use_logit_bias=model_cfg.get("init_logit_bias") is not None,
        init_logit_bias=float(model_cfg.get("init_logit_bias") or -10.0),
        text_pool=text_pool, text_causal=not t.get("no_causal_mask", False),
        image_pool="avg" if v.get("pool_type") == "avg" else "cls", image_ln_pre=not v.get("no_ln_pre", False),
        image_ln_after_pool=bool(v.get("final_ln_after_pool", False)), **kw)


def open_clip_model_cfg(cfg: CLIPConfig) -> dict:
    """The open_clip `model_cfg` of our CLIPConfig (the inverse of `clip_config_from_open_clip`)."""
    if cfg.activation not in ("gelu", "quick_gelu"):
        raise ModelConfigError(f"model.activation={cfg.activation!r}: open_clip has only gelu and quick_gelu")
    vision = dict(image_size=cfg.image_size, layers=cfg.vision.depth, width=cfg.vision.width,
                  head_width=cfg.vision.width // cfg.vision.heads, mlp_ratio=cfg.vision.mlp_dim / cfg.vision.width,
                  patch_size=cfg.patch_size)
    if not cfg.image_ln_pre:
        vision["no_ln_pre"] = True
    if cfg.image_pool == "avg":
        vision.update(pool_type="avg", final_ln_after_pool=cfg.image_ln_after_pool)
    pool = "argmax" if cfg.pool_text_at_argmax and cfg.text_pool == "eos" else cfg.text_pool
    text = dict(context_length=cfg.text_context, vocab_size=cfg.vocab_size, width=cfg.text.width,
                heads=cfg.text.heads, layers=cfg.text.depth, mlp_ratio=cfg.text.mlp_dim / cfg.text.width,
                pool_type=pool, no_causal_mask=not cfg.text_causal)
    if pool == "eos":
        text["eos_id"] = cfg.eos_token_id
    out = dict(embed_dim=cfg.embed_dim, quick_gelu=cfg.activation == "quick_gelu", vision_cfg=vision, text_cfg=text)
    if cfg.use_logit_bias:
        out["init_logit_bias"] = cfg.init_logit_bias
    return out


def renames(custom_text: bool) -> list[tuple[str, str]]:
    """open_clip state-dict prefixes -> canonical ("visual." / "text:" / top-level scalars)."""
    text = [("text.", "text:")] if custom_text else [
        (p, "text:" + p) for p in ("token_embedding.", "positional_embedding", "transformer.", "ln_final.",
                                   "text_projection")]
    return [("visual.", "visual."), *text, ("logit_scale", "logit_scale"), ("logit_bias", "logit_bias")]


def _block_rules(path: tuple[str, ...], layer: str) -> list[ParamRule]:
    """A scanned EncoderLayer stack from open_clip `ResidualAttentionBlock`s named `layer` ("...{i}.")."""
    rules = []
    for part in "qkv":
        rules += [ParamRule(path + (f"{part}_proj", "kernel"), f"{layer}attn.in_proj_weight", f"in_proj_{part}"),
                  ParamRule(path + (f"{part}_proj", "bias"), f"{layer}attn.in_proj_bias", f"in_proj_{part}_bias")]
    rules += [ParamRule(path + ("out_proj", "kernel"), f"{layer}attn.out_proj.weight", "heads_out"),
              ParamRule(path + ("out_proj", "bias"), f"{layer}attn.out_proj.bias", "same"),
              *layer_norm_rules(path + ("layer_norm1",), f"{layer}ln_1"),
              *layer_norm_rules(path + ("layer_norm2",), f"{layer}ln_2")]
    for ours, theirs in (("fc1", "c_fc"), ("fc2", "c_proj")):
        rules += [ParamRule(path + (ours, "kernel"), f"{layer}mlp.{theirs}.weight", "linear"),
                  ParamRule(path + (ours, "bias"), f"{layer}mlp.{theirs}.bias", "same")]
    return rules


def param_rules() -> list[ParamRule]:
    """Every CLIP parameter from canonical open_clip names (rules of absent params are skipped)."""
    vit, text = ("image_tower", "vit"), ("text_tower",)
    return [
        ParamRule(vit + ("patch_embedding", "kernel"), "visual.conv1.weight", "conv"),
        ParamRule(vit + ("class_embedding",), "visual.class_embedding", "same"),
        ParamRule(vit + ("position_embedding",), "visual.positional_embedding", "same"),
        *layer_norm_rules(vit + ("pre_layrnorm",), "visual.ln_pre"),
        *_block_rules(vit + ("layers",), "visual.transformer.resblocks.{i}."),
        *layer_norm_rules(("image_tower", "post_layernorm"), "visual.ln_post"),
        ParamRule(("image_tower", "proj", "kernel"), "visual.proj", "same"),
        ParamRule(text + ("token_embedding", "embedding"), "text:token_embedding.weight", "same"),
        ParamRule(text + ("position_embedding",), "text:positional_embedding", "same"),
        *_block_rules(text + ("layers",), "text:transformer.resblocks.{i}."),
        *layer_norm_rules(text + ("final_layer_norm",), "text:ln_final"),
        ParamRule(text + ("proj", "kernel"), "text:text_projection", "same"),
        ParamRule(("logit_scale",), "logit_scale", "scalar"),
        ParamRule(("logit_bias",), "logit_bias", "scalar"),
    ]


def load_open_clip(folder: str, dtype: Any = None) -> tuple[CLIPConfig, dict, dict]:
    """(our config, plain float32 params, the folder's open_clip config) of an open_clip hub folder.

    Config fields, tensor names and shapes are all checked before any tensor is read."""
    config = read_config(folder)
    model_cfg = config.get("model_cfg", config)
    cfg = clip_config_from_open_clip(model_cfg, dtype)
    if not os.path.isfile(os.path.join(folder, WEIGHTS_FILE)):
        raise ConversionError(f"{folder}: no {WEIGHTS_FILE} (only safetensors are read, never pickle)")
    tensors = CheckpointTensors().add_folder(folder, renames(bool(model_cfg.get("custom_text"))))
    shapes = nn.unbox(jax.eval_shape(lambda: init_params(CLIP(cfg), jax.random.key(0))))
    try:
        plan = plan_params(param_rules(), shapes, tensors)
    except ConversionError as e:
        raise ConversionError(f"{folder}: {e}") from None
    return cfg, params_from_plan(plan, tensors, np.float32), config


def open_clip_tensors(params: Any, custom_text: bool = False) -> dict[str, np.ndarray]:
    """Our (plain) params as an open_clip state dict (float32 numpy, open_clip's names)."""
    canonical = tensors_from_params(param_rules(), jax.device_get(params))
    back = [(new, old) for old, new in renames(custom_text)]
    out = {}
    for name, value in canonical.items():
        old, new = next((o, n) for o, n in sorted(back, key=lambda r: -len(r[0])) if name.startswith(o))
        out[new + name[len(old):]] = value.reshape(()) if name in ("logit_scale", "logit_bias") else value
    return out
