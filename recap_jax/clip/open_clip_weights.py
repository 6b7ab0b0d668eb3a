"""Read a released open_clip CLIP stored as safetensors into our CLIP's params.

Layout: a folder with `open_clip_model.safetensors` (or `open_clip_pytorch_model.safetensors`)
and `open_clip_config.json` (`{"model_cfg": {"embed_dim", "vision_cfg", "text_cfg", ...}}`, as
on the model hub). Only the plain OpenAI-style ViT + causal text transformer is accepted (no timm
or HF towers, no attentional pooling); pickled `.bin` / `.pt` files are never read.
open_clip pools the text at the highest token id (the end-of-text token of CLIP's vocabulary),
fuses q/k/v into `in_proj_weight`, and multiplies by `visual.proj` / `text_projection` ([in, out]).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file

from recap_jax.clip.model import CLIPConfig, TowerConfig
from recap_jax.errors import ConversionError, ModelConfigError

WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors")
CONFIG_FILE = "open_clip_config.json"


def read_config(folder: str, dtype: Any = "float32") -> CLIPConfig:
    """Our `CLIPConfig` from `open_clip_config.json`'s model_cfg."""
    path = os.path.join(folder, CONFIG_FILE)
    if not os.path.exists(path):
        raise ModelConfigError(f"model.open_clip_dir: {path} is missing")
    with open(path) as f:
        data = json.load(f)
    cfg = data.get("model_cfg", data)
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    for key in ("timm_model_name", "attentional_pool", "global_average_pool"):
        if v.get(key):
            raise ModelConfigError(f"{CONFIG_FILE}: vision_cfg.{key} is not supported (plain ViT only)")
    if v.get("pool_type", "tok") != "tok" or v.get("final_ln_after_pool") or v.get("no_ln_pre"):
        raise ModelConfigError(f"{CONFIG_FILE}: vision_cfg pooling variants are not supported (class token only)")
    if t.get("hf_model_name") or t.get("pool_type", "argmax") != "argmax":
        raise ModelConfigError(f"{CONFIG_FILE}: text_cfg must be open_clip's own transformer pooled at argmax")
    width, vision_heads = int(v["width"]), int(v["width"]) // int(v.get("head_width", 64))
    text_width = int(t.get("width", 512))
    return CLIPConfig(
        image_size=int(v.get("image_size", 224)), patch_size=int(v["patch_size"]),
        vision=TowerConfig(width, int(v["layers"]), vision_heads, int(width * float(v.get("mlp_ratio", 4.0)))),
        text=TowerConfig(text_width, int(t.get("layers", 12)), int(t.get("heads", 8)),
                         int(text_width * float(t.get("mlp_ratio", 4.0)))),
        vocab_size=int(t.get("vocab_size", 49408)), text_context=int(t.get("context_length", 77)),
        embed_dim=int(cfg["embed_dim"]), pool_text_at_argmax=True,
        activation="quick_gelu" if cfg.get("quick_gelu") else "gelu",
        init_logit_scale=math.log(1 / 0.07), dtype=jnp.dtype(dtype))


def read_tensors(folder: str) -> dict[str, np.ndarray]:
    for name in WEIGHT_FILES:
        path = os.path.join(folder, name)
        if os.path.exists(path):
            return {k: np.asarray(v, np.float32) for k, v in load_file(path).items()}
    raise ConversionError(f"model.open_clip_dir: none of {WEIGHT_FILES} in {folder} (pickled checkpoints "
                          "are not read; save the state dict with safetensors)")


def _tower(w: dict[str, np.ndarray], prefix: str, tower: TowerConfig) -> dict[str, Any]:
    heads, head_dim = tower.heads, tower.width // tower.heads

    def ln(name):
        return {"norm": {"scale": w[f"{name}.weight"], "bias": w[f"{name}.bias"]}}

    blocks = {}
    for i in range(tower.depth):
        p = f"{prefix}.resblocks.{i}"
        q, k, v = np.split(w[f"{p}.attn.in_proj_weight"], 3)  # each [out, in]
        qb, kb, vb = np.split(w[f"{p}.attn.in_proj_bias"], 3)
        attn = {name: {"kernel": m.T.reshape(tower.width, heads, head_dim), "bias": b.reshape(heads, head_dim)}
                for name, m, b in (("query", q, qb), ("key", k, kb), ("value", v, vb))}
        attn["out"] = {"kernel": w[f"{p}.attn.out_proj.weight"].T.reshape(heads, head_dim, tower.width),
                       "bias": w[f"{p}.attn.out_proj.bias"]}
        blocks[f"block_{i}"] = {
            "ln1": ln(f"{p}.ln_1"), "ln2": ln(f"{p}.ln_2"), "attn": attn,
            "mlp": {"fc1": {"kernel": w[f"{p}.mlp.c_fc.weight"].T, "bias": w[f"{p}.mlp.c_fc.bias"]},
                    "fc2": {"kernel": w[f"{p}.mlp.c_proj.weight"].T, "bias": w[f"{p}.mlp.c_proj.bias"]}}}
    return blocks


def load_params(folder: str, cfg: CLIPConfig) -> dict[str, Any]:
    """Plain float32 numpy params for `CLIP(cfg)` from an open_clip safetensors folder."""
    w = read_tensors(folder)

    def ln(name):
        return {"norm": {"scale": w[f"{name}.weight"], "bias": w[f"{name}.bias"]}}

    try:
        params = {
            "image_tower": {
                "patch_embed": {"kernel": w["visual.conv1.weight"].transpose(2, 3, 1, 0)},
                "cls_token": w["visual.class_embedding"], "pos_embed": w["visual.positional_embedding"],
                "pre_norm": ln("visual.ln_pre"), "encoder": _tower(w, "visual.transformer", cfg.vision),
                "post_norm": ln("visual.ln_post"), "proj": {"kernel": w["visual.proj"]}},
            "text_tower": {
                "token_embed": {"embedding": w["token_embedding.weight"]}, "pos_embed": w["positional_embedding"],
                "encoder": _tower(w, "transformer", cfg.text), "final_norm": ln("ln_final"),
                "proj": {"kernel": w["text_projection"]}},
            "logit_scale": np.asarray(w["logit_scale"], np.float32).reshape(()),
        }
    except KeyError as e:
        raise ConversionError(f"model.open_clip_dir: {folder} is missing tensor {e}; is it an open_clip CLIP?") from None
    return params
