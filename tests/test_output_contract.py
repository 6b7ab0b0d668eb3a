"""The output is a contract (issue 10): each misuse ends with its exit status and a first line
naming the field, writing nothing; a different run never continues a folder; two jobs never
share one; a run where everything failed exits 3 with a readable empty dataset.

The caption command runs in this process (`caption_helpers.caption_in_process`) on the tiny demo checkpoint.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import time

import pytest

from caption_helpers import REPO, caption_in_process
from configs_loader import load
from recap_jax.captioning import outcome
from recap_jax.captioning.tiny_demo import build_tiny_checkpoint
from recap_jax.data.lease import LEASE_FILE


IMAGES = len([p for p in (REPO / "assets" / "demo_images").iterdir() if p.suffix != ".txt"])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    build_tiny_checkpoint(str(root / "ckpt"))
    build_tiny_checkpoint(str(root / "ckpt-other"), seed=1)
    # The demo's images: the tiny random model captions them (on random pixels it may stop at once).
    shutil.copytree(REPO / "assets" / "demo_images", root / "images")
    (root / "broken").mkdir()
    for i in range(2):
        (root / "broken" / f"b{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (root / "hf-truncated").mkdir()
    (root / "hf-truncated" / "model.safetensors").write_bytes(
        (200).to_bytes(8, "little") + b'{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}')
    return root


def config(world: pathlib.Path, out: pathlib.Path | str, **overrides):
    c = load("demo.py")
    c.model.checkpoint = str(world / "ckpt")
    c.model.build_tiny_if_missing = False
    c.input.paths = str(world / "images")
    c.output.dir = str(out)
    c.decode.max_new_tokens = 4
    c.distributed.mode = "off"
    c.progress_every_s = 60.0
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split("__")
        node = c
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def invoke(c, capsys) -> tuple[int, str, str]:
    """(exit status, first line of stderr, stdout)."""
    capsys.readouterr()
    status = caption_in_process(c)
    captured = capsys.readouterr()
    return status, (captured.err.strip().splitlines() or [""])[0], captured.out


def snapshot(folder: pathlib.Path) -> dict[str, tuple[int, int]]:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished(world, tmp_path_factory):
    """A finished output folder (the reference run), copied per test that changes it."""
    out = tmp_path_factory.mktemp("finished") / "out"
    status = caption_in_process(config(world, out))
    assert status == 0
    return out


def _long_prompt(world, out):
    return config(world, out, prompt="word " * 200)


# (name, config changes given (world, out), expected status, words of the first line)
REFUSED = [
    ("other prompt", lambda w, o: config(w, o, prompt="Say one word."), ["different run", "prompt:"]),
    ("other model", lambda w, o: config(w, o, model__checkpoint=str(w / "ckpt-other")),
     ["different run", "model.weights:"]),
    ("other max_new_tokens", lambda w, o: config(w, o, decode__max_new_tokens=5),
     ["different run", "decode.max_new_tokens:"]),
    ("other dtype and prompt", lambda w, o: config(w, o, model__dtype="bfloat16", prompt="x"),
     ["2 field(s) differ", "model.dtype:", "prompt:"]),
]


@pytest.mark.parametrize("name,make,words", REFUSED, ids=[r[0] for r in REFUSED])
def test_a_different_run_is_refused_naming_each_field(world, finished, tmp_path, capsys, name, make, words):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    (out / ".units" / "00001.json").unlink()  # partly done: it would have mixed two runs
    before = snapshot(out)
    status, first, _ = invoke(make(world, out), capsys)
    assert status == 2, first
    for word in words:
        assert word in first, first
    assert "output.overwrite=true" in first and "new output.dir" in first
    assert snapshot(out) == before  # nothing written


# (name, config maker, words in the first line); each must fail before writing anything.
USAGE = [
    ("batch_size=0 names batch_size", lambda w, o: config(w, o, decode__batch_size=0), ["decode.batch_size=0"]),
    ("max_new_tokens past the model's positions", lambda w, o: config(w, o, decode__max_new_tokens=5000),
     ["decode.max_new_tokens=5000", "max_position_embeddings (2048)"]),
    ("decode state larger than memory", lambda w, o: config(w, o, decode__max_new_tokens=1_000_000_000),
     ["decode.max_new_tokens=1000000000"]),
    ("huge batch: memory", lambda w, o: config(w, o, decode__batch_size=2**26, decode__prefill_batch=2),
     ["decode: weights + decode state need", "GiB"]),
    ("prompt longer than the buckets", _long_prompt, ["prompt:", "decode.prompt_buckets"]),
    ("output inside input", lambda w, o: config(w, w / "images" / "out"), ["output.dir", "inside input.paths"]),
    ("output is a file", lambda w, o: config(w, w / "broken" / "b0.jpg"), ["output.dir", "is a file"]),
    ("truncated safetensors", lambda w, o: config(w, o, model__checkpoint="", model__hf_dir=str(w / "hf-truncated")),
     ["model.hf_dir", "model.safetensors", "truncated"]),
    ("mesh.data=3 on one device", lambda w, o: config(w, o, mesh__data=3), ["mesh: axis sizes", "but there are 1 devices"]),
    ("hf_dir that is no captioner", lambda w, o: config(w, o, model__checkpoint="", model__hf_dir=str(w / "images")),
     ["model.hf_dir", "cannot be read as a captioner", "config.json"]),
    ("overwrite with a bad failure share", lambda w, o: config(w, o, output__max_failure_share=2.0),
     ["output.max_failure_share=2.0"]),
]


@pytest.mark.parametrize("name,make,words", USAGE, ids=[u[0] for u in USAGE])
def test_usage_errors_exit_2_with_one_line_and_write_nothing(world, tmp_path, capsys, name, make, words):
    out = tmp_path / "out"
    before = snapshot(world)
    status, first, _ = invoke(make(world, out), capsys)
    assert status == 2, first
    assert first.startswith("error: "), first
    for word in words:
        assert word in first, first
    assert not out.exists()
    assert snapshot(world) == before


def test_damaged_orbax_checkpoint_names_it_and_leaves_no_stub(world, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(world / "ckpt", ckpt)
    biggest = max((p for p in (ckpt / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 3])
    out = tmp_path / "out"
    status, first, _ = invoke(config(world, out, model__checkpoint=str(ckpt)), capsys)
    assert status == 2 and "model.checkpoint" in first and "cannot be read" in first, first
    assert not out.exists()


def test_overwrite_starts_clean_and_relative_paths_are_the_same_run(world, finished, tmp_path, capsys,
                                                                    monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    status, _, stdout = invoke(config(world, out, prompt="Say one word.", output__overwrite=True), capsys)
    assert status == 0
    recorded = json.loads((out / "run_config.json").read_text())
    assert recorded["prompt"] == "Say one word."
    summary = json.loads((out / "summary.json").read_text())
    assert summary["records"] + summary["failures"] == IMAGES  # every image once, none of the old run kept

    # The same folders named relatively: the same run, nothing to redo, summary kept.
    monkeypatch.chdir(tmp_path)
    c = config(world, "out", prompt="Say one word.")
    c.input.paths = os.path.relpath(world / "images", tmp_path)
    status, first, stdout = invoke(c, capsys)
    assert status == 0, first
    assert '"units_captioned_now": 0' in stdout
    assert json.loads((out / "summary.json").read_text())["last_run"] == summary["last_run"]


def test_a_fresh_lease_refuses_a_stale_one_is_taken_over(world, finished, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    now = time.time()
    other = {"run_id": "someone-else", "host": "another-host", "pid": 1, "started": now - 50, "heartbeat": now - 5}
    (out / LEASE_FILE).write_text(json.dumps(other))
    before = snapshot(out)
    status, first, _ = invoke(config(world, out), capsys)
    assert status == 2 and "being written by another job" in first and "another-host" in first, first
    assert snapshot(out) == before

    # Same host, process gone (a killed job restarted here): taken over at once.
    (out / LEASE_FILE).write_text(json.dumps({**other, "host": socket.gethostname(), "pid": 2**22 + 12345}))
    status, _, stdout = invoke(config(world, out), capsys)
    assert status == 0 and "lease_taken_over_from" in stdout
    assert not (out / LEASE_FILE).exists()  # released at the end

    # Another host, silent for longer than lease_stale_s: taken over.
    (out / LEASE_FILE).write_text(json.dumps({**other, "heartbeat": now - 30}))
    status, _, stdout = invoke(config(world, out, output__lease_stale_s=10.0), capsys)
    assert status == 0 and "another-host" in stdout


def test_everything_failing_exits_3_with_a_readable_empty_dataset(world, tmp_path, capsys):
    import tensorflow_datasets as tfds
    out = tmp_path / "out"
    status, _, stdout = invoke(config(world, out, input__paths=str(world / "broken")), capsys)
    assert status == 3
    assert "2 of 2 samples failed" in stdout and "exit status 3" in stdout
    assert "as_data_source" not in stdout  # no hint that would fail on an empty split
    builder = tfds.builder_from_directory(str(out))
    assert builder.info.splits["train"].num_examples == 0
    failures = [json.loads(line) for f in out.glob("failures*.jsonl") for line in f.read_text().splitlines()]
    assert sorted(f["key"] for f in failures) == ["b0", "b1"]



@pytest.mark.parametrize("captioned,failed,share,status", [
    (5, 0, 1.0, 0), (0, 3, 1.0, 3), (2, 1, 0.2, 3), (2, 1, 0.5, 0), (0, 0, 1.0, 0)])
def test_exit_status_follows_the_failure_share(world, captioned, failed, share, status):
    c = config(world, "unused", output__max_failure_share=share)
    assert outcome.exit_status({"captioned": captioned, "failed": failed}, c) == status


def test_counts_add_up_and_a_rerun_keeps_the_summary(world, finished, capsys):
    summary = json.loads((finished / "summary.json").read_text())
    last = summary["last_run"]
    assert last["captioned"] + last["failed"] == IMAGES  # an empty caption is a failure, not also a caption
    assert last["captioned"] == summary["records"] and last["failed"] == summary["failures"]
    assert last["captioning_s"] <= last["wall_s"]
    status, _, stdout = invoke(config(world, finished), capsys)
    assert status == 0 and '"units_captioned_now": 0' in stdout
    assert json.loads((finished / "summary.json").read_text())["last_run"] == last


def test_interrupted_exits_130(world, tmp_path, capsys, monkeypatch):
    from recap_jax.captioning import run as run_module

    def interrupted(config):
        raise KeyboardInterrupt
    monkeypatch.setattr(run_module, "run", interrupted)
    status, first, _ = invoke(config(world, tmp_path / "out"), capsys)
    assert status == 130 and "interrupted" in first and "again" in first


def test_no_pytorch_warning_and_one_line_on_a_usage_error(tmp_path):
    """transformers warns on import when PyTorch is missing: hide torch and look at stderr."""
    import subprocess
    import sys
    hide = tmp_path / "hide_torch"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(hide), str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "recap_jax.caption", f"--config={REPO / 'configs' / 'demo.py'}",
                           f"--config.output.dir={tmp_path / 'out'}", "--config.decode.batch_size=0"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: decode.batch_size=0: must be >= 1"], proc.stderr[-2000:]
    check = subprocess.run([sys.executable, "-c", "import transformers.utils as u; print(u.is_torch_available())"],
                           capture_output=True, text=True, env=env, timeout=300)
    assert check.stdout.strip() == "False"  # torch really was hidden


def test_convert_names_a_truncated_safetensors_file(world):
    from recap_jax.conversion.tensors import CheckpointTensors
    from recap_jax.errors import ConversionError
    with pytest.raises(ConversionError, match=r"hf-truncated/model\.safetensors: not a readable safetensors"):
        CheckpointTensors().add_folder(world / "hf-truncated", [])
