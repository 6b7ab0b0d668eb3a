"""export and analyze over gs:// (the local GCS emulator, tests/gcs_emulator.py): the caption
output, the Parquet and the analysis all on gs:// give what the local files give."""

import json
import os

import pyarrow.parquet as pq
import pytest
from etils import epath

import gcs_emulator
from analysis_helpers import known_records
from recap_jax.analysis.run import AnalyzeSettings, analyze
from recap_jax.clip import synthetic
from recap_jax.data.storage import copy_tree
from recap_jax.release.parquet_export import export_parquet

GS = f"gs://{gcs_emulator.BUCKET}"


@pytest.fixture(scope="module")
def gcs():
    with gcs_emulator.serving_this_process() as client_env:
        yield client_env


def _table(path: str):
    with epath.Path(path).open("rb") as f:
        return pq.read_table(f)


def test_export_and_analyze_on_gcs_equal_the_local_run(gcs, tmp_path):
    local = synthetic.write_captioner_output(str(tmp_path / "out"), known_records(), num_units=2)
    copy_tree(epath.Path(local), epath.Path(f"{GS}/out"))

    want = export_parquet(local, str(tmp_path / "pq"), progress=False)
    got = export_parquet(f"{GS}/out", f"{GS}/pq", progress=False)
    assert got["rows_written"] == want["rows_written"] > 0 and got["files"] == want["files"]
    assert _table(f"{GS}/pq/train-00000.parquet").equals(pq.read_table(tmp_path / "pq" / "train-00000.parquet"))
    assert json.loads(epath.Path(f"{GS}/pq/export_summary.json").read_text())["dest"] == f"{GS}/pq"

    local_stats = analyze(local, AnalyzeSettings(out=str(tmp_path / "analysis"), progress=False))
    remote_stats = analyze(f"{GS}/out", AnalyzeSettings(progress=False))  # default OUT: OUTPUT_DIR/analysis
    drop = ("source",)
    assert {k: v for k, v in remote_stats.items() if k not in drop} == \
        {k: v for k, v in local_stats.items() if k not in drop}
    remote = epath.Path(f"{GS}/out/analysis")
    assert (remote / "report.html").exists() and (remote / "analysis.json").exists()
    assert sorted(p.name for p in (remote / "images").iterdir()) == sorted(os.listdir(tmp_path / "analysis" / "images"))

    # the released Parquet on gs:// analyses too, and a sharded run merges there
    parquet_stats = analyze(f"{GS}/pq", AnalyzeSettings(out=f"{GS}/pq_analysis", progress=False))
    assert parquet_stats["num_rows"] == local_stats["num_rows"]
    for i in range(2):
        assert analyze(f"{GS}/out", AnalyzeSettings(out=f"{GS}/sharded", shard_index=i, num_shards=2,
                                                    progress=False)) is None
    from recap_jax.analysis.run import merge
    merged = merge(f"{GS}/sharded", AnalyzeSettings(progress=False))
    assert merged["num_rows"] == local_stats["num_rows"] and merged["shards"] == 2
