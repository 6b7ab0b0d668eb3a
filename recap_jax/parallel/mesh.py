"""Device meshes and logical-axis sharding rules shared by the captioner and the CLIP trainer.

Mesh axes: `data` (replicas that each see their own batch slice), `fsdp` (parameters sharded,
batch also split) and `tensor` (tensor parallelism inside a layer). Models name their parameter
and activation axes logically ("embed", "mlp", "heads", ...); the rules below map those names
to mesh axes, MaxText-style, so one model runs under any mesh shape.
"""

from collections.abc import Mapping, Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from recap_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axis (or None = replicated). The batch is split over data and fsdp.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("length", None),
    ("cache_length", None),
    ("layers", None),
    ("channels", None),
    ("patch_h", None),
    ("patch_w", None),
    ("positions", None),
    ("vision_embed", None),
    ("norm", None),
)


def mesh_axis_sizes(axis_sizes: Mapping[str, int], num_devices: int) -> list[int]:
    """The sizes of `MESH_AXES` for `num_devices` devices (-1 resolved); ConfigError if they do not fit.

    Cheap (no devices touched): commands call it at start-up, before anything is loaded or written.
    """
    unknown = set(axis_sizes) - set(MESH_AXES)
    if unknown:
        raise ConfigError(f"mesh: unknown axis {sorted(unknown)}; the axes are {MESH_AXES}")
    sizes = [int(axis_sizes.get(name, 1)) for name in MESH_AXES]
    shown = dict(zip(MESH_AXES, sizes))
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ConfigError(f"mesh: axis sizes must be >= 1 with at most one -1 (= the rest), got {shown}")
    if -1 in sizes:
        known = int(np.prod([s for s in sizes if s != -1]))
        if num_devices % known:
            raise ConfigError(f"mesh: {num_devices} devices cannot be split by {shown}; "
                              "set --config.mesh.* to sizes that divide the device count")
        sizes[sizes.index(-1)] = num_devices // known
    if int(np.prod(sizes)) != num_devices:
        raise ConfigError(
            f"mesh: axis sizes {dict(zip(MESH_AXES, sizes))} multiply to {int(np.prod(sizes))}, "
            f"but there are {num_devices} devices; set --config.mesh.* so that they multiply to {num_devices}")
    return sizes


def make_mesh(axis_sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over `devices` (default: all) with axes `MESH_AXES`; one size may be -1 (= the rest)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_axis_sizes(axis_sizes, len(devices))
    try:
        device_grid = mesh_utils.create_device_mesh(sizes, devices)
    except Exception:  # CPU and odd topologies: a plain reshape is fine.
        device_grid = np.asarray(devices).reshape(sizes)
    return Mesh(device_grid, MESH_AXES)


def logical_sharding(mesh: Mesh, logical_axes: Sequence[str | None],
                     rules=LOGICAL_AXIS_RULES) -> NamedSharding:
    """The NamedSharding of an array whose dimensions carry these logical names."""
    spec = nn.logical_to_mesh_axes(tuple(logical_axes), rules)
    return NamedSharding(mesh, spec)


def params_shardings(mesh: Mesh, logically_boxed_params, rules=LOGICAL_AXIS_RULES):
    """NamedShardings for a params tree made with `nn.with_logical_partitioning`."""
    specs = nn.get_partition_spec(logically_boxed_params)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
