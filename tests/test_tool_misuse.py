"""The tools keep the caption job's contract under misuse (issue 27): an all-failed caption output is
a dataset (analyze/export report it empty, readers that need examples say "no examples in"),
eval_suite names a wrong path instead of skipping it, gs:// that does not answer fails in seconds,
export never writes into its source, nothing but the error line is printed (no libtpu start-up),
`--help` shows only flags the command takes.

Each command case runs as a user would (a subprocess): exit status, first line, nothing written.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

import gcs_emulator
from recap_jax.data.inputs import Failure
from recap_jax.data.tfds_folder import open_tfds_folder
from recap_jax.data.writer import OutputDataset
from recap_jax.errors import ConfigError

REPO = pathlib.Path(__file__).resolve().parent.parent


def _run(module: str, args: list[str], env_extra: dict | None = None, drop: tuple[str, ...] = ()):
    env = {k: v for k, v in os.environ.items() if k not in ("RECAP_DEBUG", "XLA_FLAGS", *drop)}
    env.update(PYTHONPATH=str(REPO), **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=300)


def _files(root: pathlib.Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*")}


@pytest.fixture(scope="module")
def all_failed(tmp_path_factory) -> pathlib.Path:
    """A finished caption output where every sample failed: two units, no record, two failures."""
    folder = tmp_path_factory.mktemp("misuse") / "all_failed"
    out = OutputDataset(str(folder), 2)
    for unit in range(2):
        out.write_unit(unit, [], [Failure(f"k{unit}", "s", "not an image")])
    assert out.finalize()
    return folder


def test_all_failed_output_analyses_and_exports_empty(all_failed, tmp_path):
    analysed = _run("recap_jax.analyze", [str(all_failed), "--out", str(tmp_path / "analysis"), "--noprogress"])
    assert analysed.returncode == 0, analysed.stderr[-3000:]
    assert f"[analyze] {all_failed} has no examples" in analysed.stdout
    assert '"num_rows": 0' in analysed.stdout and (tmp_path / "analysis" / "report.html").exists()
    exported = _run("recap_jax.export", [str(all_failed), str(tmp_path / "parquet")])
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert f"[export] {all_failed} has no examples" in exported.stdout
    table = pq.read_table(tmp_path / "parquet" / "train-00000.parquet")
    assert table.num_rows == 0 and "re_caption" in table.column_names


def test_a_reader_that_needs_examples_names_the_empty_folder(all_failed):
    with pytest.raises(ConfigError) as e:
        open_tfds_folder(str(all_failed), "train", field="data.folders")
    assert str(e.value).startswith(f"data.folders: no examples in {all_failed} (split 'train' is empty")
    assert len(open_tfds_folder(str(all_failed), "train", field="OUTPUT_DIR", allow_empty=True)) == 0
    from recap_jax.clip.data import output_records  # the CLIP trainer's reader of caption outputs
    with pytest.raises(ConfigError, match=r"^data\.folders: no examples in "):
        output_records(str(all_failed), "train")


def test_empty_finetune_json_names_no_missing_failures_file(tmp_path):
    from recap_jax.finetuning.records import LlavaJsonReader
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(ConfigError) as e:
        LlavaJsonReader(str(tmp_path / "empty.json"), "", shuffle=False, seed=0)
    assert str(e.value) == f"data.path: no examples in {tmp_path / 'empty.json'} (an empty list of conversations)"
    assert "failures" not in str(e.value)


def _misuse_cases():
    return [
        # (id, module, args, first stderr line starts with)
        ("suite-missing-imagenet", "recap_jax.eval_suite",
         ["--config", "configs/eval_suite.py", "--config.imagenet.folder={root}/no_imagenet",
          "--config.output_dir={root}/suite"],
         "error: imagenet.folder={root}/no_imagenet: does not exist"),
        ("suite-half-coco", "recap_jax.eval_suite",
         ["--config", "configs/eval_suite.py", "--config.coco.images={root}/all_failed",
          "--config.output_dir={root}/suite"],
         "error: coco.annotations: not set, but coco.images is; set both or neither"),
        ("export-into-source", "recap_jax.export", ["{root}/all_failed", "{root}/all_failed/parquet"],
         "error: DEST: {root}/all_failed/parquet is inside OUTPUT_DIR {root}/all_failed"),
        ("export-into-source-by-link", "recap_jax.export", ["{root}/all_failed", "{root}/link/parquet"],
         "error: DEST: {root}/link/parquet is inside OUTPUT_DIR {root}/all_failed"),
    ]


@pytest.mark.parametrize("case", _misuse_cases(), ids=lambda c: c[0])
def test_misuse_is_one_line_exit_2_nothing_written(all_failed, case):
    _, module, args, first = case
    root = all_failed.parent
    if not (root / "link").exists():
        (root / "link").symlink_to(all_failed)
    before = _files(root)
    result = _run(module, [a.replace("{root}", str(root)) for a in args])
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert lines and lines[0].startswith(first.replace("{root}", str(root))), lines
    assert len(lines) == 1, lines
    assert _files(root) == before


@pytest.mark.parametrize("module, args, field", [
    ("recap_jax.analyze", ["gs://{bucket}/out"], "PATH"),
    ("recap_jax.export", ["gs://{bucket}/out", "{tmp}/dest"], "OUTPUT_DIR"),
])
def test_unreachable_gcs_fails_in_seconds_with_one_line(tmp_path, module, args, field):
    dead = gcs_emulator.client_env(1)  # nothing listens on port 1
    start = time.time()
    result = _run(module, [a.format(bucket=gcs_emulator.BUCKET, tmp=tmp_path) for a in args] + ["--gcs_timeout_s=3"],
                  dead)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    want = f"error: {field}: could not reach gs://{gcs_emulator.BUCKET}/out"
    assert len(lines) == 1 and lines[0].startswith(want), lines
    assert time.time() - start < 60  # the probe's 3 s plus start-up, not gcsfs's minute of retries
    assert list(tmp_path.iterdir()) == []


def test_no_libtpu_start_up_noise_before_the_error_line(tmp_path):
    # Without JAX_PLATFORMS (as a user runs it): with the [tpu] extra installed on a machine without
    # a TPU, libtpu used to start and print its start-up errors before the one line.
    result = _run("recap_jax.train_clip", ["--config", "configs/clip_tiny.py", f"--config.workdir={tmp_path}/w",
                                          f"--config.data.tokenizer={tmp_path}/nope"], drop=("JAX_PLATFORMS",))
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: data.tokenizer: {tmp_path}/nope is not a folder"), lines
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("module", ["recap_jax.analyze", "recap_jax.export"])
def test_help_of_path_commands_shows_only_their_flags(module):
    result = _run(module, ["--help"])
    assert result.returncode == 0, result.stderr
    assert "--config" not in result.stdout and "--gcs_timeout_s" in result.stdout
