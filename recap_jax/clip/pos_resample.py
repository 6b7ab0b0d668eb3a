"""Resampling a ViT's learned position embeddings to another patch grid (CLIPA's stage 2).

The image tower's position table is [1 + g * g, width]: the CLS position, then a g x g grid in
row-major order. A new image size keeps the CLS row and resizes the grid with
`jax.image.resize` (bilinear by default, or bicubic as open_clip does); at equal size the
result equals the input.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from recap_jax.errors import ConfigError

METHODS = {"bilinear": "linear", "bicubic": "cubic"}
POSITION_NAMES = ("position_embedding", "pos_embed")


def is_image_position(names: tuple[str, ...]) -> bool:
    """Whether a parameter path (names) is the image tower's position table."""
    return bool(names) and names[0] == "image_tower" and names[-1] in POSITION_NAMES


def grid_side(num_positions: int) -> int:
    """g for a [1 + g * g, width] position table."""
    side = math.isqrt(num_positions - 1)
    if side * side != num_positions - 1:
        raise ConfigError(f"image_tower/pos_embed: {num_positions} positions are not 1 CLS + a square grid")
    return side


def resample_pos_embed(pos: jax.Array, num_positions: int, method: str = "bilinear") -> jax.Array:
    """[1 + g * g, width] -> [num_positions = 1 + h * h, width]."""
    if method not in METHODS:
        raise ConfigError(f"init.pos_interpolation: {method!r} is not one of {sorted(METHODS)}")
    old, new = grid_side(pos.shape[0]), grid_side(num_positions)
    cls, grid = pos[:1], pos[1:].reshape(old, old, pos.shape[-1])
    grid = jax.image.resize(grid.astype(jnp.float32), (new, new, pos.shape[-1]), METHODS[method])
    return jnp.concatenate([cls.astype(jnp.float32), grid.reshape(new * new, -1)]).astype(pos.dtype)


def path_names(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def resample_params(params: Any, target_shapes: Any, method: str = "bilinear") -> Any:
    """`params` with the image position table resampled to `target_shapes`' grid; every other
    array must already have its target shape (else a ConfigError names it)."""
    def fix(path, value, target):
        names = path_names(path)
        if tuple(value.shape) == tuple(target.shape):
            return value
        if is_image_position(names):
            return resample_pos_embed(value, target.shape[0], method)
        raise ConfigError(f"init.checkpoint: {'/'.join(names)} has shape {tuple(value.shape)}, the new "
                          f"model needs {tuple(target.shape)}; only the image size may change between stages")
    return jax.tree_util.tree_map_with_path(fix, params, target_shapes)
