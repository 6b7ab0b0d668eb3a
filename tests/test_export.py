"""Export to the released Parquet schema: schema, rows, row groups, dedup by sha256, scores, HF loader."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow_datasets as tfds

from recap_jax.clip import synthetic
from recap_jax.data import schema as record_schema
from recap_jax.errors import ConfigError
from recap_jax.release import schema
from recap_jax.release.parquet_export import export_parquet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASED = [("url", "string"), ("re_caption", "string"), ("org_caption", "string"), ("sha256", "string"),
            ("key", "string"), ("re_clip_score", "double"), ("org_clip_score", "double"), ("re_length", "int64"),
            ("org_length", "int64"), ("re_gpt4v_score", "int64"), ("org_gpt4v_score", "int64")]


def _records():
    records = synthetic.make_records(10, 16, seed=3)
    # Two re-downloads of images already in the set (same bytes, other keys and urls).
    for source, key in ((2, "dup-a"), (7, "dup-b")):
        records.append({**records[source], "key": key, "url": f"http://mirror/{key}"})
    records[4]["re_caption"] = "ünïcode caption — with a dash"
    return records


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("out") / "output")
    return synthetic.write_captioner_output(folder, _records(), num_units=3)


def _read(dest):
    return pq.read_table(sorted(str(p) for p in (dest).glob("train-*.parquet")))


def test_schema_rows_and_dedup_through_the_command(output, tmp_path):
    dest = tmp_path / "parquet"
    proc = subprocess.run([sys.executable, "-m", "recap_jax.export", output, str(dest)],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO},
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "2 duplicate sha256 dropped" in proc.stdout
    table = _read(dest)
    assert [(f.name, str(f.type)) for f in table.schema] == RELEASED
    assert table.schema.names == list(schema.COLUMNS)

    expected = [r for r in _records() if not r["key"].startswith("dup-")]
    rows = table.to_pylist()
    assert len(rows) == len(expected) == 10
    for row, record in zip(rows, expected):
        assert (row["key"], row["url"], row["org_caption"], row["re_caption"]) == (
            record["key"], record["url"], record["org_caption"], record["re_caption"])
        assert row["sha256"] == hashlib.sha256(record["image"]).hexdigest()
        assert row["re_length"] == len(record["re_caption"].split())
        assert row["org_length"] == len(record["org_caption"].split())
        for column in ("re_clip_score", "org_clip_score", "re_gpt4v_score", "org_gpt4v_score"):
            assert row[column] is None

    summary = json.loads((dest / "export_summary.json").read_text())
    assert (summary["rows_read"], summary["rows_written"], summary["duplicates_dropped"]) == (12, 10, 2)
    assert summary["sha256_computed_now"] == 0  # the writer stored it at caption time
    assert {d["key"]: d["kept"] for d in summary["duplicates"]} == {"dup-a": "3-000002", "dup-b": "3-000007"}
    assert set(summary["null_columns"]) == {"re_clip_score", "org_clip_score", "re_gpt4v_score", "org_gpt4v_score"}

    # Exporting again into the same place refuses rather than mixing two exports.
    again = subprocess.run([sys.executable, "-m", "recap_jax.export", output, str(dest)],
                           capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO},
                           timeout=300)
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_our_records_store_the_image_sha256(output):
    source = tfds.builder_from_directory(output).as_data_source("train")
    for i in range(len(source)):
        assert source[i]["sha256"].decode() == record_schema.image_sha256(bytes(source[i]["image"]))


def test_row_groups_files_and_no_dedup(output, tmp_path):
    summary = export_parquet(output, str(tmp_path / "p"), dedup=False, rows_per_group=4, rows_per_file=8,
                             progress=False)
    assert summary["rows_written"] == 12 and summary["duplicates_dropped"] == 0
    files = sorted((tmp_path / "p").glob("train-*.parquet"))
    assert [f.name for f in files] == ["train-00000.parquet", "train-00001.parquet"]
    groups = [[pq.ParquetFile(f).metadata.row_group(g).num_rows for g in range(pq.ParquetFile(f).num_row_groups)]
              for f in files]
    assert groups == [[4, 4], [4]]


def test_sharded_export_partitions_by_sha256(output, tmp_path):
    whole = _read_sorted(export_parquet, output, tmp_path / "whole", 0, 1)
    parts = []
    for i in range(3):
        parts += _read_sorted(export_parquet, output, tmp_path / "shards", i, 3)
    assert sorted(parts, key=lambda r: r["key"]) == whole


def _read_sorted(fn, output, dest, index, num):
    fn(output, str(dest), shard_index=index, num_shards=num, progress=False)
    prefix = "train" if num == 1 else f"train-{index:05d}-of-{num:05d}"
    return sorted(pq.read_table(sorted(str(p) for p in dest.glob(f"{prefix}-*.parquet"))).to_pylist(),
                  key=lambda r: r["key"])


def test_scores_are_joined_by_key_and_checked(output, tmp_path):
    keys = [r["key"] for r in _records()]
    scores = tmp_path / "clip_scores.parquet"
    pq.write_table(pa.table({"key": keys, "re_clip_score": np.arange(12) / 10, "org_clip_score": -np.arange(12) / 10}),
                   scores)
    export_parquet(output, str(tmp_path / "p"), scores=[str(scores)], progress=False)
    rows = _read(tmp_path / "p").to_pylist()
    by_key = {r["key"]: (r["re_clip_score"], r["org_clip_score"]) for r in rows}
    assert by_key["3-000004"] == (0.4, -0.4) and by_key["3-000009"] == (0.9, -0.9)

    pq.write_table(pa.table({"key": keys[::-1], "re_clip_score": np.zeros(12), "org_clip_score": np.zeros(12)}),
                   scores)
    with pytest.raises(ConfigError, match="do not match"):
        export_parquet(output, str(tmp_path / "q"), scores=[str(scores)], progress=False)


def test_outputs_written_before_sha256_existed_are_hashed_at_export(tmp_path):
    features = {k: v for k, v in record_schema.RECORD_FEATURES.items() if k != "sha256"}
    records = [{k: v for k, v in r.items() if k != "sha256"} for r in _records()]
    folder = synthetic.write_tfds_folder(str(tmp_path / "old"), records,
                                         features=tfds.features.FeaturesDict(features))
    summary = export_parquet(folder, str(tmp_path / "p"), progress=False)
    assert summary["sha256_computed_now"] == 12 and summary["duplicates_dropped"] == 2
    rows = _read(tmp_path / "p").to_pylist()
    assert rows[0]["sha256"] == hashlib.sha256(records[0]["image"]).hexdigest()


def test_hugging_face_datasets_reads_the_export(output, tmp_path, monkeypatch):
    import datasets  # the [test] extra installs it
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    export_parquet(output, str(tmp_path / "p"), progress=False)
    ds = datasets.load_dataset("parquet", data_files=sorted(str(p) for p in (tmp_path / "p").glob("*.parquet")),
                               split="train", cache_dir=str(tmp_path / "hf_cache"))
    assert len(ds) == 10
    assert {k: v.dtype for k, v in ds.features.items()} == {
        name: {"double": "float64"}.get(t, t) for name, t in RELEASED}
    assert ds[4]["re_caption"] == "ünïcode caption — with a dash" and ds[0]["re_clip_score"] is None
