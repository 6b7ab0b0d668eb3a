"""Decode and pre-process samples in worker threads, ahead of the device, in input order.

PIL's decoders and resizers release the GIL, so threads decode JPEGs in parallel while the main
thread drives the accelerator. Reading the input (tar or gs:// I/O) runs in its own thread too.
Memory is bounded: at most `prefetch` samples are being prepared or waiting to be consumed, and at
most `prefetch` more have been read ahead.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Generic, TypeVar

from recap_jax.data.inputs import Failure, Sample, WorkUnit, read_unit
from recap_jax.errors import ImageError

T = TypeVar("T")
_DONE = object()


def _run(prepare: Callable[[Sample], T], sample: Sample) -> tuple[Sample, T] | Failure:
    try:
        return sample, prepare(sample)
    except ImageError as e:
        return Failure(sample.key, sample.source, e.reason)
    except Exception as e:  # noqa: BLE001 - one bad sample must not stop the run
        return Failure(sample.key, sample.source, f"{type(e).__name__}: {e}")


class _ReadAhead:
    """Iterates `items` in a background thread into a bounded queue; re-raises its errors here."""

    def __init__(self, items: Iterable[Any], size: int):
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(iter(items),), daemon=True,
                                        name="read-ahead")
        self._thread.start()

    def _put(self, entry) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self, items: Iterator[Any]) -> None:
        try:
            for item in items:
                if not self._put((item, None)):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, who re-raises it
            self._put((_DONE, e))
            return
        self._put((_DONE, None))

    def __iter__(self) -> Iterator[Any]:
        while True:
            item, error = self._queue.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _ordered_map(entries: Iterable[Any], submit: Callable[[Any], Any | None], *, num_workers: int,
                 prefetch: int, read_ahead: bool) -> Iterator[Any]:
    """Entries, in order, each replaced by its prepared result where `submit` starts a job.

    `submit(pool, entry)` returns a Future, or None to pass the entry through unchanged.
    """
    if num_workers < 1:
        raise ValueError(f"num_workers={num_workers}: must be >= 1")
    prefetch = max(prefetch, num_workers)
    source = _ReadAhead(entries, prefetch) if read_ahead else None
    pool = concurrent.futures.ThreadPoolExecutor(num_workers, thread_name_prefix="prepare")
    in_flight: collections.deque = collections.deque()
    try:
        for entry in (source if source is not None else entries):
            future = submit(pool, entry)
            in_flight.append((future, entry))
            while len(in_flight) >= prefetch:
                yield _result(*in_flight.popleft())
        while in_flight:
            yield _result(*in_flight.popleft())
    finally:  # also when the consumer stops early: drop queued work, stop the reader
        pool.shutdown(wait=True, cancel_futures=True)
        if source is not None:
            source.close()


def _result(future, entry):
    return entry if future is None else future.result()


def prepared_samples(samples: Iterable[Sample | Failure], prepare: Callable[[Sample], T], *,
                     num_workers: int, prefetch: int,
                     read_ahead: bool = True) -> Iterator[tuple[Sample, T] | Failure]:
    """(sample, prepare(sample)) or a Failure for each input, in input order.

    `prepare` runs in `num_workers` threads; an exception it raises becomes a Failure (ImageError:
    its reason; anything else: "TypeName: message"). Failures in the input pass through in place.
    """
    def submit(pool, item):
        return None if isinstance(item, Failure) else pool.submit(_run, prepare, item)

    yield from _ordered_map(samples, submit, num_workers=num_workers, prefetch=prefetch, read_ahead=read_ahead)


@dataclasses.dataclass(frozen=True)
class UnitItem(Generic[T]):
    unit: WorkUnit
    position: int  # the sample's position within its unit
    item: tuple[Sample, T] | Failure


@dataclasses.dataclass(frozen=True)
class UnitEnd:
    unit: WorkUnit
    count: int  # how many UnitItems the unit had


def prepared_units(units: Sequence[WorkUnit], prepare: Callable[[Sample], T], *, num_workers: int,
                   prefetch: int, read: Callable[[WorkUnit], Iterable[Sample | Failure]] = read_unit,
                   ) -> Iterator[UnitItem[T] | UnitEnd]:
    """Like `prepared_samples` over several units, without draining the workers between units:
    each unit's items (in order, tagged with their position), then its UnitEnd."""
    def entries():
        for unit in units:
            count = 0
            for count, item in enumerate(read(unit), start=1):
                yield UnitItem(unit, count - 1, item)
            yield UnitEnd(unit, count)

    def submit(pool, entry):
        if isinstance(entry, UnitEnd) or isinstance(entry.item, Failure):
            return None
        unit, position, sample = entry.unit, entry.position, entry.item
        return pool.submit(lambda: UnitItem(unit, position, _run(prepare, sample)))

    yield from _ordered_map(entries(), submit, num_workers=num_workers, prefetch=prefetch, read_ahead=True)
