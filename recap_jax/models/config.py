"""Model configurations, read from Hugging Face `config.json` files (llava-hf layout).

Both the transformers 4.x spelling (`rope_theta`, `rope_scaling`) and the 5.x one
(`rope_parameters`) are accepted, so older checkpoints such as `xtuner/llava-llama-3-8b-hf`
and newly saved ones read the same.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from etils import epath

from recap_jax.errors import ModelConfigError


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """CLIP ViT vision tower (pre-layernorm, quick-GELU)."""
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    image_size: int
    patch_size: int
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """LLaMA-3.1 "llama3" frequency scaling of RoPE."""
    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """LLaMA decoder (RMSNorm, SwiGLU, grouped-query attention, RoPE)."""
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 8192
    tie_word_embeddings: bool = False


@dataclasses.dataclass(frozen=True)
class LlavaConfig:
    """LLaVA-1.5: vision tower -> 2-layer MLP projector -> LLaMA, image tokens at `<image>`."""
    vision: VisionConfig
    text: TextConfig
    image_token_id: int
    # Index into the vision tower's hidden states (0 = embeddings; -1 = last layer; -2 = LLaVA-1.5).
    vision_feature_layer: int = -2
    # "default" drops the CLS token (LLaVA-1.5), "full" keeps it.
    vision_feature_select_strategy: str = "default"
    projector_hidden_act: str = "gelu"
    projector_bias: bool = True

    @property
    def num_image_tokens(self) -> int:
        extra = 1 if self.vision_feature_select_strategy == "full" else 0
        return self.vision.num_patches + extra

    @property
    def num_vision_layers_used(self) -> int:
        """Vision layers to run: later layers never reach the projector."""
        layer, total = self.vision_feature_layer, self.vision.num_layers
        used = total + 1 + layer if layer < 0 else layer
        if not 0 <= used <= total:
            raise ModelConfigError(
                f"vision_feature_layer={layer} is out of range for a {total}-layer vision tower")
        return used

    def to_json_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json_dict(cls, d: dict[str, Any]) -> LlavaConfig:
        text = dict(d["text"])
        if text.get("rope_scaling"):
            text["rope_scaling"] = RopeScaling(**text["rope_scaling"])
        return cls(**{**d, "vision": VisionConfig(**d["vision"]), "text": TextConfig(**text)})


def _rope_settings(tc: dict[str, Any]) -> tuple[float, RopeScaling | None]:
    params = tc.get("rope_parameters") or {}
    scaling = tc.get("rope_scaling") or {}
    theta = float(params.get("rope_theta", tc.get("rope_theta", 10000.0)))
    merged = {**scaling, **params}
    rope_type = merged.get("rope_type", merged.get("type", "default"))
    if rope_type in (None, "default"):
        return theta, None
    if rope_type != "llama3":
        raise ModelConfigError(f"text_config.rope_scaling: rope type {rope_type!r} is not supported "
                               "(supported: 'default', 'llama3')")
    return theta, RopeScaling(
        factor=float(merged["factor"]), low_freq_factor=float(merged["low_freq_factor"]),
        high_freq_factor=float(merged["high_freq_factor"]),
        original_max_position_embeddings=int(merged["original_max_position_embeddings"]))


# transformers' LlamaConfig defaults. transformers 4.x writes a llava-hf `text_config` as a diff
# against them (llava-hf/llava-1.5-7b-hf and xtuner/llava-llama-3-8b-hf omit hidden_size, heads...).
_LLAMA_DEFAULTS = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
                   "num_hidden_layers": 32, "num_attention_heads": 32, "rms_norm_eps": 1e-6,
                   "max_position_embeddings": 2048}


def text_config_from_hf(tc: dict[str, Any]) -> TextConfig:
    """A LLaMA `config.json` dict (or a LLaVA's `text_config`) -> TextConfig."""
    tc = {**_LLAMA_DEFAULTS, **{k: v for k, v in tc.items() if v is not None}}
    for field in ("attention_bias", "mlp_bias"):
        if tc.get(field):
            raise ModelConfigError(f"text_config.{field}=true is not supported (LLaMA-3 has no biases)")
    if tc.get("hidden_act", "silu") != "silu":
        raise ModelConfigError(f"text_config.hidden_act={tc['hidden_act']!r}: only 'silu' (SwiGLU)")
    theta, scaling = _rope_settings(tc)
    num_heads = int(tc["num_attention_heads"])
    return TextConfig(
        vocab_size=int(tc["vocab_size"]), hidden_size=int(tc["hidden_size"]),
        intermediate_size=int(tc["intermediate_size"]), num_layers=int(tc["num_hidden_layers"]),
        num_heads=num_heads, num_kv_heads=int(tc.get("num_key_value_heads") or num_heads),
        head_dim=int(tc.get("head_dim") or tc["hidden_size"] // num_heads),
        rms_norm_eps=float(tc["rms_norm_eps"]), rope_theta=theta, rope_scaling=scaling,
        max_position_embeddings=int(tc["max_position_embeddings"]),
        tie_word_embeddings=bool(tc.get("tie_word_embeddings", False)))


def vision_config_from_hf(vc: dict[str, Any]) -> VisionConfig:
    """A CLIP vision `config.json` dict (or a LLaVA's `vision_config`) -> VisionConfig."""
    act = vc.get("hidden_act", "quick_gelu")
    if act not in ("quick_gelu", "gelu"):
        raise ModelConfigError(f"vision_config.hidden_act={act!r}: expected 'quick_gelu' or 'gelu'")
    # CLIP's defaults when a config.json omits a field (transformers CLIPVisionConfig).
    return VisionConfig(
        hidden_size=int(vc.get("hidden_size", 768)), intermediate_size=int(vc.get("intermediate_size", 3072)),
        num_layers=int(vc.get("num_hidden_layers", 12)), num_heads=int(vc.get("num_attention_heads", 12)),
        image_size=int(vc.get("image_size", 224)), patch_size=int(vc.get("patch_size", 32)),
        layer_norm_eps=float(vc.get("layer_norm_eps", 1e-5)), hidden_act=act)


SELECT_STRATEGIES = ("default", "full")
PROJECTOR_ACTS = ("gelu",)


def llava_config_from_hf(d: dict[str, Any]) -> LlavaConfig:
    """A llava-hf `config.json` dict -> LlavaConfig."""
    if "text_config" not in d or "vision_config" not in d:
        raise ModelConfigError("config.json: a llava-hf config needs 'text_config' and 'vision_config' "
                               f"(got model_type={d.get('model_type')!r})")
    layer = d.get("vision_feature_layer", -2)
    if not isinstance(layer, int):
        raise ModelConfigError(f"vision_feature_layer={layer!r}: only a single layer index is supported")
    strategy = d.get("vision_feature_select_strategy", "default")
    if strategy not in SELECT_STRATEGIES:
        raise ModelConfigError(f"vision_feature_select_strategy={strategy!r}: expected one of {SELECT_STRATEGIES}")
    act = d.get("projector_hidden_act", "gelu")
    if act not in PROJECTOR_ACTS:
        raise ModelConfigError(f"projector_hidden_act={act!r}: expected one of {PROJECTOR_ACTS}")
    cfg = LlavaConfig(
        vision=vision_config_from_hf(d["vision_config"]), text=text_config_from_hf(d["text_config"]),
        image_token_id=int(d.get("image_token_index", d.get("image_token_id", 32000))),
        vision_feature_layer=layer, vision_feature_select_strategy=strategy,
        projector_hidden_act=act, projector_bias=bool(d.get("multimodal_projector_bias", True)))
    cfg.num_vision_layers_used  # validates the layer index
    return cfg


def read_json(path: epath.PathLike) -> dict[str, Any]:
    return json.loads(epath.Path(path).read_text())
