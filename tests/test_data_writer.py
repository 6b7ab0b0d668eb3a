"""The output writer: atomic units, resume after a crash, TFDS metadata, run-config checks."""

import json

import pytest
import tensorflow_datasets as tfds

from recap_jax.data.schema import RECORD_FEATURES
from recap_jax.data.inputs import Failure
from recap_jax.errors import ConfigError
from recap_jax.data.writer import OutputDataset


def _record(key, caption="c"):
    return {"key": key, "url": f"http://x/{key}", "org_caption": "o w", "re_caption": caption,
            "image": b"\xff\xd8" + key.encode(), "width": 2, "height": 3, "org_caption_length": 2,
            "re_caption_length": 7}


def _read(folder):
    source = tfds.builder_from_directory(str(folder)).as_data_source("train")
    return [source[i] for i in range(len(source))]


def test_units_finalize_and_tfds_reads_every_field(tmp_path):
    out = OutputDataset(str(tmp_path / "o"), 3)
    out.write_unit(1, [_record("b1"), _record("b2")], [Failure("bad", "s", "corrupt: details")])
    assert not out.is_done(0) and out.is_done(1)
    assert not out.finalize() and not (tmp_path / "o" / "dataset_info.json").exists()
    out.write_unit(0, [_record("a1")], [])
    out.write_unit(2, [], [Failure("c", "t.tar:c.jpg", "empty file (0 bytes)")])  # an all-failure unit
    assert out.finalize() and out.finalize()  # idempotent
    records = _read(tmp_path / "o")
    assert [r["key"] for r in records] == [b"a1", b"b1", b"b2"]  # unit order, then the order given
    first = records[0]
    assert (first["url"], first["org_caption"], first["re_caption"]) == (b"http://x/a1", b"o w", b"c")
    assert bytes(first["image"]) == b"\xff\xd8a1"
    assert (first["width"], first["height"], first["org_caption_length"], first["re_caption_length"]) == (2, 3, 2, 7)
    failures = sorted((tmp_path / "o").glob("failures*.jsonl"))
    assert [f.name for f in failures] == [f"failures-0000{i}-of-00003.jsonl" for i in range(3)]
    assert json.loads(failures[2].read_text()) == {"key": "c", "source": "t.tar:c.jpg", "reason": "empty file (0 bytes)"}
    assert failures[0].read_text() == ""
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["records"] == 3 and summary["failures"] == 2 and summary["units"] == 3
    assert summary["failure_reasons"] == {"corrupt": 1, "empty file (0 bytes)": 1}


def test_all_units_empty_still_reads(tmp_path):
    out = OutputDataset(str(tmp_path / "o"), 2)
    for i in range(2):
        out.write_unit(i, [], [Failure(f"k{i}", "s", "not an image")])
    assert out.finalize()
    # The metadata is valid; TFDS itself cannot open a data source over zero records (documented).
    info = tfds.builder_from_directory(str(tmp_path / "o")).info
    assert info.splits["train"].num_examples == 0 and info.splits["train"].shard_lengths == [0, 0]


def test_crash_leftovers_are_ignored_and_replaced(tmp_path):
    out = OutputDataset(str(tmp_path / "o"), 2)
    out.write_unit(0, [_record("a")], [])
    # A run killed mid-unit 1: temporary files, and even a renamed shard without its done marker.
    folder = tmp_path / "o"
    (folder / f".{out.shard_path(1).name}.tmp-dead0001").write_bytes(b"partial")
    (folder / f".{out.failures_path(1).name}.tmp-dead0002").write_bytes(b"partial")
    out.write_unit(1, [_record("old")], [])
    (folder / ".units" / "00001.json").unlink()  # = killed before the marker was written
    assert not out.is_done(1) and not out.finalize()
    # The restart (same command) finds unit 1 not done, cleans its leftovers, and redoes it.
    restarted = OutputDataset(str(folder), 2)
    assert restarted.pending_units() == [1]
    restarted.clean_unit(1)
    assert not list(folder.glob(".*.tmp-*"))
    restarted.write_unit(1, [_record("b1"), _record("b2")], [])
    assert restarted.finalize()
    assert [r["key"] for r in _read(folder)] == [b"a", b"b1", b"b2"]  # "old" is gone, nothing twice


def test_bad_record_leaves_nothing_behind(tmp_path):
    out = OutputDataset(str(tmp_path / "o"), 1)
    with pytest.raises(Exception):
        out.write_unit(0, [{"key": "x"}], [])  # missing fields
    assert not out.is_done(0) and not out.shard_path(0).exists()
    with pytest.raises(IndexError):
        out.write_unit(1, [], [])


def test_run_config_mismatch_is_refused(tmp_path):
    OutputDataset(str(tmp_path / "o"), 4, fingerprint={"input.paths": "a/*.tar", "plan": "abc"})
    OutputDataset(str(tmp_path / "o"), 4, fingerprint={"input.paths": "a/*.tar", "plan": "abc"})  # same: fine
    with pytest.raises(ConfigError, match=r"output\.dir: .*different run.*changed: num_units"):
        OutputDataset(str(tmp_path / "o"), 5, fingerprint={"input.paths": "a/*.tar", "plan": "abc"})
    with pytest.raises(ConfigError, match=r"changed: input\.paths, plan"):
        OutputDataset(str(tmp_path / "o"), 4, fingerprint={"input.paths": "b/*.tar", "plan": "xyz"})
    with pytest.raises(ConfigError, match="no work units"):
        OutputDataset(str(tmp_path / "p"), 0)


def test_host_summaries_are_gathered(tmp_path):
    out = OutputDataset(str(tmp_path / "o"), 2, features=RECORD_FEATURES)
    for host in (1, 0):  # two hosts, each writing its own unit and summary
        out.write_unit(host, [_record(f"k{host}")], [])
        out.write_host_summary(host, {"host": host, "images_per_s": 2.5})
    assert out.finalize({"wall_s": 3.0})
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["last_run"] == {"wall_s": 3.0}
    assert [h["host"] for h in summary["hosts"]] == [0, 1]


def test_remote_shards_are_built_locally_then_copied(tmp_path, monkeypatch):
    from recap_jax.data import writer
    monkeypatch.setattr(writer, "is_local", lambda path: False)  # take the gs:// code path
    out = OutputDataset(str(tmp_path / "o"), 1)
    out.write_unit(0, [_record("r")], [])
    assert out.finalize() and [r["key"] for r in _read(tmp_path / "o")] == [b"r"]
    assert not list((tmp_path / "o").glob(".*.tmp-*"))


def test_shards_are_byte_reproducible(tmp_path):
    """Every record is a canonical tf.train.Example (features in sorted order), so the shard bytes
    do not depend on protobuf's per-process map order; and two writes give the same bytes."""
    from array_record.python.array_record_data_source import ArrayRecordDataSource
    from tensorflow_datasets.proto import tf_example_pb2

    for name in ("a", "b"):
        OutputDataset(str(tmp_path / name), 1).write_unit(0, [_record("x"), _record("y", "c2")], [])
    shard = "recap-train.array_record-00000-of-00001"
    assert (tmp_path / "a" / shard).read_bytes() == (tmp_path / "b" / shard).read_bytes()
    source = ArrayRecordDataSource([str(tmp_path / "a" / shard)])
    for i in range(2):
        example = tf_example_pb2.Example.FromString(source[i])
        assert source[i] == example.SerializeToString(deterministic=True)
        assert list(example.features.feature) != [] and example.features.feature["key"].bytes_list.value == [b"xy"[i:i + 1]]
