"""Input sources, the prefetching pipeline and the output writer."""

import threading
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from bad_images import good_jpeg
from recap_jax.data import pipeline, sources
from recap_jax.data.images import ImageError
from recap_jax.data.sources import ConfigError, Failure, Sample
from recap_jax.data.writer import OutputDataset
from webdataset_helpers import write_tar


def _record(key, caption="c"):
    return {"key": key, "url": f"http://x/{key}", "org_caption": "o", "re_caption": caption,
            "image": b"\xff\xd8", "width": 2, "height": 3, "org_caption_length": 1, "re_caption_length": 1}


def test_webdataset_units_and_samples(tmp_path):
    for shard in range(3):
        write_tar(tmp_path / f"{shard:05d}.tar",
                  [(f"{shard:05d}{i:04d}", "jpg", good_jpeg(), f"caption {shard} {i}") for i in range(4)])
    units = sources.plan_work_units("webdataset", str(tmp_path / "*.tar"))
    assert [u.index for u in units] == [0, 1, 2]
    samples = list(sources.read_unit(units[1]))
    assert [s.key for s in samples] == [f"00001{i:04d}" for i in range(4)]
    assert samples[2].org_caption == "caption 1 2" and samples[2].url == "http://example.com/000010002.jpg"
    assert samples[0].source == "00001.tar:000010000.jpg"


def test_truncated_tar_keeps_what_was_read(tmp_path):
    write_tar(tmp_path / "a.tar", [(f"k{i}", "jpg", good_jpeg(200, 200), "c") for i in range(6)])
    data = (tmp_path / "a.tar").read_bytes()
    (tmp_path / "a.tar").write_bytes(data[: len(data) // 2])
    items = list(sources.read_unit(sources.plan_work_units("webdataset", str(tmp_path))[0]))
    good = [i for i in items if isinstance(i, Sample)]
    bad = [i for i in items if isinstance(i, Failure)]
    assert 1 <= len(good) < 6
    assert len(bad) == 1 and "tar unreadable" in bad[0].reason


def test_member_without_image_is_a_failure(tmp_path):
    import io
    import tarfile
    with tarfile.open(tmp_path / "b.tar", "w") as tar:
        info = tarfile.TarInfo("lonely.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    (item,) = sources.read_unit(sources.plan_work_units("webdataset", str(tmp_path / "b.tar"))[0])
    assert isinstance(item, Failure) and item.key == "lonely" and "no image" in item.reason


def test_folder_units(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b", "a", "sub/c"):
        (tmp_path / f"{name}.jpg").write_bytes(good_jpeg())
    (tmp_path / "a.txt").write_text("alt text of a")
    (tmp_path / "notes.md").write_text("not an image")
    units = sources.plan_work_units("folder", str(tmp_path), files_per_unit=2)
    assert [len(u.files) for u in units] == [2, 1]
    samples = [s for u in units for s in sources.read_unit(u)]
    assert [s.key for s in samples] == ["a", "b", "sub/c"]
    assert samples[0].org_caption == "alt text of a" and samples[1].org_caption == ""


def test_tfds_input_reads_a_recap_dataset(tmp_path):
    out = OutputDataset(str(tmp_path / "ds"), 2)
    out.write_unit(0, [_record("x"), _record("y")], [])
    out.write_unit(1, [_record("z")], [])
    assert out.finalize()
    units = sources.plan_work_units("tfds", str(tmp_path / "ds"), records_per_unit=2)
    assert [(u.start, u.stop) for u in units] == [(0, 2), (2, 3)]
    samples = [s for u in units for s in sources.read_unit(u)]
    assert [s.key for s in samples] == ["x", "y", "z"] and samples[0].image_bytes == b"\xff\xd8"


@pytest.mark.parametrize("fmt,paths,field", [("zip", "x", "input.format"), ("folder", "/no/such/dir", "input.paths"),
                                             ("webdataset", "", "input.paths")])
def test_bad_input_config_names_the_field(fmt, paths, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        sources.plan_work_units(fmt, paths)


@pytest.mark.parametrize("hosts", range(1, 9))
def test_units_for_hosts_are_disjoint_and_cover(hosts):
    units = [sources.WorkUnit(i, "webdataset", f"{i}.tar") for i in range(13)]
    shares = [sources.units_for_host(units, h, hosts) for h in range(hosts)]
    indices = sorted(u.index for share in shares for u in share)
    assert indices == list(range(13))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_pipeline_keeps_order_runs_in_parallel_and_reports_failures():
    active, peak, lock = [0], [0], threading.Lock()

    def prepare(sample):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        if sample.key == "bad":
            raise ImageError("not an image")
        if sample.key == "boom":
            raise RuntimeError("unexpected")
        return sample.key.upper()

    keys = ["a", "bad", "b", "c", "boom", "d", "e", "f"]
    items = [Sample(k, k, b"") for k in keys] + [Failure("read", "x", "unreadable")]
    out = list(pipeline.prepared_samples(items, prepare, num_workers=4, prefetch=8))
    assert [o.key if isinstance(o, Failure) else o[0].key for o in out] == keys + ["read"]
    assert [o[1] for o in out if not isinstance(o, Failure)] == ["A", "B", "C", "D", "E", "F"]
    reasons = {o.key: o.reason for o in out if isinstance(o, Failure)}
    assert reasons["bad"] == "not an image" and "RuntimeError" in reasons["boom"]
    assert peak[0] > 1  # decoding really overlaps


def test_writer_atomic_units_resume_and_metadata(tmp_path):
    out = OutputDataset(str(tmp_path / "o"), 3)
    out.write_unit(1, [_record("b1"), _record("b2")], [Failure("bad", "s", "corrupt")])
    # A killed writer leaves a temporary file behind: it is neither a shard nor counted.
    (tmp_path / "o" / f".{out.shard_path(0).name}.tmp-dead").write_bytes(b"partial")
    assert not out.is_done(0) and out.is_done(1)
    assert not out.finalize()
    out.clean_unit(0)
    assert not list((tmp_path / "o").glob(".*.tmp-*"))
    out.write_unit(0, [_record("a1")], [])
    out.write_unit(2, [], [Failure("c", "s", "empty file")])  # an all-failure unit
    assert out.finalize() and out.finalize()  # idempotent
    source = tfds.builder_from_directory(str(tmp_path / "o")).as_data_source("train")
    assert [source[i]["key"] for i in range(len(source))] == [b"a1", b"b1", b"b2"]
    assert source[0]["width"] == 2 and source[0]["re_caption"] == b"c"
    failures = sorted((tmp_path / "o").glob("failures*.jsonl"))
    assert len(failures) == 3 and '"reason": "corrupt"' in failures[1].read_text()
    with pytest.raises(ConfigError, match="different run"):
        OutputDataset(str(tmp_path / "o"), 4)
