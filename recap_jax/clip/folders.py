"""`convert_clip`'s two directions, as whole folders written atomically.

- open_clip hub folder -> a converted folder: a HF CLIPModel layout (`config.json` +
  `model.safetensors`, our CLIPConfig fields HF lacks under `recap_jax_clip`, the source's
  open_clip config kept under `open_clip_config`) that `model.hf_dir` of train_clip,
  eval_retrieval and eval_suite reads; `tokenizer` files are copied in when given.
- a train_clip workdir (its latest step) or a converted folder -> an open_clip hub folder
  (`open_clip_config.json` + `open_clip_model.safetensors`) that `open_clip` loads.

Everything is read and checked before anything is written; the output is written to a temporary
folder beside DEST and renamed at the end, so a failure leaves no DEST.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import numpy as np

from recap_jax.clip import hf_weights, open_clip_weights
from recap_jax.clip.model import CLIPConfig
from recap_jax.conversion.atomic import write_atomically
from recap_jax.errors import ConfigError, ConversionError

MODEL_FILE = "model.safetensors"
OPEN_CLIP_KEY = "open_clip_config"  # the source's open_clip_config.json, kept for the way back
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "vocab.txt", "added_tokens.json")
# open_clip's preprocessing of OpenAI-style models (the CLIP normalisation our evaluation uses).
CLIP_PREPROCESS = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
                   "interpolation": "bicubic", "resize_mode": "shortest"}


def _save_tensors(tensors: dict[str, np.ndarray], path: str) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path, metadata={"format": "pt"})


def _tokenizer_files(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        raise ConfigError(f"--tokenizer {folder}: not a folder (a HF tokenizer folder is expected)")
    files = [f for f in TOKENIZER_FILES if os.path.isfile(os.path.join(folder, f))]
    if not files:
        raise ConfigError(f"--tokenizer {folder}: none of {list(TOKENIZER_FILES[:3])} in it")
    return [os.path.join(folder, f) for f in files]


def from_open_clip(src: str, dest: str, tokenizer: str | None = None) -> CLIPConfig:
    """open_clip hub folder `src` -> converted folder `dest`; returns the model's config."""
    cfg, params, config = open_clip_weights.load_open_clip(src)
    copies = _tokenizer_files(tokenizer) if tokenizer else []
    hf_config = dict(hf_weights.hf_config_dict(cfg), **{OPEN_CLIP_KEY: config})
    tensors = hf_weights.hf_tensors(params)

    def fill(tmp: str) -> None:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(hf_config, f, indent=2)
        _save_tensors(tensors, os.path.join(tmp, MODEL_FILE))
        for path in copies:
            shutil.copy(path, tmp)

    write_atomically(dest, fill)
    return cfg


def _read_converted(src: str) -> tuple[CLIPConfig, Any, dict | None]:
    cfg = hf_weights.read_hf_config(src)
    with open(os.path.join(src, "config.json")) as f:
        stored = json.load(f).get(OPEN_CLIP_KEY)
    return cfg, hf_weights.load_hf_params(src, cfg), stored


def _read_workdir(src: str) -> tuple[CLIPConfig, Any, dict | None]:
    import ml_collections

    from recap_jax.clip import data as data_lib, model_loading  # jax + transformers: only a workdir needs them
    from recap_jax.parallel.mesh import make_mesh

    with open(os.path.join(src, "config.json")) as f:
        run = ml_collections.ConfigDict(json.load(f))
    model, _ = model_loading.build_model(run.model, data_lib.Tokenizer(run.data.tokenizer))
    params, _ = model_loading.latest_params(src, model, make_mesh({"data": -1, "fsdp": 1, "tensor": 1}))
    stored = None
    if run.model.get("hf_dir") and os.path.isfile(os.path.join(run.model.hf_dir, "config.json")):
        with open(os.path.join(run.model.hf_dir, "config.json")) as f:
            stored = json.load(f).get(OPEN_CLIP_KEY)  # a fine-tune of a converted open_clip model
    return model.cfg, params, stored


def read_ours(src: str) -> tuple[CLIPConfig, Any, dict | None]:
    """(config, params, the open_clip config it came from or None) of a workdir or converted folder."""
    if not os.path.isdir(src):
        raise ConversionError(f"SRC {src}: not a folder (a train_clip workdir or a converted CLIP folder)")
    if os.path.isdir(os.path.join(src, "checkpoints")) and os.path.isfile(os.path.join(src, "config.json")):
        return _read_workdir(src)
    if os.path.isfile(os.path.join(src, "config.json")):
        return _read_converted(src)
    raise ConversionError(f"SRC {src}: neither a train_clip workdir (config.json + checkpoints/) nor a "
                          "converted CLIP folder (config.json + model.safetensors)")


def to_open_clip(src: str, dest: str) -> CLIPConfig:
    """Workdir or converted folder `src` -> open_clip hub folder `dest`; returns the model's config."""
    cfg, params, stored = read_ours(src)
    model_cfg = open_clip_weights.open_clip_model_cfg(cfg)
    if stored and open_clip_weights.clip_config_from_open_clip(stored.get("model_cfg", stored)) == \
            open_clip_weights.clip_config_from_open_clip(model_cfg):
        config = stored  # the same architecture: keep the source's config (tokenizer, preprocessing) verbatim
    else:
        config = {"model_cfg": model_cfg, "preprocess_cfg": CLIP_PREPROCESS}
    custom_text = bool(config.get("model_cfg", config).get("custom_text"))
    tensors = open_clip_weights.open_clip_tensors(params, custom_text)

    def fill(tmp: str) -> None:
        with open(os.path.join(tmp, open_clip_weights.CONFIG_FILE), "w") as f:
            json.dump(config, f, indent=2)
        _save_tensors(tensors, os.path.join(tmp, open_clip_weights.WEIGHTS_FILE))

    write_atomically(dest, fill)
    return cfg
