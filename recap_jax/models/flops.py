"""Model FLOPs per captioned image, counted from the config (matmuls only; 2 FLOPs per MAC).

Used by the roofline benchmark and for the TPU-time estimate: what the work *needs*, not what a
particular implementation happens to compute (padding, the whole-cache attention of decode).
"""

from __future__ import annotations

import dataclasses

from recap_jax.models.config import LlavaConfig


@dataclasses.dataclass(frozen=True)
class ImageFlops:
    vision: float  # vision tower (used layers) + projector
    prefill: float  # LLaMA over the prompt (image + text tokens), LM head at the last token
    decode: float  # LLaMA + LM head for each generated token, attending to the growing context

    @property
    def total(self) -> float:
        return self.vision + self.prefill + self.decode


def _llama_layer_matmul_flops(config: LlavaConfig) -> float:
    t = config.text
    attn = t.hidden_size * (t.num_heads + 2 * t.num_kv_heads) * t.head_dim + t.num_heads * t.head_dim * t.hidden_size
    mlp = 3 * t.hidden_size * t.intermediate_size
    return 2.0 * (attn + mlp)


def image_flops(config: LlavaConfig, prompt_tokens: int, new_tokens: int) -> ImageFlops:
    v, t = config.vision, config.text
    tokens = v.num_patches + 1
    vision_layer = 2.0 * (4 * v.hidden_size**2 + 2 * v.hidden_size * v.intermediate_size)
    vision_attention = 2.0 * 2 * tokens * v.hidden_size  # scores + weighted sum, per token
    vision = config.num_vision_layers_used * tokens * (vision_layer + vision_attention)
    vision += 2.0 * config.num_image_tokens * (v.hidden_size * t.hidden_size + t.hidden_size**2)
    vision += 2.0 * tokens * 3 * v.patch_size**2 * v.hidden_size  # patch embedding

    per_token = t.num_layers * _llama_layer_matmul_flops(config)
    lm_head = 2.0 * t.hidden_size * t.vocab_size
    attention_per_pair = 2.0 * 2 * t.num_heads * t.head_dim * t.num_layers  # per (query, key) pair
    causal_pairs = prompt_tokens * (prompt_tokens + 1) / 2
    prefill = prompt_tokens * per_token + causal_pairs * attention_per_pair + lm_head
    decode_pairs = sum(prompt_tokens + i + 1 for i in range(new_tokens))
    decode = new_tokens * (per_token + lm_head) + decode_pairs * attention_per_pair
    return ImageFlops(vision, prefill, decode)


def parameter_count(config: LlavaConfig) -> int:
    v, t = config.vision, config.text
    vision = config.num_vision_layers_used * (4 * v.hidden_size**2 + 2 * v.hidden_size * v.intermediate_size)
    projector = v.hidden_size * t.hidden_size + t.hidden_size**2
    text = t.num_layers * _llama_layer_matmul_flops(config) / 2
    embeddings = t.vocab_size * t.hidden_size * (1 if t.tie_word_embeddings else 2)
    return int(vision + projector + text + embeddings)
