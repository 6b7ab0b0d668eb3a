"""The prefetching pipeline: order, parallelism, failures, bounded memory, early stop."""

import threading
import time

import pytest

from recap_jax.data import pipeline
from recap_jax.errors import ImageError
from recap_jax.data.inputs import Failure, Sample
from recap_jax.data.inputs.folder import FolderUnit


class _Concurrency:
    """Counts how many `prepare` calls run at once."""

    def __init__(self, seconds=0.05, barrier: int = 0):
        self.active = self.peak = self.calls = 0
        self.lock = threading.Lock()
        self.seconds = seconds
        # The first `barrier` calls wait for each other: they pass only if they really run at once.
        self.barrier = threading.Barrier(barrier, timeout=10) if barrier else None

    def __call__(self, sample):
        with self.lock:
            self.active += 1
            self.calls += 1
            self.peak = max(self.peak, self.active)
            first_ones = self.barrier is not None and self.calls <= self.barrier.parties
        if first_ones:
            self.barrier.wait()  # raises BrokenBarrierError (-> a Failure) after 10 s otherwise
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
    prepare = _Concurrency(seconds=0.01, barrier=4)
    keys = ["a", "bad", "b", "c", "boom", "d", "e", "f"]
    items = _samples(keys) + [Failure("read", "x", "unreadable")]
    out = list(pipeline.prepared_samples(items, prepare, num_workers=4, prefetch=8))
    assert [o.key if isinstance(o, Failure) else o[0].key for o in out] == keys + ["read"]
    assert [o[1] for o in out if not isinstance(o, Failure)] == ["A", "B", "C", "D", "E", "F"]
    reasons = {o.key: o for o in out if isinstance(o, Failure)}
    assert reasons["bad"].reason == "not an image" and reasons["bad"].source == "src/bad"
    assert reasons["boom"].reason == "RuntimeError: unexpected"
    assert reasons["read"].reason == "unreadable"  # input failures pass through in place
    assert prepare.peak == 4  # all workers busy at once (the barrier proves it): decoding overlaps


def test_prefetch_bounds_work_ahead_of_the_consumer():
    # After one item is consumed the pipeline holds prefetch=5 samples submitted to the workers, and
    # the reader thread 5 more in its queue plus one in hand, blocked: 11 drawn from the input, and
    # never more while the consumer waits. Wait (for a state, not a fixed time) until it got there.
    drawn = []

    def source():
        for sample in _samples([str(i) for i in range(100)]):
            drawn.append(sample.key)
            yield sample

    prepare = _Concurrency(seconds=0.0)
    stream = pipeline.prepared_samples(source(), prepare, num_workers=2, prefetch=5)
    next(stream)
    deadline = time.time() + 60
    while (len(drawn) < 11 or prepare.calls < 5) and time.time() < deadline:
        time.sleep(0.01)
    assert (prepare.calls, len(drawn)) == (5, 11)  # reached the bound and stopped there
    assert next(stream)[1] == "1"  # consuming one more lets exactly one more in
    while len(drawn) < 12 and time.time() < deadline:
        time.sleep(0.01)
    assert len(drawn) == 12 and prepare.calls <= 6
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
    units = [FolderUnit(i, "root") for i in range(3)]
    contents = {0: _samples(["a", "bad"]), 1: [], 2: [Failure("x", "s", "no image")] + _samples(["b"])}
    out = list(pipeline.prepared_units(units, _Concurrency(0.01), num_workers=3, prefetch=4,
                                       read=lambda unit: contents[unit.index]))
    summary = [(type(o).__name__, o.unit.index, getattr(o, "position", getattr(o, "count", None))) for o in out]
    assert summary == [("UnitItem", 0, 0), ("UnitItem", 0, 1), ("UnitEnd", 0, 2), ("UnitEnd", 1, 0),
                       ("UnitItem", 2, 0), ("UnitItem", 2, 1), ("UnitEnd", 2, 2)]
    assert out[0].item[1] == "A" and isinstance(out[1].item, Failure) and out[5].item[1] == "B"


@pytest.mark.parametrize("fmt", ["folder", "webdataset", "tfds"])
def test_every_bad_image_is_decoded_or_failed_once_in_every_format(tmp_path, fmt):
    """All awkward images through each input format and the pipeline: each key exactly once,
    decoded, or failed with the expected reason."""
    from bad_images import cases
    from recap_jax.data import inputs
    from recap_jax.data.images import decode_image
    from recap_jax.data.writer import OutputDataset
    from webdataset_helpers import write_tar

    all_cases = cases()
    names = sorted(all_cases)
    if fmt == "folder":
        for name in names:
            (tmp_path / f"{name}.jpg").write_bytes(all_cases[name][0])  # everything named .jpg
        paths = str(tmp_path)
    elif fmt == "webdataset":
        write_tar(tmp_path / "a.tar", [(n, "jpg", all_cases[n][0], "alt") for n in names[:10]])
        write_tar(tmp_path / "b.tar", [(n, "jpg", all_cases[n][0], "alt") for n in names[10:]])
        paths = str(tmp_path / "*.tar")
    else:
        out = OutputDataset(str(tmp_path / "ds"), 1)
        out.write_unit(0, [{"key": n, "url": "", "org_caption": "alt", "re_caption": "", "image": all_cases[n][0],
                            "width": 0, "height": 0, "org_caption_length": 1, "re_caption_length": 0}
                           for n in names], [])
        assert out.finalize()
        paths = str(tmp_path / "ds")
    units = inputs.plan_work_units(fmt, paths, files_per_unit=7, records_per_unit=7)
    outcome = {}
    for entry in pipeline.prepared_units(units, lambda s: decode_image(s.image_bytes).size,
                                         num_workers=2, prefetch=4):
        if isinstance(entry, pipeline.UnitEnd):
            continue
        item = entry.item
        key = item.key if isinstance(item, Failure) else item[0].key
        assert key not in outcome, key
        outcome[key] = item.reason if isinstance(item, Failure) else None
    assert sorted(outcome) == names
    for name in names:
        expected = all_cases[name][1]
        assert (outcome[name] is None) if expected is None else (expected in outcome[name].lower()), name
