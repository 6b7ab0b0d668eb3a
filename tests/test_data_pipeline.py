"""The prefetching pipeline: order, parallelism, failures, bounded memory, early stop."""

import threading
import time

import pytest

from recap_jax.data import pipeline
from recap_jax.data.images import ImageError
from recap_jax.data.sources import Failure, Sample, WorkUnit


class _Concurrency:
    """Counts how many `prepare` calls run at once."""

    def __init__(self, seconds=0.05):
        self.active = self.peak = self.calls = 0
        self.lock = threading.Lock()
        self.seconds = seconds

    def __call__(self, sample):
        with self.lock:
            self.active += 1
            self.calls += 1
            self.peak = max(self.peak, self.active)
        time.sleep(self.seconds)
        with self.lock:
            self.active -= 1
        if sample.key == "bad":
            raise ImageError("not an image")
        if sample.key == "boom":
            raise RuntimeError("unexpected")
        return sample.key.upper()


def _samples(keys):
    return [Sample(k, f"src/{k}", b"") for k in keys]


def test_keeps_order_runs_in_parallel_and_reports_failures():
    prepare = _Concurrency()
    keys = ["a", "bad", "b", "c", "boom", "d", "e", "f"]
    items = _samples(keys) + [Failure("read", "x", "unreadable")]
    out = list(pipeline.prepared_samples(items, prepare, num_workers=4, prefetch=8))
    assert [o.key if isinstance(o, Failure) else o[0].key for o in out] == keys + ["read"]
    assert [o[1] for o in out if not isinstance(o, Failure)] == ["A", "B", "C", "D", "E", "F"]
    reasons = {o.key: o for o in out if isinstance(o, Failure)}
    assert reasons["bad"].reason == "not an image" and reasons["bad"].source == "src/bad"
    assert reasons["boom"].reason == "RuntimeError: unexpected"
    assert reasons["read"].reason == "unreadable"  # input failures pass through in place
    assert prepare.peak == 4  # all workers busy at once: decoding really overlaps


def test_prefetch_bounds_work_ahead_of_the_consumer():
    prepare = _Concurrency(seconds=0.0)
    stream = pipeline.prepared_samples(_samples([str(i) for i in range(100)]), prepare, num_workers=2, prefetch=5)
    next(stream)
    time.sleep(0.2)  # a slow consumer: the workers must not run far ahead
    assert prepare.calls <= 6
    stream.close()


def test_early_stop_and_input_errors():
    def broken_input():
        yield from _samples(["a", "b"])
        raise OSError("bucket went away")

    stream = pipeline.prepared_samples(broken_input(), _Concurrency(0.0), num_workers=2, prefetch=2)
    with pytest.raises(OSError, match="bucket went away"):
        list(stream)
    endless = (Sample(str(i), "s", b"") for i in range(10**9))
    stream = pipeline.prepared_samples(endless, _Concurrency(0.0), num_workers=2, prefetch=4)
    assert [next(stream)[1] for _ in range(3)] == ["0", "1", "2"]
    stream.close()  # returns: queued work is dropped and the reader thread stops
    with pytest.raises(ValueError):
        list(pipeline.prepared_samples([], str, num_workers=0, prefetch=1))


def test_prepared_units_tags_positions_and_ends_units():
    units = [WorkUnit(i, "folder", "root") for i in range(3)]
    contents = {0: _samples(["a", "bad"]), 1: [], 2: [Failure("x", "s", "no image")] + _samples(["b"])}
    out = list(pipeline.prepared_units(units, _Concurrency(0.01), num_workers=3, prefetch=4,
                                       read=lambda unit: contents[unit.index]))
    summary = [(type(o).__name__, o.unit.index, getattr(o, "position", getattr(o, "count", None))) for o in out]
    assert summary == [("UnitItem", 0, 0), ("UnitItem", 0, 1), ("UnitEnd", 0, 2), ("UnitEnd", 1, 0),
                       ("UnitItem", 2, 0), ("UnitItem", 2, 1), ("UnitEnd", 2, 2)]
    assert out[0].item[1] == "A" and isinstance(out[1].item, Failure) and out[5].item[1] == "B"
