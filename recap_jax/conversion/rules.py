"""Checkpoint tensors (canonical names, see `tensors.py`) -> Flax params, by declarative rules.

Every parameter is described by one `ParamRule`: which canonical tensor(s) it comes from and how
a PyTorch layout becomes ours. All names and shapes are checked against the model's abstract
params before a single tensor is read, so a mismatched checkpoint fails fast and writes nothing.
Stacked (scanned) layers are filled one tensor at a time into a preallocated array of the output
dtype: peak memory is about the converted size plus one tensor, not twice the model. The LLaVA
converter (`llava.py`) and CLIP's HF loader (`clip/hf_weights.py`) both use it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from recap_jax.conversion.tensors import CheckpointTensors
from recap_jax.errors import ConversionError

# How a stored tensor becomes ours; each entry also gives the stored shape from ours.
TRANSFORMS: dict[str, tuple[Callable[[np.ndarray, tuple], np.ndarray], Callable[[tuple], tuple]]] = {
    "same": (lambda t, s: t, lambda s: s),
    "scalar": (lambda t, s: np.reshape(t, s), lambda s: s),  # 0-d or [1] -> ()
    "linear": (lambda t, s: t.T, lambda s: (s[1], s[0])),  # torch [out, in] -> [in, out]
    "heads_in": (lambda t, s: t.T.reshape(s), lambda s: (s[1] * s[2], s[0])),  # -> [D, H, Dh]
    "heads_out": (lambda t, s: t.T.reshape(s), lambda s: (s[2], s[0] * s[1])),  # -> [H, Dh, D]
    "heads_bias": (lambda t, s: t.reshape(s), lambda s: (s[0] * s[1],)),
    "conv": (lambda t, s: t.transpose(2, 3, 1, 0), lambda s: (s[3], s[2], s[0], s[1])),  # OIHW -> HWIO
}
# One third of a fused attention input (torch `nn.MultiheadAttention.in_proj_*`: q, k, v stacked on dim 0).
for _i, _part in enumerate("qkv"):
    TRANSFORMS[f"in_proj_{_part}"] = (
        lambda t, s, i=_i: t[i * s[1] * s[2]:(i + 1) * s[1] * s[2]].T.reshape(s),
        lambda s: (3 * s[1] * s[2], s[0]))
    TRANSFORMS[f"in_proj_{_part}_bias"] = (
        lambda t, s, i=_i: t[i * s[0] * s[1]:(i + 1) * s[0] * s[1]].reshape(s),
        lambda s: (3 * s[0] * s[1],))

# Ours -> the stored layout (the inverse of each transform; fused thirds are concatenated by the caller).
INVERSES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "same": lambda x: x,
    "scalar": lambda x: x,
    "linear": lambda x: x.T,
    "heads_in": lambda x: x.reshape(x.shape[0], -1).T,
    "heads_out": lambda x: x.reshape(-1, x.shape[-1]).T,
    "heads_bias": lambda x: x.reshape(-1),
    "conv": lambda x: x.transpose(3, 2, 0, 1),
    **{f"in_proj_{p}": (lambda x: x.reshape(x.shape[0], -1).T) for p in "qkv"},
    **{f"in_proj_{p}_bias": (lambda x: x.reshape(-1)) for p in "qkv"},
}


@dataclasses.dataclass(frozen=True)
class ParamRule:
    path: tuple[str, ...]  # our param path under "params"
    source: str  # canonical tensor name; "{i}" marks the layer index of stacked params
    transform: str = "linear"


@dataclasses.dataclass(frozen=True)
class PlannedParam:
    rule: ParamRule
    shape: tuple[int, ...]  # ours
    num_layers: int | None  # stacked params: how many layers


def layer_norm_rules(path: tuple[str, ...], source: str) -> list[ParamRule]:
    return [ParamRule(path + ("scale",), f"{source}.weight", "same"),
            ParamRule(path + ("bias",), f"{source}.bias", "same")]


def encoder_layer_rules(path: tuple[str, ...], layer: str) -> list[ParamRule]:
    """Rules of a scanned `models.vision.EncoderLayer` stack at `path` from HF CLIP layers `layer`
    (a canonical prefix with "{i}", e.g. "vision:encoder.layers.{i}.")."""
    rules = []
    for name in ("q_proj", "k_proj", "v_proj"):
        rules += [ParamRule(path + (name, "kernel"), f"{layer}self_attn.{name}.weight", "heads_in"),
                  ParamRule(path + (name, "bias"), f"{layer}self_attn.{name}.bias", "heads_bias")]
    rules += [ParamRule(path + ("out_proj", "kernel"), f"{layer}self_attn.out_proj.weight", "heads_out"),
              ParamRule(path + ("out_proj", "bias"), f"{layer}self_attn.out_proj.bias", "same")]
    for name in ("layer_norm1", "layer_norm2"):
        rules += layer_norm_rules(path + (name,), f"{layer}{name}")
    for name in ("fc1", "fc2"):
        rules += [ParamRule(path + (name, "kernel"), f"{layer}mlp.{name}.weight", "linear"),
                  ParamRule(path + (name, "bias"), f"{layer}mlp.{name}.bias", "same")]
    return rules


def vision_tower_rules(path: tuple[str, ...], source: str = "vision:") -> list[ParamRule]:
    """Rules of a `models.vision.VisionTower` at `path` from HF CLIP vision tensors under `source`."""
    return [
        ParamRule(path + ("patch_embedding", "kernel"), f"{source}embeddings.patch_embedding.weight", "conv"),
        ParamRule(path + ("class_embedding",), f"{source}embeddings.class_embedding", "same"),
        ParamRule(path + ("position_embedding",), f"{source}embeddings.position_embedding.weight", "same"),
        *layer_norm_rules(path + ("pre_layrnorm",), f"{source}pre_layrnorm"),
        *encoder_layer_rules(path + ("layers",), f"{source}encoder.layers.{{i}}."),
    ]


def tree_has(tree, path: Sequence[str]) -> bool:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return False
        tree = tree[key]
    return True


def tree_get(tree, path: Sequence[str]):
    for key in path:
        tree = tree[key]
    return tree


def tree_set(tree: dict, path: Sequence[str], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def plan_params(rules: Sequence[ParamRule], shapes, tensors: CheckpointTensors,
                ignore: Callable[[str], bool] = lambda name: False) -> list[PlannedParam]:
    """Checks every rule's tensors against `shapes` (our unboxed abstract params); raises
    ConversionError on a missing or misshapen tensor, or on a stored tensor no rule uses (unless
    `ignore(canonical_name)`)."""
    expected: set[str] = set()
    plan = []
    for rule in (r for r in rules if tree_has(shapes, r.path)):  # e.g. no pre-LayerNorm in CLIPA
        target = tuple(tree_get(shapes, rule.path).shape)
        stacked = "{i}" in rule.source
        stored_shape = TRANSFORMS[rule.transform][1](target[1:] if stacked else target)
        for i in range(target[0] if stacked else 1):
            name = rule.source.format(i=i)
            expected.add(name)
            info = tensors.info(name)
            if info is None:
                raise ConversionError(f"missing tensor {name!r}, which the config requires "
                                      f"(for params/{'/'.join(rule.path)})")
            if info.shape != stored_shape and not (rule.transform == "scalar" and np.prod(info.shape) == 1):
                raise ConversionError(f"tensor {info.name!r} in {info.file}: shape {info.shape} does not fit "
                                      f"the config, which needs {stored_shape}")
        plan.append(PlannedParam(rule, target, target[0] if stacked else None))
    leftover = [tensors.info(n).name for n in tensors.names() if n not in expected and not ignore(n)]
    leftover += tensors.unmatched
    if leftover:
        raise ConversionError(f"{len(leftover)} tensor(s) do not fit the config, e.g. {sorted(leftover)[:5]}")
    return plan


def planned_leaves(plan: Sequence[PlannedParam], tensors: CheckpointTensors, dtype=np.float32,
                   on_tensor: Callable[[str], None] | None = None
                   ) -> Iterator[tuple[tuple[str, ...], jax.Array]]:
    """Each planned param as (path, jax array of `dtype` on the CPU), one at a time.

    CPU, never an accelerator: a TPU VM converting an 8B model must not fill HBM with it."""
    dtype = np.dtype(ml_dtypes.bfloat16) if dtype in ("bfloat16", jnp.bfloat16) else np.dtype(dtype)
    cpu = jax.local_devices(backend="cpu")[0]
    for p in plan:
        transform = TRANSFORMS[p.rule.transform][0]
        if p.num_layers is None:
            out = np.ascontiguousarray(transform(tensors.read(p.rule.source), p.shape), dtype).reshape(p.shape)
            if on_tensor:
                on_tensor(p.rule.source)
        else:
            out = np.empty(p.shape, dtype)
            for i in range(p.num_layers):
                name = p.rule.source.format(i=i)
                out[i] = transform(tensors.read(name), p.shape[1:])
                if on_tensor:
                    on_tensor(name)
        value = jax.device_put(out, cpu)
        del out  # only the jax copy may live on while the caller holds the leaf
        yield p.rule.path, value


def params_from_plan(plan: Sequence[PlannedParam], tensors: CheckpointTensors, dtype=np.float32,
                     on_tensor: Callable[[str], None] | None = None) -> dict:
    """Read, transform and stack all planned tensors into a params dict of CPU arrays of `dtype`."""
    params: dict = {}
    for path, value in planned_leaves(plan, tensors, dtype, on_tensor):
        tree_set(params, path, value)
    return params


def tensors_from_params(rules: Sequence[ParamRule], params, dtype=np.float32) -> dict[str, np.ndarray]:
    """The inverse of `params_from_plan`: canonical name -> stored-layout array, for every rule
    whose param exists in `params` (plain arrays); stacked params become one tensor per layer."""
    pieces: dict[str, dict[str, np.ndarray]] = {}
    for rule in rules:
        if not tree_has(params, rule.path):
            continue
        value = np.asarray(tree_get(params, rule.path), dtype)
        stacked = "{i}" in rule.source
        for i in range(value.shape[0] if stacked else 1):
            name = rule.source.format(i=i)
            pieces.setdefault(name, {})[rule.transform] = INVERSES[rule.transform](value[i] if stacked else value)
    out = {}
    for name, parts in pieces.items():
        if len(parts) == 1:
            out[name] = np.ascontiguousarray(next(iter(parts.values())))
        else:  # a fused q/k/v tensor: its thirds in q, k, v order
            out[name] = np.concatenate([parts[k] for k in sorted(parts, key=lambda t: "qkv".index(t[8]))])
    return out
