"""HF LLaVA tensors (canonical names, see `tensors.py`) -> this port's Flax params.

Every parameter is described by one `ParamRule`: which canonical tensor(s) it comes from and how
a PyTorch layout becomes ours. All names and shapes are checked against the config before a
single tensor is read, so a mismatched checkpoint fails fast and writes nothing. Stacked (scanned)
layers are filled one tensor at a time into a preallocated array of the output dtype: peak
memory is about the converted size plus one tensor, not twice the model.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import linen as nn

from recap_jax.conversion.tensors import CheckpointTensors
from recap_jax.errors import ConversionError
from recap_jax.models.config import LlavaConfig
from recap_jax.models.llava import LlavaModel

# How a stored tensor becomes ours; each entry also gives the stored shape from ours.
_TRANSFORMS: dict[str, tuple[Callable[[np.ndarray, tuple], np.ndarray], Callable[[tuple], tuple]]] = {
    "same": (lambda t, s: t, lambda s: s),
    "linear": (lambda t, s: t.T, lambda s: (s[1], s[0])),  # torch [out, in] -> [in, out]
    "heads_in": (lambda t, s: t.T.reshape(s), lambda s: (s[1] * s[2], s[0])),  # -> [D, H, Dh]
    "heads_out": (lambda t, s: t.T.reshape(s), lambda s: (s[2], s[0] * s[1])),  # -> [H, Dh, D]
    "heads_bias": (lambda t, s: t.reshape(s), lambda s: (s[0] * s[1],)),
    "conv": (lambda t, s: t.transpose(2, 3, 1, 0), lambda s: (s[3], s[2], s[0], s[1])),  # OIHW -> HWIO
}


@dataclasses.dataclass(frozen=True)
class ParamRule:
    path: tuple[str, ...]  # our param path under "params"
    source: str  # canonical tensor name; "{i}" marks the layer index of stacked params
    transform: str = "linear"


def _vision_rules() -> list[ParamRule]:
    v = ("vision_tower",)
    L = v + ("layers",)
    rules = [
        ParamRule(v + ("patch_embedding", "kernel"), "vision:embeddings.patch_embedding.weight", "conv"),
        ParamRule(v + ("class_embedding",), "vision:embeddings.class_embedding", "same"),
        ParamRule(v + ("position_embedding",), "vision:embeddings.position_embedding.weight", "same"),
        ParamRule(v + ("pre_layrnorm", "scale"), "vision:pre_layrnorm.weight", "same"),
        ParamRule(v + ("pre_layrnorm", "bias"), "vision:pre_layrnorm.bias", "same"),
    ]
    layer = "vision:encoder.layers.{i}."
    for name in ("q_proj", "k_proj", "v_proj"):
        rules += [ParamRule(L + (name, "kernel"), f"{layer}self_attn.{name}.weight", "heads_in"),
                  ParamRule(L + (name, "bias"), f"{layer}self_attn.{name}.bias", "heads_bias")]
    rules += [ParamRule(L + ("out_proj", "kernel"), f"{layer}self_attn.out_proj.weight", "heads_out"),
              ParamRule(L + ("out_proj", "bias"), f"{layer}self_attn.out_proj.bias", "same")]
    for name in ("layer_norm1", "layer_norm2"):
        rules += [ParamRule(L + (name, "scale"), f"{layer}{name}.weight", "same"),
                  ParamRule(L + (name, "bias"), f"{layer}{name}.bias", "same")]
    for name in ("fc1", "fc2"):
        rules += [ParamRule(L + (name, "kernel"), f"{layer}mlp.{name}.weight", "linear"),
                  ParamRule(L + (name, "bias"), f"{layer}mlp.{name}.bias", "same")]
    return rules


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
    model = LlavaModel(config, param_dtype=dtype)
    side = config.vision.image_size
    tokens = jnp.zeros((1, config.num_image_tokens + 1), jnp.int32)
    boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens, jnp.zeros((1, side, side, 3)))
    return boxed["params"]


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict, path, value):
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _plan(config: LlavaConfig, tensors: CheckpointTensors):
    """(rule, target shape, number of layers or None) for every param; raises on any mismatch."""
    shapes = nn.unbox(abstract_params(config))
    expected: set[str] = set()
    plan = []
    for rule in param_rules(config):
        if rule.path[:2] == ("vision_tower", "layers") and config.num_vision_layers_used == 0:
            continue  # feature layer 0: the embeddings alone
        target = tuple(_get(shapes, rule.path).shape)
        stacked = "{i}" in rule.source
        per_layer = target[1:] if stacked else target
        stored_shape = _TRANSFORMS[rule.transform][1](per_layer)
        for i in range(target[0] if stacked else 1):
            name = rule.source.format(i=i)
            expected.add(name)
            info = tensors.info(name)
            if info is None:
                raise ConversionError(f"missing tensor {name!r}, which the config requires "
                                      f"(for params/{'/'.join(rule.path)})")
            if info.shape != stored_shape:
                raise ConversionError(f"tensor {info.name!r} in {info.file}: shape {info.shape} does not fit "
                                      f"the config, which needs {stored_shape}")
        plan.append((rule, target, target[0] if stacked else None))

    vision_used = config.num_vision_layers_used
    leftover = []
    for name in tensors.names():
        if name in expected or any(p.fullmatch(name) for p in _UNUSED):
            continue
        m = re.fullmatch(r"vision:encoder\.layers\.(\d+)\..*", name)
        if m and vision_used <= int(m.group(1)) < config.vision.num_layers:
            continue  # blocks after the LLaVA feature layer are never run
        if name == "lm_head:weight" and config.text.tie_word_embeddings:
            continue
        leftover.append(tensors.info(name).name)
    leftover += tensors.unmatched
    if leftover:
        raise ConversionError(f"{len(leftover)} tensor(s) do not fit the config, e.g. {sorted(leftover)[:5]}")
    return plan


def check_fits(config: LlavaConfig, tensors: CheckpointTensors) -> None:
    """Raise ConversionError naming the first tensor that does not fit the config."""
    _plan(config, tensors)


def converted_leaves(config: LlavaConfig, tensors: CheckpointTensors, dtype=np.float32,
                     on_tensor: Callable[[str], None] | None = None
                     ) -> Iterator[tuple[tuple[str, ...], jax.Array]]:
    """Each param as (path, jax array of `dtype` on the CPU), one at a time, after checking that
    every tensor fits: a caller that writes and drops each leaf holds one stacked param at a time.

    CPU, never an accelerator: a TPU VM converting an 8B model must not fill HBM with it."""
    dtype = np.dtype(ml_dtypes.bfloat16) if dtype in ("bfloat16", jnp.bfloat16) else np.dtype(dtype)
    cpu = jax.local_devices(backend="cpu")[0]
    for rule, target, num_layers in _plan(config, tensors):
        transform = _TRANSFORMS[rule.transform][0]
        if num_layers is None:
            out = np.ascontiguousarray(transform(tensors.read(rule.source), target), dtype)
            if on_tensor:
                on_tensor(rule.source)
        else:
            out = np.empty(target, dtype)
            for i in range(num_layers):
                name = rule.source.format(i=i)
                out[i] = transform(tensors.read(name), target[1:])
                if on_tensor:
                    on_tensor(name)
        value = jax.device_put(out, cpu)
        del out  # only the jax copy may live on while the caller holds the leaf
        yield rule.path, value


def convert_params(config: LlavaConfig, tensors: CheckpointTensors, dtype=np.float32,
                   on_tensor: Callable[[str], None] | None = None) -> dict:
    """Read, transform and stack all tensors into a params dict of CPU arrays of `dtype`."""
    params: dict = {}
    for path, value in converted_leaves(config, tensors, dtype, on_tensor):
        _set(params, path, value)
    return params


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
