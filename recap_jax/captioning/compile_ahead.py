"""Compile the caption job's programs in background threads while its weights load.

The sampler's jitted functions (`decoding.programs.decode_programs`) are lowered with abstract
arguments (`decoding.lowering.lower_caption_programs`: the shapes and shardings the sampler
calls them with) and compiled, each program in its own thread, while the main thread reads and
places the weights. An AOT compile fills the jit's own cache, so the sampler's first calls
compile nothing. XLA compiles outside the GIL: on a small CPU host the compiles run beside
each other and beside the weight reads instead of one after another before the first caption.
"""

from __future__ import annotations

import concurrent.futures
import os

import jax
from jax.sharding import Mesh

from recap_jax.decoding.programs import DecodePrograms
from recap_jax.decoding.settings import DecodeSettings
from recap_jax.models.llava import LlavaModel
from recap_jax.decoding.lowering import lower_caption_programs


class CompileAhead:
    """The programs' compiles, started at construction; `wait()` before the first call (a call
    that races its own compile would compile the program a second time)."""

    def __init__(self, model: LlavaModel, settings: DecodeSettings, mesh: Mesh, dtype,
                 programs: DecodePrograms, pixels_dtype, boxed_params=None):
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=3, thread_name_prefix="compile")
        self._futures: list[concurrent.futures.Future] = []
        # The smallest bucket only: the prompt's own length (an `{org_caption}` prompt's other
        # buckets compile when a longer alt-text first needs one).
        bucket = min(settings.prompt_buckets)
        self._lowering = self._pool.submit(self._lower_and_compile, model, settings, mesh, dtype, programs,
                                           bucket, pixels_dtype, boxed_params)

    def _lower_and_compile(self, model, settings, mesh, dtype, programs, bucket, pixels_dtype, boxed_params):
        self._futures.append(self._pool.submit(lambda: programs.init.lower().compile()))
        lowered = lower_caption_programs(model, settings, mesh, dtype, [bucket], programs=programs,
                                         pixels_dtype=pixels_dtype, boxed_params=boxed_params)
        # Decode first: the larger compile, started while prefill is still being lowered.
        self._futures.append(self._pool.submit(lowered.decode.compile))
        self._futures.append(self._pool.submit(lowered.prefill[bucket].compile))

    def wait(self) -> None:
        """Block until every compile has finished; a failed compile raises here."""
        self._lowering.result()
        for future in self._futures:
            future.result()
        self._pool.shutdown(wait=False)


def compile_ahead(model: LlavaModel, settings: DecodeSettings, mesh: Mesh, dtype, programs: DecodePrograms,
                  pixels_dtype=jax.numpy.float32, boxed_params=None) -> CompileAhead:
    """Start compiling `programs` for the caption job (see `CompileAhead`); `boxed_params`: the
    model's boxed abstract params if the caller has them (else traced here)."""
    return CompileAhead(model, settings, mesh, dtype, programs, pixels_dtype, boxed_params)


def use_compile_cache(path: str) -> None:
    """Keep compiled programs in `path` (`compile_cache_dir`; "" = no cache). A cache folder JAX
    already has (JAX_COMPILATION_CACHE_DIR) wins over a non-empty `path`. Call it before the
    process's first compile: JAX decides once per process whether it has a cache."""
    if not path:
        jax.config.update("jax_compilation_cache_dir", None)
    elif not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
