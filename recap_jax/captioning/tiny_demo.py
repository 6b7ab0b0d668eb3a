"""A tiny random LLaVA-LLaMA-3 checkpoint built offline (no download, no PyTorch).

It runs the whole captioning path on any machine (pipeline tests, `configs/finetune_cpu.py`, and the
random start of the miniature paper's captioner). Its captions are random words: it is a working
stand-in for the real model, not a captioner. The tests build
their tiny fixtures from the same tokenizer and llava-hf config dict.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import transformers
from etils import epath
from flax import linen as nn
from flax import traverse_util
from tokenizers import Tokenizer, models, pre_tokenizers

from recap_jax.conversion import bundle
from recap_jax.models.config import llava_config_from_hf
from recap_jax.models.llava import LlavaModel
from recap_jax.preprocess.image import ImageSettings
from recap_jax.preprocess.text import stop_token_ids

SPECIAL_TOKENS = ["<unk>", "<pad>", "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eot_id|>", "<image>"]
WORDS = ("a an the of in on with and is are to at by for from this that image photo picture "
         "red green blue yellow black white orange purple brown gray pink small large big tiny "
         "circle square triangle star shape shapes dog cat bird car tree house person people man "
         "woman child sky water grass road table chair window door street city beach mountain "
         "snow sun cloud light dark bright background foreground left right top bottom center "
         "middle standing sitting walking running holding wearing looking near under over next "
         "two three four many some one there it its his her their detailed caption please "
         "generate describe be as descriptive possible what shows scene view close up "
         "user assistant system . , ! ? : ; ' \" ( ) -").split()

# A LLaMA-3 style chat template in the llava-hf message format (content parts of type image/text).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


def tiny_tokenizer(extra_words: tuple[str, ...] = ()) -> transformers.PreTrainedTokenizerFast:
    """A word-level tokenizer (~200 ids): special tokens first, `<image>` = 7, `<|eot_id|>` = 6.

    `extra_words` extend the vocabulary (the miniature world's captions use a few more words).
    """
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + sorted(set(WORDS) | set(extra_words)))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
        unk_token="<unk>", pad_token="<pad>", additional_special_tokens=SPECIAL_TOKENS[4:])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_llava_hf_config(*, vocab_size: int = 256, image_token_id: int = 7, image_size: int = 28,
                         patch_size: int = 7, vision_layers: int = 3, text_layers: int = 2,
                         hidden: int = 48, heads: int = 6, kv_heads: int = 2, vision_hidden: int = 32,
                         feature_layer: int = -2, select_strategy: str = "default",
                         rope_scaling: bool = False, eos_token_id: int = 6,
                         tie_word_embeddings: bool = False) -> dict[str, Any]:
    """A llava-hf `config.json` dict for a tiny LLaVA-LLaMA-3."""
    text = {"model_type": "llama", "vocab_size": vocab_size, "hidden_size": hidden,
            "intermediate_size": 2 * hidden, "num_hidden_layers": text_layers,
            "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": hidden // heads,
            "rms_norm_eps": 1e-5, "max_position_embeddings": 2048, "rope_theta": 500000.0,
            "bos_token_id": 2, "eos_token_id": eos_token_id, "pad_token_id": 1,
            "tie_word_embeddings": tie_word_embeddings, "initializer_range": 0.1}
    if rope_scaling:
        # Small original context so the scaling changes frequencies that tiny head dims use.
        text["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    vision = {"model_type": "clip_vision_model", "hidden_size": vision_hidden,
              "intermediate_size": 2 * vision_hidden, "num_hidden_layers": vision_layers,
              "num_attention_heads": 4, "image_size": image_size, "patch_size": patch_size,
              "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": 16}
    return {"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"],
            "text_config": text, "vision_config": vision, "image_token_index": image_token_id,
            "vision_feature_layer": feature_layer, "vision_feature_select_strategy": select_strategy,
            "projector_hidden_act": "gelu", "tie_word_embeddings": tie_word_embeddings}


def build_tiny_checkpoint(out_dir: str, seed: int = 0, image_size: int = 56, extra_words: tuple[str, ...] = (),
                          **config_overrides: Any) -> epath.Path:
    """A random tiny captioner; `config_overrides` go to `tiny_llava_hf_config` (sizes)."""
    overrides = dict(patch_size=14, text_layers=2) | config_overrides
    config = llava_config_from_hf(tiny_llava_hf_config(image_size=image_size, **overrides))
    tokenizer = tiny_tokenizer(extra_words)
    side = config.vision.image_size
    tokens = np.zeros((1, config.num_image_tokens + 1), np.int32)
    params = nn.unbox(LlavaModel(config).init(jax.random.PRNGKey(seed), tokens,
                                              np.zeros((1, side, side, 3), np.float32))["params"])
    params = jax.tree.map(np.asarray, params)
    spec = bundle.CaptionerSpec(config, ImageSettings(size=side, mode="pad"), tokenizer, None,
                                tokenizer.chat_template, stop_token_ids(tokenizer))
    print(f"[caption] building a tiny random demo checkpoint at {out_dir}", flush=True)
    return bundle.save_converted(out_dir, spec, traverse_util.flatten_dict(params).items(), "float32",
                                 {"layout": "tiny-random-demo"})
