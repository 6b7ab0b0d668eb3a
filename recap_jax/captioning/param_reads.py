"""Reading a converted checkpoint's params into their target shardings, one leaf and one block
of chunks at a time.

Each leaf's TensorStore (the zarr3/OCDBT array Orbax wrote) is opened from Orbax's own read spec;
the target array is allocated on its devices and filled in place with donated updates, each from
a host read of at most `READ_BYTES` (whole storage chunks, along the first axis and, when one row
is larger, the second). Host memory beyond the placed params is then two reads (the one being
written and the next), not one leaf: a stacked 8B MLP weight ([32, 4096, 14336], 3.5 GiB in bf16)
is never on the host whole, and never in another dtype whole.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
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
    info = ocp_v0.type_handlers.ParamInfo(name=".".join(path), parent_dir=pytree_dir, ts_context=context,
                                          is_ocdbt_checkpoint=True, use_zarr3=True)
    spec = ocp_v0.type_handlers.get_json_tspec_read(info, use_ocdbt=True)
    try:
        return ts.open(spec, context=context).result()
    except ValueError as e:
        raise ConversionError(f"{pytree_dir}: cannot read param {'/'.join(path)} ({e}); "
                              "re-convert the checkpoint with `python -m recap_jax.convert`") from e


def read_leaf(store: ts.TensorStore, target: jax.ShapeDtypeStruct, name: str) -> jax.Array:
    """`store` placed as `target` (shape, dtype, sharding), read a block of chunks at a time."""
    shape, dtype = tuple(target.shape), jnp.dtype(target.dtype)
    if tuple(store.shape) != shape:
        raise ConversionError(f"param {name}: checkpoint has shape {tuple(store.shape)}, the model "
                              f"expects {shape}; is model.checkpoint converted for this config?")
    block = read_block(store, dtype)
    if block == shape or not math.prod(shape):
        return jax.device_put(np.asarray(store.read().result(), dtype), target.sharding)
    out = _zeros(shape, dtype, target.sharding)
    update = block_update(target.sharding)
    for start in itertools.product(*(range(0, n, b) for n, b in zip(shape, block))):
        index = tuple(slice(s, min(s + b, n)) for s, b, n in zip(start, block, shape))
        host = np.asarray(store[index].read().result(), dtype)
        # Wait for the previous update (it holds its read until done): reads cannot pile up
        # behind the updates, however much faster they are.
        out.block_until_ready()
        out = update(out, host, np.asarray(start, np.int32))
        del host
    return out


def read_block(store: ts.TensorStore, dtype) -> tuple[int, ...]:
    """The shape of one read of `store` into `dtype`: whole storage chunks, at most `READ_BYTES`
    (at least one chunk), split along axis 0 and, when one chunk row of axis 0 is larger, axis 1."""
    shape = tuple(store.shape)
    if not shape:
        return shape
    itemsize = max(jnp.dtype(dtype).itemsize, store.dtype.numpy_dtype.itemsize)
    chunk = [c or n for c, n in zip(store.chunk_layout.read_chunk.shape, shape)]
    block = list(shape)
    for axis in range(min(2, len(shape))):
        slab = math.prod(block[:axis]) * chunk[axis] * math.prod(shape[axis + 1:]) * itemsize
        if slab <= READ_BYTES:  # whole chunk-thick slabs along this axis fit a read
            block[axis] = min(shape[axis], chunk[axis] * (READ_BYTES // slab))
            break
        block[axis] = chunk[axis]
    return tuple(block)


def _in_place_options(sharding) -> dict[str, str] | None:
    # XLA:CPU computes bf16 ops in f32 (its float normalisation), even a dynamic-update-slice:
    # each update then rewrote the whole leaf through f32 instead of writing one block in
    # place (0.25 s per block of a 501 MiB leaf). These programs only move data, so on CPU they
    # are compiled without it; on TPU bf16 is native and nothing changes.
    if all(d.platform == "cpu" for d in sharding.device_set):
        return {"xla_disable_hlo_passes": "float-normalization-bf16"}
    return None


@functools.lru_cache(maxsize=None)
def _zeros_fn(shape: tuple[int, ...], dtype, sharding):
    return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding,
                   compiler_options=_in_place_options(sharding))


def _zeros(shape, dtype, sharding) -> jax.Array:
    return _zeros_fn(shape, dtype, sharding)()


@functools.lru_cache(maxsize=None)
def block_update(sharding):
    """`(leaf, block, start) -> leaf` with `block` written at `start`, in place (the leaf is donated).
    Blocks arrive replicated over the target's mesh; each device keeps its own part of them."""
    block_sharding = NamedSharding(sharding.mesh, PartitionSpec()) if isinstance(sharding, NamedSharding) \
        else sharding

    def update(out, block, start):
        return jax.lax.dynamic_update_slice(out, block, tuple(start[i] for i in range(out.ndim)))

    return jax.jit(update, in_shardings=(sharding, block_sharding, block_sharding), out_shardings=sharding,
                   donate_argnums=0, compiler_options=_in_place_options(sharding))
