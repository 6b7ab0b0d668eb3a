"""Decode and pre-process samples in worker threads, ahead of the device, in input order.

PIL's decoders and resizers release the GIL, so threads decode JPEGs in parallel while the main
thread drives the accelerator. `prefetch` bounds how many samples are in flight (memory).
"""

from __future__ import annotations

import collections
import concurrent.futures
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from recap_jax.data.images import ImageError
from recap_jax.data.sources import Failure, Sample

T = TypeVar("T")


def _run(prepare: Callable[[Sample], T], sample: Sample) -> tuple[Sample, T] | Failure:
    try:
        return sample, prepare(sample)
    except ImageError as e:
        return Failure(sample.key, sample.source, e.reason)
    except Exception as e:  # noqa: BLE001 - one bad sample must not stop the run
        return Failure(sample.key, sample.source, f"{type(e).__name__}: {e}")


def prepared_samples(samples: Iterable[Sample | Failure], prepare: Callable[[Sample], T], *,
                     num_workers: int, prefetch: int) -> Iterator[tuple[Sample, T] | Failure]:
    """(sample, prepare(sample)) or a Failure for each input, in input order."""
    prefetch = max(prefetch, num_workers)
    with concurrent.futures.ThreadPoolExecutor(num_workers, thread_name_prefix="prepare") as pool:
        in_flight: collections.deque = collections.deque()
        for item in samples:
            if isinstance(item, Failure):
                in_flight.append(item)
            else:
                in_flight.append(pool.submit(_run, prepare, item))
            while len(in_flight) >= prefetch:
                yield _result(in_flight.popleft())
        while in_flight:
            yield _result(in_flight.popleft())


def _result(entry):
    return entry if isinstance(entry, Failure) else entry.result()
