"""LLaVA-1.5 stage 1 from separate parts: a CLIP vision tower folder, a LLaMA folder, a fresh projector.

    vision_dir: a HF CLIPVisionModel (or CLIPModel) folder saved with save_pretrained (safetensors,
                config.json, optionally preprocessor_config.json), e.g. openai/clip-vit-large-patch14-336
    llm_dir:    a HF LlamaForCausalLM folder with its tokenizer, e.g. Meta-Llama-3-8B-Instruct

The result is LLaVA-1.5's architecture as the original repo builds it for pre-training
(`mm_projector_type=mlp2x_gelu`, the second-to-last CLIP layer's patch features, images padded to
square), read through the same tensor rules as a converted checkpoint (the original layout's
renames: `model.*`/`lm_head.*` for the LLM, `vision_model.*` for CLIP). The projector is new and
initialised as LLaVA's `mm_projector` is, by torch's `nn.Linear` default: weight and bias uniform
in +-1/sqrt(fan_in). The tokenizer gets LLaVA's `<image>` token (original_llava.add_image_token).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from etils import epath

from recap_jax.conversion.bundle import CaptionerSpec, load_tokenizer
from recap_jax.conversion.llava import convert_params
from recap_jax.conversion.original_llava import (CLIP_RENAMES, ORIGINAL_RENAMES, add_image_token,
                                                 image_settings_for, llava_config_from_original,
                                                 vision_config_for)
from recap_jax.conversion.tensors import CheckpointTensors
from recap_jax.errors import ConfigError
from recap_jax.models.config import read_json, text_config_from_hf
from recap_jax.preprocess.text import TEMPLATES, stop_token_ids

PROJECTOR = "multi_modal_projector"
# LLaVA-1.5's pre-training settings (its train.py arguments), as mm_* fields of an original config.
LLAVA_15_FIELDS = {"mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2,
                   "mm_vision_select_feature": "patch", "image_aspect_ratio": "pad"}


def _llm_config(llm_dir: epath.Path) -> dict[str, Any]:
    path = llm_dir / "config.json"
    if not path.exists():
        raise ConfigError(f"model.llm_dir: {llm_dir} has no config.json (a HF LlamaForCausalLM folder)")
    raw = read_json(path)
    if raw.get("model_type") != "llama":
        raise ConfigError(f"model.llm_dir: {path} has model_type={raw.get('model_type')!r}; a LLaMA "
                          "(LlamaForCausalLM) folder is needed")
    return raw


def read_parts(vision_dir: epath.PathLike, llm_dir: epath.PathLike, template: str = "llama3_llava"
               ) -> tuple[CaptionerSpec, CheckpointTensors]:
    """(spec, tensors of the vision tower and the LLM); every config is checked, no weight read."""
    vision_dir, llm_dir = epath.Path(vision_dir), epath.Path(llm_dir)
    if not (vision_dir / "config.json").exists():
        raise ConfigError(f"model.vision_dir: {vision_dir} has no config.json (a HF CLIPVisionModel folder)")
    if template not in TEMPLATES:
        raise ConfigError(f"model.template={template!r}: stage 1 from parts needs a named conversation "
                          f"template, one of {sorted(TEMPLATES)}")
    raw = _llm_config(llm_dir)
    vision = vision_config_for(raw, vision_dir)
    raw = {**raw, **LLAVA_15_FIELDS, "mm_hidden_size": vision.hidden_size}
    image = image_settings_for(raw, vision, vision_dir)
    tensors = CheckpointTensors().add_folder(llm_dir, ORIGINAL_RENAMES).add_folder(vision_dir, CLIP_RENAMES)
    tokenizer = load_tokenizer(llm_dir)
    config = llava_config_from_original(raw, vision, add_image_token(tokenizer, text_config_from_hf(raw).vocab_size))
    generation = llm_dir / "generation_config.json"
    eos = read_json(generation).get("eos_token_id") if generation.exists() else None
    return CaptionerSpec(config, image, tokenizer, template, None, stop_token_ids(tokenizer, eos)), tensors


def fresh_projector(spec: CaptionerSpec, seed: int, dtype=np.float32) -> dict[str, Any]:
    """LLaVA's mm_projector init (torch nn.Linear): kernel [in, out] and bias ~ U(+-1/sqrt(in))."""
    config = spec.config
    sizes = {"linear_1": (config.vision.hidden_size, config.text.hidden_size),
             "linear_2": (config.text.hidden_size, config.text.hidden_size)}
    rng = np.random.default_rng(seed)
    out = {}
    for name, (fan_in, fan_out) in sizes.items():
        bound = 1.0 / np.sqrt(fan_in)
        out[name] = {"kernel": rng.uniform(-bound, bound, (fan_in, fan_out)).astype(dtype),
                     "bias": rng.uniform(-bound, bound, (fan_out,)).astype(dtype)}
    return out


def params_from_parts(spec: CaptionerSpec, tensors: CheckpointTensors, dtype, seed: int) -> dict[str, Any]:
    """All params as CPU arrays of `dtype`: vision and LLM read from their folders, projector new."""
    params = convert_params(spec.config, tensors, dtype, fresh=(PROJECTOR,))
    cpu = jax.local_devices(backend="cpu")[0]
    params[PROJECTOR] = jax.device_put(fresh_projector(spec, seed, np.dtype(dtype)), cpu)
    return params
