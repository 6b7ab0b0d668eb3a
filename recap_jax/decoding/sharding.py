"""Where the decode state lives on a mesh: every array split over the slot (batch) axis."""

from collections.abc import Callable

from jax.sharding import Mesh

from recap_jax.decoding.sampler import DecodeState
from recap_jax.models.llama import KV_CACHE_AXES, KVCache
from recap_jax.parallel.mesh import logical_sharding


def decode_state_shardings(mesh: Mesh) -> Callable[[DecodeState], DecodeState]:
    def shardings(state: DecodeState) -> DecodeState:
        del state  # the layout does not depend on the sizes
        batch = logical_sharding(mesh, ("batch",))
        cache = logical_sharding(mesh, KV_CACHE_AXES)
        return DecodeState(cache=KVCache(cache, cache), last_token=batch, position=batch,
                           generated=logical_sharding(mesh, ("batch", None)), num_generated=batch, done=batch)
    return shardings
