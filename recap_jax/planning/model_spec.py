"""Which model the plan compiles, without reading weights.

From the checkpoint's `recap_config.json` (or a llava-hf folder's `config.json`) when it is
readable, else a built-in config named by `tpu.model` (the paper's LLaVA-LLaMA-3-8B).
"""

from __future__ import annotations

import dataclasses
import logging
import threading

import ml_collections
from etils import epath

from recap_jax.conversion import bundle
from recap_jax.errors import ConfigError
from recap_jax.models.config import LlavaConfig, llava_config_from_hf

# LLaVA-1.5 with LLaMA-3-8B (tennant/llava-llama-3-8b-hqedit, xtuner/llava-llama-3-8b-hf):
# CLIP ViT-L/14-336 tower, feature layer -2, LLaMA-3-8B (GQA 32/8, 128,256-token vocabulary).
LLAVA_LLAMA3_8B = {
    "text_config": {"vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
                    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                    "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "max_position_embeddings": 8192},
    "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                      "num_attention_heads": 16, "image_size": 336, "patch_size": 14},
    "image_token_index": 128256, "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
}
BUILTIN_MODELS = {"llava-llama-3-8b": LLAVA_LLAMA3_8B}
# Text tokens around the image in the LLaMA-3 chat prompt with the default instruction (header,
# instruction, end of turn, assistant header): used only when no tokenizer is readable.
BUILTIN_PROMPT_TEXT_TOKENS = 40


@dataclasses.dataclass(frozen=True)
class PlannedModel:
    config: LlavaConfig
    prompt_length: int  # tokens of the job's prompt, image tokens included
    source: str  # where config and prompt length came from


REMOTE_CHECK_S = 20.0  # gs:// without credentials retries for minutes; the plan does not wait


def _readable(path: str) -> bool:
    answer: list[bool] = []

    def check():
        try:
            answer.append(epath.Path(path).exists())
        except Exception:  # gs:// without credentials or gcsfs
            answer.append(False)

    if "://" not in path:
        check()
        return answer[0]
    # The probe thread outlives the wait and gcsfs logs each failed retry with a traceback.
    logging.getLogger("gcsfs").setLevel(logging.CRITICAL)
    thread = threading.Thread(target=check, daemon=True)
    thread.start()
    thread.join(REMOTE_CHECK_S)
    return bool(answer and answer[0])


def planned_model(config: ml_collections.ConfigDict) -> PlannedModel:
    """The caption job's model and prompt length, from its checkpoint when readable."""
    m = config.model
    try:
        if m.checkpoint and _readable(f"{m.checkpoint}/{bundle.CONFIG_FILE}"):
            spec, _ = bundle.read_converted_spec(m.checkpoint, m.tokenizer or m.hf_dir or None)
            return PlannedModel(spec.config, len(spec.prompt_encoder().encode(config.prompt)),
                                f"model.checkpoint={m.checkpoint}")
        if m.hf_dir and _readable(f"{m.hf_dir}/config.json"):
            spec = bundle.read_llava_hf_spec(m.hf_dir, m.tokenizer or None, m.template or None)
            return PlannedModel(spec.config, len(spec.prompt_encoder().encode(config.prompt)),
                                f"model.hf_dir={m.hf_dir}")
    except (OSError, ValueError) as e:
        print(f"[plan] cannot read the model's config and tokenizer ({e}); using the built-in config")
    name = config.tpu.model
    if name not in BUILTIN_MODELS:
        raise ConfigError(f"tpu.model={name!r}: expected one of {sorted(BUILTIN_MODELS)}")
    llava = llava_config_from_hf(BUILTIN_MODELS[name])
    return PlannedModel(llava, llava.num_image_tokens + BUILTIN_PROMPT_TEXT_TOKENS,
                        f"built-in {name} (checkpoint not readable here), prompt "
                        f"{llava.num_image_tokens} image + ~{BUILTIN_PROMPT_TEXT_TOKENS} text tokens")
