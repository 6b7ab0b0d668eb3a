"""The caption job's lease on its output folder (data/lease.py), shared by the hosts of one run.

Process 0 takes the lease for the whole run with a run id of its own and tells the other hosts
whether it got it, so a second launch on a pod refuses on every host, and the workers of one
launch never refuse each other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TypeVar

import jax
import ml_collections
import numpy as np

from recap_jax.data import lease as lease_lib
from recap_jax.data.lease import Lease
from recap_jax.errors import UserError

T = TypeVar("T")


def hold(config: ml_collections.ConfigDict) -> contextlib.AbstractContextManager[Lease | None]:
    """Hold the output lease while the body runs (process 0 holds it; others get None)."""
    out = config.output
    return lease_lib.hold(out.dir, field="output.dir", stale_s=out.lease_stale_s, heartbeat_s=out.lease_heartbeat_s)


def process_0_first(fn: Callable[[], T], what: str) -> T:
    """fn() on process 0, then on the others (e.g. open the output folder: process 0 may clean it
    for output.overwrite and records the run's identity first). A user error on process 0 stops
    every process, with its message there and a pointer to it elsewhere."""
    if jax.process_count() == 1:
        return fn()
    from jax.experimental import multihost_utils
    result, error = None, None
    if jax.process_index() == 0:
        try:
            result = fn()
        except UserError as e:
            error = e
    ok = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if error is not None:
        raise error
    if not ok:
        raise UserError(f"{what}: failed on host 0 (see its message)")
    return fn() if jax.process_index() != 0 else result
