"""Measurements the benchmarks share (importable from the interpreter of either side: no jax at
import time, since the open_clip side runs in its own venv)."""

from __future__ import annotations

import resource
import time

import numpy as np


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def dense_matmul_flops(n: int = 2048, repeats: int = 10) -> float:
    """This machine's float32 FLOP/s on a large square `jnp.dot`: the roofline's peak."""
    import jax
    import jax.numpy as jnp
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    f = jax.jit(lambda x: jnp.dot(x, x))
    f(a).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        out = f(a)
    out.block_until_ready()
    return 2 * n**3 * repeats / (time.perf_counter() - start)
