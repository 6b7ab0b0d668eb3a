"""The webdataset input format: img2dataset tar shards, damaged tars and flaky reads."""

import gzip
import io
import tarfile

import pytest

from bad_images import cases, good_jpeg
from input_helpers import keys_of, read_all
from recap_jax.data import inputs, storage
from recap_jax.data.images import decode_image
from recap_jax.data.inputs import Failure, Sample, webdataset
from recap_jax.errors import ConfigError, ImageError
from webdataset_helpers import write_tar


def _tar_bytes(members):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


# --- webdataset ---------------------------------------------------------------------------------



def test_webdataset_units_and_samples(tmp_path):
    for shard in range(3):
        write_tar(tmp_path / f"{shard:05d}.tar",
                  [(f"{shard:05d}{i:04d}", "jpg", good_jpeg(), f"caption {shard} {i}") for i in range(4)])
    units = inputs.plan_work_units("webdataset", str(tmp_path / "*.tar"))
    assert [u.index for u in units] == [0, 1, 2]
    samples = list(inputs.read_unit(units[1]))
    assert [s.key for s in samples] == [f"00001{i:04d}" for i in range(4)]
    assert samples[2].org_caption == "caption 1 2" and samples[2].url == "http://example.com/000010002.jpg"
    assert samples[0].source == "00001.tar:000010000.jpg" and samples[0].meta["key"] == "000010000"
    assert samples[0].image_bytes == good_jpeg()


def test_brace_patterns_and_duplicates(tmp_path):
    for shard in range(4):
        write_tar(tmp_path / f"s-{shard:03d}.tar", [(f"{shard}", "jpg", good_jpeg(), "c")])
    pattern = str(tmp_path / "s-{001..003}.tar")
    units = inputs.plan_work_units("webdataset", f"{pattern},{tmp_path}/s-002.tar")  # s-002 named twice
    assert [u.path.rsplit("/", 1)[1] for u in units] == ["s-001.tar", "s-002.tar", "s-003.tar"]
    assert inputs.expand_braces("a{0..2}-{x,y}") == ["a0-x", "a0-y", "a1-x", "a1-y", "a2-x", "a2-y"]
    with pytest.raises(ConfigError, match=r"input\.paths: nothing matches .*s-004"):
        inputs.plan_work_units("webdataset", str(tmp_path / "s-{003..004}.tar"))


def test_truncated_tar_keeps_what_was_read_and_accounts_for_the_rest(tmp_path):
    keys = [f"k{i}" for i in range(6)]
    write_tar(tmp_path / "a.tar", [(k, "jpg", good_jpeg(200, 200), "c") for k in keys])
    data = (tmp_path / "a.tar").read_bytes()
    with tarfile.open(tmp_path / "a.tar") as tar:
        last = tar.getmembers()[-1]
        members_end = last.offset_data + (last.size + 511) // 512 * 512
    # Cut inside a member, at some other point, and exactly before the end-of-archive blocks
    # (a tar cut at a member boundary reads as a shorter valid tar: only the marker tells).
    for cut in (len(data) // 2, len(data) // 2 + 700, members_end):
        (tmp_path / "a.tar").write_bytes(data[:cut])
        items = read_all(inputs.plan_work_units("webdataset", str(tmp_path)))
        good = [i for i in items if isinstance(i, Sample)]
        bad = [i for i in items if isinstance(i, Failure)]
        assert 1 <= len(good) < 6, cut
        assert bad[-1].key == "a.tar#rest" and "tar unreadable" in bad[-1].reason
        # The sample being read at the cut fails; each key appears at most once, in order.
        assert "truncated" in bad[0].reason and bad[0].key == keys[len(good)]
        assert keys_of(items[:-1]) == keys[:len(good) + 1]
        for sample in good:
            decode_image(sample.image_bytes)  # what was kept is whole


def test_gzipped_tar_and_truncated_gzip(tmp_path):
    write_tar(tmp_path / "plain.tar", [(f"k{i}", "png", good_jpeg(), "c") for i in range(3)])
    packed = gzip.compress((tmp_path / "plain.tar").read_bytes())
    (tmp_path / "a.tar.gz").write_bytes(packed)
    (tmp_path / "plain.tar").unlink()
    (unit,) = inputs.plan_work_units("webdataset", str(tmp_path))
    assert keys_of(inputs.read_unit(unit)) == ["k0", "k1", "k2"]
    (tmp_path / "a.tar.gz").write_bytes(packed[: len(packed) * 2 // 3])
    items = list(inputs.read_unit(unit))
    assert isinstance(items[-1], Failure) and items[-1].key == "a.tar.gz#rest"


def test_members_grouped_by_key_even_when_not_adjacent(tmp_path, monkeypatch):
    members = [("a.jpg", good_jpeg()), ("b.jpg", good_jpeg()), ("a.txt", b"alt a"), ("b.json", b'{"url": "u"}'),
               ("c.txt", b"caption without image"), (".hidden.jpg", b"x"), ("d.jpg", good_jpeg()),
               ("b.txt", b"alt b"), ("late/x.jpg", good_jpeg())]
    (tmp_path / "t.tar").write_bytes(_tar_bytes(members))
    (unit,) = inputs.plan_work_units("webdataset", str(tmp_path / "t.tar"))
    items = list(inputs.read_unit(unit))
    assert keys_of(items) == ["a", "b", "c", "d", "late/x"]
    assert items[0].org_caption == "alt a" and items[1].org_caption == "alt b" and items[1].url == "u"
    assert isinstance(items[2], Failure) and "no image" in items[2].reason
    # With a window of 1 key, "b.txt" arrives after "b" was released: ignored, "b" still once.
    monkeypatch.setattr(webdataset, "TAR_REORDER_WINDOW", 1)
    items = list(inputs.read_unit(unit))
    assert keys_of(items) == ["a", "b", "c", "d", "late/x"] and items[1].org_caption == ""


def test_good_and_bad_members_all_accounted_for(tmp_path):
    """Every awkward image in a tar: decoded, or a Failure with the expected reason; each key once."""
    all_cases = cases()
    write_tar(tmp_path / "bad.tar", [(name, "jpg", data, f"alt {name}") for name, (data, _) in all_cases.items()])
    (unit,) = inputs.plan_work_units("webdataset", str(tmp_path))
    outcome = {}
    for item in inputs.read_unit(unit):
        assert item.key not in outcome
        if isinstance(item, Failure):
            outcome[item.key] = item.reason
            continue
        try:
            decode_image(item.image_bytes)
            outcome[item.key] = None
        except ImageError as e:
            outcome[item.key] = e.reason
    assert set(outcome) == set(all_cases)
    for name, (_, expected) in all_cases.items():
        assert (outcome[name] is None) if expected is None else (expected in outcome[name].lower()), name


# --- folders -----------------------------------------------------------------------------------



class _FlakyFile(io.BytesIO):
    """A file whose reads fail (like a dropped gs:// connection) once past `fail_at` bytes."""

    def __init__(self, data, fail_at):
        super().__init__(data)
        self.fail_at = fail_at

    def read(self, size=-1):
        if self.fail_at is not None and self.tell() + (size if size >= 0 else 10**12) > self.fail_at:
            raise ConnectionResetError("connection reset by peer")
        return super().read(size)


def test_transient_io_errors_are_retried(tmp_path, monkeypatch):
    keys = [f"k{i}" for i in range(8)]
    write_tar(tmp_path / "a.tar", [(k, "jpg", good_jpeg(100, 100), "c") for k in keys])
    data = (tmp_path / "a.tar").read_bytes()
    (unit,) = inputs.plan_work_units("webdataset", str(tmp_path))
    monkeypatch.setattr(storage, "IO_BACKOFF_S", 0.0)
    monkeypatch.setattr(webdataset, "TAR_REORDER_WINDOW", 2)  # samples are yielded before the error

    fail_points = [len(data) * 3 // 4, len(data) // 3]  # the 2nd attempt breaks earlier than the 1st
    opened = []

    def flaky_open(path):
        opened.append(path)
        return _FlakyFile(data, fail_points.pop(0) if fail_points else None)

    monkeypatch.setattr(webdataset, "_open_binary", flaky_open)
    items = list(inputs.read_unit(unit))
    assert len(opened) == 3 and keys_of(items) == keys and all(isinstance(i, Sample) for i in items)

    # An error that persists: what was read is kept, one Failure stands for the rest, each key once.
    monkeypatch.setattr(webdataset, "_open_binary", lambda path: _FlakyFile(data, len(data) // 2))
    items = list(inputs.read_unit(unit))
    assert items[-1].key == "a.tar#rest" and "ConnectionResetError" in items[-1].reason
    assert len(set(keys_of(items))) == len(items) and 1 <= sum(isinstance(i, Sample) for i in items) < 8


