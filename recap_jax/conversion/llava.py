"""HF LLaVA tensors (canonical names, see `tensors.py`) -> this port's Flax params.

The rules of every LLaVA parameter; checking and reading them is `rules.py`'s job.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from recap_jax.conversion.rules import (ParamRule, PlannedParam, params_from_plan, plan_params,
                                        planned_leaves, vision_tower_rules)
from recap_jax.conversion.tensors import CheckpointTensors
from recap_jax.models.config import LlavaConfig
from recap_jax.models.llava import LlavaModel

def _vision_rules() -> list[ParamRule]:
    return vision_tower_rules(("vision_tower",))


def _projector_rules(with_bias: bool) -> list[ParamRule]:
    p = ("multi_modal_projector",)
    rules = []
    for name in ("linear_1", "linear_2"):
        rules.append(ParamRule(p + (name, "kernel"), f"projector:{name}.weight", "linear"))
        if with_bias:
            rules.append(ParamRule(p + (name, "bias"), f"projector:{name}.bias", "same"))
    return rules


def _text_rules(tied: bool) -> list[ParamRule]:
    t = ("language_model",)
    L = t + ("layers",)
    layer = "text:layers.{i}."
    rules = [ParamRule(t + ("embed_tokens", "embedding"), "text:embed_tokens.weight", "same"),
             ParamRule(t + ("norm", "scale"), "text:norm.weight", "same")]
    if not tied:
        rules.append(ParamRule(t + ("lm_head", "kernel"), "lm_head:weight", "linear"))
    for name in ("q_proj", "k_proj", "v_proj"):
        rules.append(ParamRule(L + (name, "kernel"), f"{layer}self_attn.{name}.weight", "heads_in"))
    rules.append(ParamRule(L + ("o_proj", "kernel"), f"{layer}self_attn.o_proj.weight", "heads_out"))
    for name in ("gate_proj", "up_proj", "down_proj"):
        rules.append(ParamRule(L + (name, "kernel"), f"{layer}mlp.{name}.weight", "linear"))
    for name in ("input_layernorm", "post_attention_layernorm"):
        rules.append(ParamRule(L + (name, "scale"), f"{layer}{name}.weight", "same"))
    return rules


def param_rules(config: LlavaConfig) -> list[ParamRule]:
    return (_vision_rules() + _projector_rules(config.projector_bias)
            + _text_rules(config.text.tie_word_embeddings))


# Stored tensors that LLaVA never uses; anything else left over means the checkpoint and the
# config disagree.
_UNUSED = (re.compile(r"vision:post_layernorm\..*"), re.compile(r"vision:embeddings\.position_ids"),
           re.compile(r"text:layers\.\d+\.self_attn\.rotary_emb\.inv_freq"),
           # A full CLIPModel (e.g. openai/clip-vit-large-patch14-336) as the vision tower source.
           re.compile(r"vision:(visual_projection|text_projection|text_model|logit_scale).*"))


def abstract_params(config: LlavaConfig, dtype=jnp.float32):
    """Shapes (ShapeDtypeStruct) and logical axis names (boxed) of the params, without memory."""
    return _abstract_params(config, jnp.dtype(dtype))


@functools.lru_cache(maxsize=8)
def _abstract_params(config: LlavaConfig, dtype: jnp.dtype):
    # Tracing the model's init takes seconds on a small CPU; loading asks for the same shapes
    # several times (the conversion plan, the shardings).
    model = LlavaModel(config, param_dtype=dtype)
    side = config.vision.image_size
    tokens = jnp.zeros((1, config.num_image_tokens + 1), jnp.int32)
    boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens, jnp.zeros((1, side, side, 3)))
    return boxed["params"]


def _plan(config: LlavaConfig, tensors: CheckpointTensors, fresh: tuple[str, ...] = ()) -> list[PlannedParam]:
    """Every param's rule and shape; raises ConversionError on any mismatch. Params under the
    top-level names in `fresh` are not read (the caller initialises them)."""
    vision_used = config.num_vision_layers_used
    rules = [r for r in param_rules(config)
             if not (r.path[:2] == ("vision_tower", "layers") and vision_used == 0)  # layer 0: embeddings only
             and r.path[0] not in fresh]

    def ignore(name: str) -> bool:
        if any(p.fullmatch(name) for p in _UNUSED):
            return True
        m = re.fullmatch(r"vision:encoder\.layers\.(\d+)\..*", name)
        if m and vision_used <= int(m.group(1)) < config.vision.num_layers:
            return True  # blocks after the LLaVA feature layer are never run
        return name == "lm_head:weight" and config.text.tie_word_embeddings

    return plan_params(rules, nn.unbox(abstract_params(config)), tensors, ignore)


def converted_leaves(config: LlavaConfig, tensors: CheckpointTensors, dtype=np.float32,
                     on_tensor: Callable[[str], None] | None = None
                     ) -> Iterator[tuple[tuple[str, ...], jax.Array]]:
    """Each param as (path, jax array of `dtype` on the CPU), one at a time, after checking that
    every tensor fits: a caller that writes and drops each leaf holds one stacked param at a time."""
    return planned_leaves(_plan(config, tensors), tensors, dtype, on_tensor)


def convert_params(config: LlavaConfig, tensors: CheckpointTensors, dtype=np.float32,
                   on_tensor: Callable[[str], None] | None = None, fresh: tuple[str, ...] = ()) -> dict:
    """Read, transform and stack all tensors into a params dict of CPU arrays of `dtype`
    (without the params under `fresh`, which the caller initialises)."""
    return params_from_plan(_plan(config, tensors, fresh), tensors, dtype, on_tensor)


# Renames for llava-hf checkpoints, transformers 5.x and 4.x spellings.
LLAVA_HF_RENAMES = (
    ("model.vision_tower.vision_model.", "vision:"),
    ("model.vision_tower.", "vision:"),
    ("vision_tower.vision_model.", "vision:"),
    ("vision_tower.", "vision:"),
    ("model.multi_modal_projector.", "projector:"),
    ("multi_modal_projector.", "projector:"),
    ("model.language_model.", "text:"),
    ("language_model.model.", "text:"),
    ("language_model.lm_head.", "lm_head:"),
    ("lm_head.", "lm_head:"),
)
