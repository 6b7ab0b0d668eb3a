"""gs:// for real, on a local GCS emulator (tests/gcs_emulator.py): input tars, the converted
checkpoint and the output all on gs://. A clean run equals the local run; runs killed at three
points and rerun give every key once; the output lease holds there; an unreachable gs:// fails
in seconds with one line."""

from __future__ import annotations

import json
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

import pytest

import gcs_emulator
from bad_images import good_jpeg
from caption_helpers import REPO, env, read_failures, read_output, text
from recap_jax.captioning.tiny_demo import build_tiny_checkpoint
from webdataset_helpers import write_tar

NUM_TARS = 6
GS = f"gs://{gcs_emulator.BUCKET}"


@pytest.fixture(scope="module")
def gcs():
    with gcs_emulator.serving_this_process() as client_env:
        yield client_env


@pytest.fixture(scope="module")
def world(gcs, tmp_path_factory):
    import gcsfs
    root = tmp_path_factory.mktemp("gcs")
    build_tiny_checkpoint(str(root / "ckpt"))
    (root / "tars").mkdir()
    for shard in range(NUM_TARS):
        write_tar(root / "tars" / f"{shard:05d}.tar",
                  [(f"{shard:05d}{i:04d}", "jpg", good_jpeg(30 + 7 * i, 40, (40 * shard, 60 * i, 90)), f"alt {i}")
                   for i in range(3)])
    fs = gcsfs.GCSFileSystem()
    fs.put(str(root / "ckpt"), f"{gcs_emulator.BUCKET}/ckpt", recursive=True)
    fs.put(str(root / "tars"), f"{gcs_emulator.BUCKET}/tars", recursive=True)
    return root


def _command(ckpt: str, inputs: str, out: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "recap_jax.caption", f"--config={REPO / 'configs' / 'demo.py'}",
            f"--config.model.checkpoint={ckpt}", "--config.model.build_tiny_if_missing=False",
            "--config.input.format=webdataset", f"--config.input.paths={inputs}",
            f"--config.output.dir={out}", "--config.distributed.mode=off", "--config.decode.max_new_tokens=8",
            *extra]


def _run(cmd, gcs, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env={**env(), **gcs}, cwd=REPO, timeout=timeout)


def _download(folder: str, local: pathlib.Path) -> pathlib.Path:
    import gcsfs
    fs = gcsfs.GCSFileSystem()
    fs.invalidate_cache()
    fs.get(folder.removeprefix("gs://"), str(local), recursive=True)
    return local


@pytest.fixture(scope="module")
def local_reference(world, gcs):
    out = world / "local-out"
    proc = _run(_command(str(world / "ckpt"), str(world / "tars"), str(out)), gcs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _assert_same(ours: pathlib.Path, reference: pathlib.Path) -> None:
    expected, got = read_output(reference), read_output(ours)  # read_output: every key once
    assert sorted(got) == sorted(expected)
    for key, record in expected.items():
        assert text(got[key]["re_caption"]) == text(record["re_caption"])
        assert bytes(got[key]["image"]) == bytes(record["image"])
    assert read_failures(ours) == read_failures(reference)


def test_all_on_gcs_equals_the_local_run(world, gcs, local_reference, tmp_path):
    before = set(pathlib.Path(tempfile.gettempdir()).glob("recap_tokenizer_*"))
    proc = _run(_command(f"{GS}/ckpt", f"{GS}/tars", f"{GS}/out-clean"), gcs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert set(pathlib.Path(tempfile.gettempdir()).glob("recap_tokenizer_*")) <= before  # temp copies removed
    _assert_same(_download(f"{GS}/out-clean", tmp_path / "clean"), local_reference)
    assert not list((tmp_path / "clean").glob(".*tmp-*"))
    assert not (tmp_path / "clean" / ".lease.json").exists()  # released


def test_the_lease_refuses_a_second_job_on_gcs(world, gcs, tmp_path):
    import gcsfs
    fs = gcsfs.GCSFileSystem()
    now = time.time()
    fs.pipe_file(f"{gcs_emulator.BUCKET}/out-leased/.lease.json", json.dumps(
        {"run_id": "first", "host": "another-host", "pid": 7, "started": now, "heartbeat": now}).encode())
    start = time.time()
    proc = _run(_command(f"{GS}/ckpt", f"{GS}/tars", f"{GS}/out-leased"), gcs)
    assert proc.returncode == 2, proc.stderr[-3000:]
    first = proc.stderr.strip().splitlines()[0]
    assert "being written by another job" in first and "another-host" in first, first
    fs.invalidate_cache()
    assert fs.ls(f"{gcs_emulator.BUCKET}/out-leased") == [f"{gcs_emulator.BUCKET}/out-leased/.lease.json"]
    assert time.time() - start < 120


def test_unreachable_gcs_fails_in_seconds_with_one_line(world, tmp_path):
    dead = gcs_emulator.client_env(1)  # nothing listens on port 1
    start = time.time()
    proc = subprocess.run(_command(f"{GS}/ckpt", f"{GS}/tars", str(tmp_path / "out"), "--config.gcs_timeout_s=3"),
                          capture_output=True, text=True, env={**env(), **dead}, cwd=REPO, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: model.checkpoint: could not reach"), lines
    assert not (tmp_path / "out").exists()
    assert time.time() - start < 90  # the probe's 3 s plus the interpreter's start-up


@pytest.mark.slow
def test_killed_on_gcs_at_three_points_resumes_to_every_key_once(world, gcs, local_reference, tmp_path):
    import gcsfs
    fs = gcsfs.GCSFileSystem()
    out = f"{GS}/out-killed"
    markers = f"{gcs_emulator.BUCKET}/out-killed/.units"
    for kill_after in (1, 2, 3):  # 3 of 6 units left at the last kill: a loaded machine still kills part-way
        proc = subprocess.Popen(_command(f"{GS}/ckpt", f"{GS}/tars", out), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env={**env(), **gcs}, cwd=REPO)
        deadline = time.time() + 400
        while time.time() < deadline and proc.poll() is None:
            fs.invalidate_cache()
            if fs.exists(markers) and len(fs.ls(markers)) >= kill_after:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        fs.invalidate_cache()
        assert len(fs.ls(markers)) < NUM_TARS  # killed part-way
    final = _run(_command(f"{GS}/ckpt", f"{GS}/tars", out), gcs)
    assert final.returncode == 0, final.stderr[-3000:]
    assert "lease_taken_over_from" in final.stdout  # the killed job's lease (same host, process gone)
    _assert_same(_download(out, tmp_path / "killed"), local_reference)
