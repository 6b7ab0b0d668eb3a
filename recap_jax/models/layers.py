"""Small helpers every model here uses: parameter inits with logical axes, dtypes, activations."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from recap_jax.errors import ConfigError

DTYPES: dict[str, Any] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


def logical_init(names: Sequence[str | None], init: Callable = nn.initializers.normal(0.02)) -> Callable:
    """`init` whose parameter carries the logical axis `names` (mapped to the mesh by parallel/mesh)."""
    return nn.with_logical_partitioning(init, tuple(names))


def dtype_from_name(name: str | Any, field: str = "model.dtype") -> Any:
    """A jnp dtype from its name ("float32", "bfloat16", "float16"); dtypes pass through."""
    if not isinstance(name, str):
        return name
    try:
        return DTYPES[name]
    except KeyError:
        raise ConfigError(f"{field}: unknown dtype {name!r}; use one of {sorted(DTYPES)}") from None


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ConfigError(f"activation: {name!r} is not one of {sorted(ACTIVATIONS)}") from None
