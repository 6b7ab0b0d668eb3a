"""The layers of a stacked `[layers, ...]` array as separate arrays, without copying them.

On CPU an array's buffer is host memory: `jax.device_put` of a numpy view of one layer, on the
device that holds it, makes an array over that same memory (no copy, as long as the layer's
offset is aligned; else JAX copies it). Abstract arrays (`jax.ShapeDtypeStruct`, for lowering)
get each layer's shape and sharding.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec


def _layer_sharding(sharding):
    """The sharding of one layer of an array placed with `sharding` (its leading axis dropped);
    None when the layers themselves are split across devices (then a layer is not local)."""
    if isinstance(sharding, NamedSharding):
        spec = tuple(sharding.spec)
        if spec and spec[0] is not None:
            return None
        return NamedSharding(sharding.mesh, PartitionSpec(*spec[1:]))
    if sharding is None or sharding.is_fully_replicated:
        return sharding
    return None


def layer_views(stacked) -> list | None:
    """`stacked` [L, ...] as L arrays [...] over its own memory (a `jax.Array`) or L abstract arrays
    (a `ShapeDtypeStruct`); None when its layers are split across devices."""
    sharding = getattr(stacked, "sharding", None)
    layer_sharding = _layer_sharding(sharding)
    if sharding is not None and layer_sharding is None:
        return None
    count, shape = stacked.shape[0], stacked.shape[1:]
    if isinstance(stacked, jax.ShapeDtypeStruct):
        return [jax.ShapeDtypeStruct(shape, stacked.dtype, sharding=layer_sharding) for _ in range(count)]
    shards = [(shard.device, np.asarray(shard.data)) for shard in stacked.addressable_shards]
    return [jax.make_array_from_single_device_arrays(
                shape, layer_sharding, [jax.device_put(host[i], device) for device, host in shards])
            for i in range(count)]
