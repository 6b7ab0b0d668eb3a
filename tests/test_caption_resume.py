"""Killed part-way (SIGKILL) and restarted, the job ends with exactly an uninterrupted run's output;
bad input never stops it. Uses the tiny demo checkpoint (no PyTorch needed)."""

import json
import signal
import subprocess
import sys
import time

import pytest

from bad_images import cases, good_jpeg
from caption_helpers import REPO, env, read_failures, read_output, text
from recap_jax.captioning.tiny_demo import build_tiny_checkpoint
from webdataset_helpers import write_tar

NUM_TARS = 10


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    build_tiny_checkpoint(str(root / "ckpt"))
    good = root / "good"
    good.mkdir()
    for shard in range(NUM_TARS):
        write_tar(good / f"{shard:05d}.tar", [(f"{shard:05d}{i:04d}", "jpg",
                                               good_jpeg(30 + 7 * i, 40, (20 * shard, 60 * i, 90)), f"alt {i}")
                                              for i in range(3)])
    return root


def _command(root, inputs, out, *extra):
    return [sys.executable, "-m", "recap_jax.caption", f"--config={REPO / 'configs' / 'demo.py'}",
            f"--config.model.checkpoint={root / 'ckpt'}", "--config.model.build_tiny_if_missing=False",
            "--config.input.format=webdataset", f"--config.input.paths={inputs}",
            f"--config.output.dir={out}", "--config.distributed.mode=off", "--config.decode.max_new_tokens=16",
            *extra]


def _run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_killed_runs_resume_to_the_uninterrupted_output(world):
    reference_dir = world / "reference"
    _run(_command(world, world / "good", reference_dir))
    reference = read_output(reference_dir)
    silent = read_failures(reference_dir)  # empty captions of the random model
    assert all("empty caption" in f["reason"] for f in silent)
    assert len(reference) + len(silent) == 3 * NUM_TARS

    out = world / "killed"
    markers = out / ".units"
    for kill_after in (1, 4, 7):
        proc = subprocess.Popen(_command(world, world / "good", out), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env(), cwd=REPO)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if markers.exists() and len(list(markers.glob("*.json"))) >= kill_after:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        assert len(list(markers.glob("*.json"))) < NUM_TARS  # it was killed part-way
        assert not (out / "dataset_info.json").exists()
    final = _run(_command(world, world / "good", out))
    summary = json.loads(final.stdout[final.stdout.index("{"):final.stdout.rindex("}") + 1])
    assert 0 < summary["units_captioned_now"] < NUM_TARS  # only the unfinished units were redone
    resumed = read_output(out)
    assert sorted(resumed) == sorted(reference)
    for key, record in reference.items():
        assert text(resumed[key]["re_caption"]) == text(record["re_caption"])
        assert bytes(resumed[key]["image"]) == bytes(record["image"])
    assert read_failures(out) == silent
    assert not list(out.glob(".*.tmp-*"))


def test_bad_input_is_captioned_or_listed(world):
    bad = world / "bad"
    bad.mkdir()
    samples = [(name, "png" if name != "zero_bytes" else "jpg", data, f"alt {name}")
               for name, (data, _) in cases().items()]
    write_tar(bad / "00000.tar", samples)
    write_tar(bad / "00001.tar", [("ok", "jpg", good_jpeg(), "fine")])
    out = world / "bad-out"
    _run(_command(world, bad, out))
    records, failures = read_output(out), {f["key"]: f for f in read_failures(out)}
    for name, (_, expected_failure) in cases().items():
        if expected_failure is None:  # decoded; the random model may still say nothing
            assert (name in records and text(records[name]["re_caption"])
                    or "empty caption" in failures[name]["reason"]), name
        else:
            assert name in failures and expected_failure in failures[name]["reason"].lower(), name
            assert failures[name]["source"].startswith("00000.tar:")
    assert "ok" in records
    assert set(records) | set(failures) == set(cases()) | {"ok"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failures"] == len(failures) and summary["records"] == len(records)
