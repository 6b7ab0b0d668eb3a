"""Load a Hugging Face `CLIPModel` checkpoint folder (config.json + *.safetensors) into our CLIP.

Only safetensors are read (never pickled torch files). The mapping is one-to-one: HF
`vision_model.encoder.layers.{i}.self_attn.q_proj.weight` [out, in] becomes our
`image_tower/encoder/block_{i}/attn/query/kernel` [in, heads, head_dim], and so on.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from recap_jax.clip.model import CLIPConfig, TowerConfig, _dtype


def read_hf_config(hf_dir: str, dtype: str = "float32", remat: bool = False) -> CLIPConfig:
    """Our `CLIPConfig` from a HF CLIP `config.json`."""
    with open(os.path.join(hf_dir, "config.json")) as f:
        hf = json.load(f)
    if hf.get("model_type") not in ("clip", None):
        raise ValueError(f"model.hf_dir: {hf_dir} holds a {hf.get('model_type')!r} model, not a CLIP model")
    v, t = hf["vision_config"], hf["text_config"]
    # Defaults below are HF's CLIPVisionConfig / CLIPTextConfig defaults (used when a field is absent).
    act = v.get("hidden_act", "quick_gelu")
    if t.get("hidden_act", "quick_gelu") != act:
        raise ValueError("model.hf_dir: image and text towers use different activations; not supported")
    act = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}.get(act, act)
    eos = int(t.get("eos_token_id", 49407))
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
        dtype=_dtype(dtype), remat=remat)


def _read_safetensors(hf_dir: str) -> dict[str, np.ndarray]:
    files = sorted(f for f in os.listdir(hf_dir) if f.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"model.hf_dir: no *.safetensors file in {hf_dir} "
                                "(pickled .bin checkpoints are not read; convert them to safetensors)")
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        tensors.update(load_file(os.path.join(hf_dir, f)))
    # Some checkpoints prefix everything with the class name.
    return {k.removeprefix("clip."): v for k, v in tensors.items()}


def _tower_params(w: dict[str, np.ndarray], prefix: str, tower: TowerConfig) -> dict[str, Any]:
    heads, head_dim = tower.heads, tower.width // tower.heads

    def ln(name):
        return {"norm": {"scale": w[f"{name}.weight"], "bias": w[f"{name}.bias"]}}

    blocks = {}
    for i in range(tower.depth):
        p = f"{prefix}.encoder.layers.{i}"
        attn = {}
        for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
            kernel = w[f"{p}.self_attn.{theirs}.weight"].T  # torch Linear stores [out, in]
            attn[ours] = {"kernel": kernel.reshape(tower.width, heads, head_dim),
                          "bias": w[f"{p}.self_attn.{theirs}.bias"].reshape(heads, head_dim)}
        attn["out"] = {"kernel": w[f"{p}.self_attn.out_proj.weight"].T.reshape(heads, head_dim, tower.width),
                       "bias": w[f"{p}.self_attn.out_proj.bias"]}
        blocks[f"block_{i}"] = {
            "ln1": ln(f"{p}.layer_norm1"), "ln2": ln(f"{p}.layer_norm2"), "attn": attn,
            "mlp": {"fc1": {"kernel": w[f"{p}.mlp.fc1.weight"].T, "bias": w[f"{p}.mlp.fc1.bias"]},
                    "fc2": {"kernel": w[f"{p}.mlp.fc2.weight"].T, "bias": w[f"{p}.mlp.fc2.bias"]}}}
    return blocks


def load_hf_params(hf_dir: str, cfg: CLIPConfig) -> dict[str, Any]:
    """Plain (unboxed) float32 numpy params for `CLIP(cfg)` from a HF CLIPModel folder."""
    w = {k: np.asarray(v, dtype=np.float32) for k, v in _read_safetensors(hf_dir).items()}

    def ln(name):
        return {"norm": {"scale": w[f"{name}.weight"], "bias": w[f"{name}.bias"]}}

    try:
        image = {
            # torch conv weight [out, in, kh, kw] -> flax [kh, kw, in, out]
            "patch_embed": {"kernel": w["vision_model.embeddings.patch_embedding.weight"].transpose(2, 3, 1, 0)},
            "cls_token": w["vision_model.embeddings.class_embedding"],
            "pos_embed": w["vision_model.embeddings.position_embedding.weight"],
            "pre_norm": ln("vision_model.pre_layrnorm"),  # sic: HF's spelling
            "encoder": _tower_params(w, "vision_model", cfg.vision),
            "post_norm": ln("vision_model.post_layernorm"),
            "proj": {"kernel": w["visual_projection.weight"].T},
        }
        text = {
            "token_embed": {"embedding": w["text_model.embeddings.token_embedding.weight"]},
            "pos_embed": w["text_model.embeddings.position_embedding.weight"],
            "encoder": _tower_params(w, "text_model", cfg.text),
            "final_norm": ln("text_model.final_layer_norm"),
            "proj": {"kernel": w["text_projection.weight"].T},
        }
        params = {"image_tower": image, "text_tower": text,
                  "logit_scale": np.asarray(w["logit_scale"], np.float32).reshape(())}
    except KeyError as e:
        raise ValueError(f"model.hf_dir: {hf_dir} is missing tensor {e}; is it a CLIPModel checkpoint?") from None
    if cfg.use_logit_bias:
        params["logit_bias"] = np.asarray(w.get("logit_bias", cfg.init_logit_bias), np.float32).reshape(())
    return params
