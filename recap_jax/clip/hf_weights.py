"""Load a Hugging Face `CLIPModel` checkpoint folder (config.json + *.safetensors) into our CLIP.

Only safetensors are read (never pickled torch files), through the converter's machinery
(`conversion/tensors.py` names, `conversion/rules.py` rules): HF
`vision_model.encoder.layers.{i}.self_attn.q_proj.weight` [out, in] becomes row i of our
`image_tower/vit/layers/q_proj/kernel` [layers, in, heads, head_dim], and so on.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

import jax
import numpy as np
from flax import linen as nn

from recap_jax.clip.model import CLIP, VARIANT_FIELDS, CLIPConfig, TowerConfig, init_params
from recap_jax.conversion.rules import (ParamRule, encoder_layer_rules, layer_norm_rules, params_from_plan,
                                        plan_params, tensors_from_params, vision_tower_rules)
from recap_jax.conversion.tensors import CheckpointTensors
from recap_jax.errors import ConfigError, ConversionError
from recap_jax.models.layers import dtype_from_name


def read_hf_config(hf_dir: str, dtype: str = "float32", remat: bool = False) -> CLIPConfig:
    """Our `CLIPConfig` from a HF CLIP `config.json`."""
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"model.hf_dir: {hf_dir} has no config.json (a HF CLIPModel folder is expected)")
    with open(path) as f:
        hf = json.load(f)
    if hf.get("model_type") not in ("clip", None):
        raise ConfigError(f"model.hf_dir: {hf_dir} holds a {hf.get('model_type')!r} model, not a CLIP model")
    v, t = hf["vision_config"], hf["text_config"]
    # Defaults below are HF's CLIPVisionConfig / CLIPTextConfig defaults (used when a field is absent).
    act = v.get("hidden_act", "quick_gelu")
    if t.get("hidden_act", "quick_gelu") != act:
        raise ConfigError("model.hf_dir: image and text towers use different activations; not supported")
    act = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}.get(act, act)
    eos = int(t.get("eos_token_id", 49407))
    # Variants HF's CLIPModel lacks (open_clip / CLIPA models converted by `convert_clip`).
    variant = {k: v for k, v in (hf.get(VARIANT_KEY) or {}).items() if k in VARIANT_FIELDS + ("use_logit_bias",
                                                                                              "init_logit_bias")}
    return CLIPConfig(
        image_size=int(v.get("image_size", 224)), patch_size=int(v.get("patch_size", 32)),
        vision=TowerConfig(int(v.get("hidden_size", 768)), int(v.get("num_hidden_layers", 12)),
                           int(v.get("num_attention_heads", 12)), int(v.get("intermediate_size", 3072))),
        text=TowerConfig(int(t.get("hidden_size", 512)), int(t.get("num_hidden_layers", 12)),
                         int(t.get("num_attention_heads", 8)), int(t.get("intermediate_size", 2048))),
        vocab_size=int(t.get("vocab_size", 49408)),
        text_context=int(t.get("max_position_embeddings", 77)),
        embed_dim=int(hf.get("projection_dim", 512)),
        eos_token_id=eos,
        pool_text_at_argmax=(eos == 2),  # HF's legacy rule for configs written before the EOS fix
        activation=act,
        layer_norm_eps=float(v.get("layer_norm_eps", 1e-5)),
        init_logit_scale=float(hf.get("logit_scale_init_value", math.log(1 / 0.07))),
        dtype=dtype_from_name(dtype), remat=remat, **variant)


VARIANT_KEY = "recap_jax_clip"  # config.json entry with our CLIPConfig fields HF's CLIPModel lacks

# HF CLIPModel tensor names -> canonical names (some checkpoints prefix everything with "clip.").
CLIP_RENAMES = tuple((prefix + old, new) for prefix in ("", "clip.") for old, new in (
    ("vision_model.", "vision:"), ("text_model.", "text:"), ("visual_projection.", "visual_projection:"),
    ("text_projection.", "text_projection:"), ("logit_scale", "logit_scale"), ("logit_bias", "logit_bias")))

# Stored tensors our CLIP does not use (buffers, and SigLIP's bias when the config adds none).
_UNUSED = re.compile(r"(vision|text):embeddings\.position_ids|logit_bias")


def clip_param_rules() -> list[ParamRule]:
    """Rules of every `CLIP` parameter from a HF CLIPModel's canonical tensors."""
    image, text = ("image_tower",), ("text_tower",)
    return [
        *vision_tower_rules(image + ("vit",), "vision:"),
        *layer_norm_rules(image + ("post_layernorm",), "vision:post_layernorm"),
        ParamRule(image + ("proj", "kernel"), "visual_projection:weight", "linear"),
        ParamRule(text + ("token_embedding", "embedding"), "text:embeddings.token_embedding.weight", "same"),
        ParamRule(text + ("position_embedding",), "text:embeddings.position_embedding.weight", "same"),
        *encoder_layer_rules(text + ("layers",), "text:encoder.layers.{i}."),
        *layer_norm_rules(text + ("final_layer_norm",), "text:final_layer_norm"),
        ParamRule(text + ("proj", "kernel"), "text_projection:weight", "linear"),
        ParamRule(("logit_scale",), "logit_scale", "scalar"),
    ]


def load_hf_params(hf_dir: str, cfg: CLIPConfig) -> dict[str, Any]:
    """Plain (unboxed) float32 params for `CLIP(cfg)` from a HF CLIPModel folder (safetensors only).

    Names and shapes are checked before a tensor is read: a checkpoint that does not fit the
    config raises ConversionError naming the tensor."""
    tensors = CheckpointTensors().add_folder(hf_dir, CLIP_RENAMES)
    shapes = nn.unbox(jax.eval_shape(lambda: init_params(CLIP(cfg), jax.random.key(0))))
    try:
        plan = plan_params(clip_param_rules(), shapes, tensors, ignore=lambda n: bool(_UNUSED.fullmatch(n)))
    except ConversionError as e:
        raise ConversionError(f"model.hf_dir: {hf_dir}: {e}; is it a CLIPModel checkpoint of this size?") from None
    params = params_from_plan(plan, tensors, np.float32)
    if cfg.use_logit_bias:
        stored = tensors.info("logit_bias")
        bias = tensors.read("logit_bias") if stored else cfg.init_logit_bias
        params["logit_bias"] = np.asarray(bias, np.float32).reshape(())
    return params


def hf_config_dict(cfg: CLIPConfig) -> dict:
    """A HF CLIPModel config.json for `cfg`; fields HF lacks go under VARIANT_KEY (then only our
    loaders reproduce the model: transformers would pool and mask the HF way)."""
    act = {"gelu_tanh": "gelu_pytorch_tanh"}.get(cfg.activation, cfg.activation)
    tower = lambda t: dict(hidden_size=t.width, num_hidden_layers=t.depth, num_attention_heads=t.heads,  # noqa: E731
                           intermediate_size=t.mlp_dim, hidden_act=act, layer_norm_eps=cfg.layer_norm_eps)
    default = CLIPConfig()
    variant = {k: getattr(cfg, k) for k in VARIANT_FIELDS + ("use_logit_bias", "init_logit_bias")
               if getattr(cfg, k) != getattr(default, k)}
    out = dict(architectures=["CLIPModel"], model_type="clip", projection_dim=cfg.embed_dim,
               logit_scale_init_value=cfg.init_logit_scale,
               vision_config=dict(tower(cfg.vision), image_size=cfg.image_size, patch_size=cfg.patch_size),
               text_config=dict(tower(cfg.text), vocab_size=cfg.vocab_size, max_position_embeddings=cfg.text_context,
                                eos_token_id=cfg.eos_token_id))
    if variant:
        out[VARIANT_KEY] = variant
    return out


def hf_tensors(params: Any) -> dict[str, np.ndarray]:
    """Our (plain) params as HF CLIPModel tensors (float32 numpy; the inverse of `load_hf_params`)."""
    rules = clip_param_rules() + [ParamRule(("logit_bias",), "logit_bias", "scalar")]  # if the model has one
    canonical = tensors_from_params(rules, jax.device_get(params))
    back = sorted(((new, old) for old, new in CLIP_RENAMES[:6]), key=lambda r: -len(r[0]))
    out = {}
    for name, value in canonical.items():
        new, old = next((n, o) for n, o in back if name.startswith(n))
        out[old + name[len(new):]] = value
    return out
