"""Reading a converted checkpoint's params into their target shardings, one leaf and one chunk
of rows at a time.

Each leaf's TensorStore (the zarr3/OCDBT array Orbax wrote) is opened from Orbax's own read spec;
the target array is allocated on its devices and filled with donated in-place updates, each from
a host read of at most `READ_BYTES` (whole storage chunks). Host memory beyond the placed params
is then one read, not one leaf: a stacked 8B MLP weight ([32, 4096, 14336], 3.5 GiB in bf16) is
never on the host whole, and never in another dtype whole.
"""

from __future__ import annotations

import ctypes
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp_v0
import tensorstore as ts
from etils import epath
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec

from recap_jax.errors import ConversionError

# Host bytes read per update (rounded up to whole storage chunks along axis 0). A read holds
# ~3-4x this at once (compressed chunks, decoded chunks, the host array, its device copy).
READ_BYTES = 16 * 2**20
# glibc's malloc: buffers above this size are mmap'd and unmapped when freed. Its default
# threshold rises with the largest freed buffer (up to 32 MiB), after which TensorStore's
# per-thread read buffers stayed in malloc arenas: ~1 GiB of a 1.9 GiB load was such freed but
# unreturned memory (benchmarks/load_memory.py).
MMAP_THRESHOLD_BYTES = 4 * 2**20


def read_tree(pytree_dir: epath.PathLike, targets, transform: Callable[[tuple[str, ...], jax.Array], Any] | None = None
              ) -> dict:
    """The params of an Orbax pytree folder, as the tree of ShapeDtypeStruct `targets` (with shardings)
    says: each leaf read into its own dtype and devices (then `transform(path, leaf)`, if given)
    before the next is opened."""
    context = ocp_v0.type_handlers.get_ts_context(use_ocdbt=True)
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    flat = {}
    for path, target in traverse_util.flatten_dict(targets).items():
        leaf = read_leaf(open_leaf(epath.Path(pytree_dir), path, context), target, "/".join(path))
        flat[path] = transform(path, leaf) if transform is not None else leaf
        del leaf
        if libc is not None:
            libc.malloc_trim(0)  # hand the leaf's freed read buffers back before the next leaf
    return traverse_util.unflatten_dict(flat)


_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


def _glibc():
    """glibc, for mallopt/malloc_trim; None on other C libraries."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


def open_leaf(pytree_dir: epath.Path, path: tuple[str, ...], context: ts.Context | None = None) -> ts.TensorStore:
    """The stored array of one param (Orbax names a leaf by its dotted key path); `context`:
    Orbax's TensorStore context (shared by the leaves of one load)."""
    context = context or ocp_v0.type_handlers.get_ts_context(use_ocdbt=True)
    info = ocp_v0.type_handlers.ParamInfo(name=".".join(path), parent_dir=pytree_dir,
                                          is_ocdbt_checkpoint=True, use_zarr3=True)
    spec = ocp_v0.type_handlers.get_json_tspec_read(info, use_ocdbt=True)
    try:
        return ts.open(spec, context=context).result()
    except ValueError as e:
        raise ConversionError(f"{pytree_dir}: cannot read param {'/'.join(path)} ({e}); "
                              "re-convert the checkpoint with `python -m recap_jax.convert`") from e


def read_leaf(store: ts.TensorStore, target: jax.ShapeDtypeStruct, name: str) -> jax.Array:
    """`store` placed as `target` (shape, dtype, sharding), read a chunk of rows at a time."""
    shape, dtype = tuple(target.shape), jnp.dtype(target.dtype)
    if tuple(store.shape) != shape:
        raise ConversionError(f"param {name}: checkpoint has shape {tuple(store.shape)}, the model "
                              f"expects {shape}; is model.checkpoint converted for this config?")
    rows = _rows_per_read(store, dtype)
    if not shape or rows >= shape[0]:
        return jax.device_put(np.asarray(store.read().result(), dtype), target.sharding)
    out = _zeros(shape, dtype, target.sharding)
    for start in range(0, shape[0], rows):
        host = np.asarray(store[start:min(start + rows, shape[0])].read().result(), dtype)
        out = _update_rows(target.sharding)(out, host, np.int32(start))
        del host
    return out


def _rows_per_read(store: ts.TensorStore, dtype) -> int:
    if not store.shape:
        return 1
    row_bytes = math.prod(store.shape[1:]) * max(jnp.dtype(dtype).itemsize, store.dtype.numpy_dtype.itemsize)
    chunk_rows = store.chunk_layout.read_chunk.shape[0] or store.shape[0]
    return chunk_rows * max(1, READ_BYTES // max(1, row_bytes * chunk_rows))


@functools.lru_cache(maxsize=None)
def _zeros_fn(shape: tuple[int, ...], dtype, sharding):
    return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)


def _zeros(shape, dtype, sharding) -> jax.Array:
    return _zeros_fn(shape, dtype, sharding)()


@functools.lru_cache(maxsize=None)
def _update_rows(sharding):
    # Rows arrive replicated over the target's mesh; each device keeps its own part of them.
    rows_sharding = NamedSharding(sharding.mesh, PartitionSpec()) if isinstance(sharding, NamedSharding) \
        else sharding
    return jax.jit(lambda out, rows, start: jax.lax.dynamic_update_slice_in_dim(out, rows, start, 0),
                   in_shardings=(sharding, rows_sharding, rows_sharding), out_shardings=sharding, donate_argnums=0)
