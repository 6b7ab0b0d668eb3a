"""Input sources: planning work units and reading samples from folders, tars and TFDS/ArrayRecord."""

import gzip
import io
import json
import tarfile

import pytest

from bad_images import cases, good_jpeg
from recap_jax.data import sources
from recap_jax.data.images import decode_image
from recap_jax.data.sources import Failure, Sample, TfdsFields
from recap_jax.errors import ConfigError, ImageError
from recap_jax.data.writer import OutputDataset
from webdataset_helpers import write_tar


def _record(key, caption="c"):
    return {"key": key, "url": f"http://x/{key}", "org_caption": f"alt {key}", "re_caption": caption,
            "image": b"\xff\xd8" + key.encode(), "width": 2, "height": 3, "org_caption_length": 2,
            "re_caption_length": 1, "sha256": "0" * 64}


def _read_all(units):
    return [item for unit in units for item in sources.read_unit(unit)]


def _keys(items):
    return [item.key for item in items]


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
    units = sources.plan_work_units("webdataset", str(tmp_path / "*.tar"))
    assert [u.index for u in units] == [0, 1, 2]
    samples = list(sources.read_unit(units[1]))
    assert [s.key for s in samples] == [f"00001{i:04d}" for i in range(4)]
    assert samples[2].org_caption == "caption 1 2" and samples[2].url == "http://example.com/000010002.jpg"
    assert samples[0].source == "00001.tar:000010000.jpg" and samples[0].meta["key"] == "000010000"
    assert samples[0].image_bytes == good_jpeg()


def test_brace_patterns_and_duplicates(tmp_path):
    for shard in range(4):
        write_tar(tmp_path / f"s-{shard:03d}.tar", [(f"{shard}", "jpg", good_jpeg(), "c")])
    pattern = str(tmp_path / "s-{001..003}.tar")
    units = sources.plan_work_units("webdataset", f"{pattern},{tmp_path}/s-002.tar")  # s-002 named twice
    assert [u.path.rsplit("/", 1)[1] for u in units] == ["s-001.tar", "s-002.tar", "s-003.tar"]
    assert sources.expand_braces("a{0..2}-{x,y}") == ["a0-x", "a0-y", "a1-x", "a1-y", "a2-x", "a2-y"]
    with pytest.raises(ConfigError, match=r"input\.paths: nothing matches .*s-004"):
        sources.plan_work_units("webdataset", str(tmp_path / "s-{003..004}.tar"))


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
        items = _read_all(sources.plan_work_units("webdataset", str(tmp_path)))
        good = [i for i in items if isinstance(i, Sample)]
        bad = [i for i in items if isinstance(i, Failure)]
        assert 1 <= len(good) < 6, cut
        assert bad[-1].key == "a.tar#rest" and "tar unreadable" in bad[-1].reason
        # The sample being read at the cut fails; each key appears at most once, in order.
        assert "truncated" in bad[0].reason and bad[0].key == keys[len(good)]
        assert _keys(items[:-1]) == keys[:len(good) + 1]
        for sample in good:
            decode_image(sample.image_bytes)  # what was kept is whole


def test_gzipped_tar_and_truncated_gzip(tmp_path):
    write_tar(tmp_path / "plain.tar", [(f"k{i}", "png", good_jpeg(), "c") for i in range(3)])
    packed = gzip.compress((tmp_path / "plain.tar").read_bytes())
    (tmp_path / "a.tar.gz").write_bytes(packed)
    (tmp_path / "plain.tar").unlink()
    (unit,) = sources.plan_work_units("webdataset", str(tmp_path))
    assert _keys(sources.read_unit(unit)) == ["k0", "k1", "k2"]
    (tmp_path / "a.tar.gz").write_bytes(packed[: len(packed) * 2 // 3])
    items = list(sources.read_unit(unit))
    assert isinstance(items[-1], Failure) and items[-1].key == "a.tar.gz#rest"


def test_members_grouped_by_key_even_when_not_adjacent(tmp_path, monkeypatch):
    members = [("a.jpg", good_jpeg()), ("b.jpg", good_jpeg()), ("a.txt", b"alt a"), ("b.json", b'{"url": "u"}'),
               ("c.txt", b"caption without image"), (".hidden.jpg", b"x"), ("d.jpg", good_jpeg()),
               ("b.txt", b"alt b"), ("late/x.jpg", good_jpeg())]
    (tmp_path / "t.tar").write_bytes(_tar_bytes(members))
    (unit,) = sources.plan_work_units("webdataset", str(tmp_path / "t.tar"))
    items = list(sources.read_unit(unit))
    assert _keys(items) == ["a", "b", "c", "d", "late/x"]
    assert items[0].org_caption == "alt a" and items[1].org_caption == "alt b" and items[1].url == "u"
    assert isinstance(items[2], Failure) and "no image" in items[2].reason
    # With a window of 1 key, "b.txt" arrives after "b" was released: ignored, "b" still once.
    monkeypatch.setattr(sources, "TAR_REORDER_WINDOW", 1)
    items = list(sources.read_unit(unit))
    assert _keys(items) == ["a", "b", "c", "d", "late/x"] and items[1].org_caption == ""


def test_good_and_bad_members_all_accounted_for(tmp_path):
    """Every awkward image in a tar: decoded, or a Failure with the expected reason; each key once."""
    all_cases = cases()
    write_tar(tmp_path / "bad.tar", [(name, "jpg", data, f"alt {name}") for name, (data, _) in all_cases.items()])
    (unit,) = sources.plan_work_units("webdataset", str(tmp_path))
    outcome = {}
    for item in sources.read_unit(unit):
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


def test_folder_units_keys_and_sidecars(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b", "a", "sub/c"):
        (tmp_path / f"{name}.jpg").write_bytes(good_jpeg())
    (tmp_path / "a.txt").write_text("alt text of a\n")
    (tmp_path / "b.json").write_text(json.dumps({"url": "http://b", "caption": "json caption of b"}))
    (tmp_path / "notes.md").write_text("not an image")
    (tmp_path / ".DS_Store.jpg").write_bytes(b"hidden")
    units = sources.plan_work_units("folder", str(tmp_path), files_per_unit=2)
    assert [len(u.files) for u in units] == [2, 1] and [u.index for u in units] == [0, 1]
    samples = _read_all(units)
    assert _keys(samples) == ["a", "b", "sub/c"]
    assert samples[0].org_caption == "alt text of a" and samples[0].url == ""
    assert samples[1].org_caption == "json caption of b" and samples[1].url == "http://b"
    assert samples[2].source == str(tmp_path / "sub" / "c.jpg")


def test_folder_keys_stay_unique(tmp_path):
    for root in ("r1", "r2"):
        (tmp_path / root).mkdir()
        (tmp_path / root / "same.jpg").write_bytes(good_jpeg())
    (tmp_path / "r1" / "cat.jpg").write_bytes(good_jpeg())
    (tmp_path / "r1" / "cat.png").write_bytes(b"not really")
    units = sources.plan_work_units("folder", [str(tmp_path / "r1"), str(tmp_path / "r2")])
    keys = _keys(_read_all(units))
    assert len(keys) == len(set(keys)) == 4
    assert "cat.jpg" in keys and "cat.png" in keys


def test_unreadable_file_is_a_failure(tmp_path):
    (tmp_path / "gone.jpg").write_bytes(good_jpeg())
    (unit,) = sources.plan_work_units("folder", str(tmp_path))
    (tmp_path / "gone.jpg").unlink()  # removed between planning and reading
    (item,) = sources.read_unit(unit)
    assert isinstance(item, Failure) and item.key == "gone" and "unreadable" in item.reason


# --- TFDS and ArrayRecord --------------------------------------------------------------------------


def _recap_dataset(folder, units):
    out = OutputDataset(str(folder), len(units))
    for i, keys in enumerate(units):
        out.write_unit(i, [_record(k) for k in keys], [])
    assert out.finalize()
    return out


def test_tfds_input_reads_a_recap_dataset(tmp_path):
    _recap_dataset(tmp_path / "ds", [["x", "y"], ["z"]])
    units = sources.plan_work_units("tfds", str(tmp_path / "ds"), records_per_unit=2)
    assert [(u.start, u.stop, u.split) for u in units] == [(0, 2, "train"), (2, 3, "train")]
    samples = _read_all(units)
    assert _keys(samples) == ["x", "y", "z"]
    assert samples[0].image_bytes == b"\xff\xd8x" and samples[0].org_caption == "alt x"
    assert samples[0].url == "http://x/x" and samples[0].source == "ds[0]"


def test_tfds_field_names_are_configurable(tmp_path):
    _recap_dataset(tmp_path / "ds", [["x"]])
    fields = TfdsFields(key=("no_such_field",), caption=("re_caption",), url=("key",))
    (sample,) = _read_all(sources.plan_work_units("tfds", str(tmp_path / "ds"), fields=fields))
    assert sample.key == "0" and sample.org_caption == "c" and sample.url == "x"
    with pytest.raises(ConfigError, match=r"input\.split"):
        sources.plan_work_units("tfds", str(tmp_path / "ds"), split="validation")
    (failure,) = _read_all(sources.plan_work_units("tfds", str(tmp_path / "ds"),
                                                   fields=TfdsFields(image=("pixels",))))
    assert isinstance(failure, Failure) and "no encoded image" in failure.reason


def test_bare_array_record_files(tmp_path):
    out = _recap_dataset(tmp_path / "ds", [["x", "y"], ["z"]])
    units = sources.plan_work_units("tfds", str(tmp_path / "ds" / "recap-train.array_record-*"),
                                    records_per_unit=1)
    assert [(u.split, u.start) for u in units] == [("", 0), ("", 1), ("", 0)]
    samples = _read_all(units)
    assert _keys(samples) == ["x", "y", "z"] and samples[2].image_bytes == b"\xff\xd8z"
    assert samples[1].org_caption == "alt y" and samples[1].url == "http://x/y"
    assert out.shard_path(0).exists()


def test_corrupt_record_is_a_failure(tmp_path):
    from array_record.python.array_record_module import ArrayRecordWriter
    good = sources.parse_tf_example  # the records are tf.train.Examples
    out = _recap_dataset(tmp_path / "ds", [["x"]])
    raw = bytes(out.features.serialize_example(_record("w")))
    assert good(raw)["key"] == b"w"
    writer = ArrayRecordWriter(str(tmp_path / "mixed.array_record"), "group_size:1")
    for payload in (raw, b"\x0a\xff\xff garbage", raw):
        writer.write(payload)
    writer.close()
    items = _read_all(sources.plan_work_units("tfds", str(tmp_path / "mixed.array_record")))
    assert [type(i).__name__ for i in items] == ["Sample", "Failure", "Sample"]
    assert items[1].key == "1" and "unreadable record" in items[1].reason


# --- config errors and host shares ----------------------------------------------------------------


@pytest.mark.parametrize("fmt,paths,field", [
    ("zip", "x", "input.format"), ("folder", "/no/such/dir", "input.paths"), ("webdataset", "", "input.paths"),
    ("webdataset", "/no/such/*.tar", "input.paths"), ("tfds", "/tmp", "input.paths")])
def test_bad_input_config_names_the_field(fmt, paths, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        sources.plan_work_units(fmt, paths)


def test_bad_unit_sizes_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"input\.files_per_unit"):
        sources.plan_work_units("folder", str(tmp_path), files_per_unit=0)
    (tmp_path / "x.txt").write_text("no images here")
    with pytest.raises(ConfigError, match=r"input\.paths: no image files"):
        sources.plan_work_units("folder", str(tmp_path))
    with pytest.raises(ConfigError, match=r"input\.paths: no tar shards"):
        sources.plan_work_units("webdataset", str(tmp_path))


@pytest.mark.parametrize("hosts", range(1, 9))
def test_units_for_hosts_are_disjoint_and_cover(hosts):
    units = [sources.WorkUnit(i, "webdataset", f"{i}.tar") for i in range(13)]
    shares = [sources.units_for_host(units, h, hosts) for h in range(hosts)]
    indices = sorted(u.index for share in shares for u in share)
    assert indices == list(range(13))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    with pytest.raises(ValueError):
        sources.units_for_host(units, hosts, hosts)


def test_plan_is_deterministic_and_fingerprinted(tmp_path):
    for name in ("b", "a", "c"):
        (tmp_path / f"{name}.jpg").write_bytes(good_jpeg())
    first = sources.plan_work_units("folder", str(tmp_path), files_per_unit=2)
    assert first == sources.plan_work_units("folder", str(tmp_path), files_per_unit=2)
    fingerprint = sources.units_fingerprint(first)
    (tmp_path / "d.jpg").write_bytes(good_jpeg())
    assert sources.units_fingerprint(sources.plan_work_units("folder", str(tmp_path), files_per_unit=2)) != fingerprint


def test_gs_paths_without_gcsfs_name_the_field(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_gcsfs(name, *args, **kwargs):
        if name == "gcsfs":
            raise ImportError("no gcsfs")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gcsfs)
    with pytest.raises(ConfigError, match=r"input\.paths: gs:// paths need gcsfs"):
        sources.plan_work_units("webdataset", "gs://bucket/shards/*.tar")
    with pytest.raises(ConfigError, match=r"output\.dir: gs:// paths need gcsfs"):
        OutputDataset("gs://bucket/out", 2)


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
    (unit,) = sources.plan_work_units("webdataset", str(tmp_path))
    monkeypatch.setattr(sources, "IO_BACKOFF_S", 0.0)
    monkeypatch.setattr(sources, "TAR_REORDER_WINDOW", 2)  # samples are yielded before the error

    fail_points = [len(data) * 3 // 4, len(data) // 3]  # the 2nd attempt breaks earlier than the 1st
    opened = []

    def flaky_open(path):
        opened.append(path)
        return _FlakyFile(data, fail_points.pop(0) if fail_points else None)

    monkeypatch.setattr(sources, "_open_binary", flaky_open)
    items = list(sources.read_unit(unit))
    assert len(opened) == 3 and _keys(items) == keys and all(isinstance(i, Sample) for i in items)

    # An error that persists: what was read is kept, one Failure stands for the rest, each key once.
    monkeypatch.setattr(sources, "_open_binary", lambda path: _FlakyFile(data, len(data) // 2))
    items = list(sources.read_unit(unit))
    assert items[-1].key == "a.tar#rest" and "ConnectionResetError" in items[-1].reason
    assert len(set(_keys(items))) == len(items) and 1 <= sum(isinstance(i, Sample) for i in items) < 8


def test_retrying_helper(monkeypatch):
    monkeypatch.setattr(sources, "IO_BACKOFF_S", 0.0)
    calls = []

    def twice_reset():
        calls.append(1)
        if len(calls) < 3:
            raise TimeoutError("slow bucket")
        return b"ok"

    assert sources._retrying(twice_reset, "x") == b"ok" and len(calls) == 3
    calls.clear()

    def missing():
        calls.append(1)
        raise FileNotFoundError("gone")

    with pytest.raises(FileNotFoundError):
        sources._retrying(missing, "x")
    assert len(calls) == 1  # a missing file is not retried
