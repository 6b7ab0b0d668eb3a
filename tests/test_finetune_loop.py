"""finetune on the one training loop: TensorBoard = metrics.jsonl, SIGINT -> 130 -> exact resume,
nothing to learn is exit 2 before any step, one job per workdir."""

import subprocess

import jax
import numpy as np
import pytest
from flax import traverse_util

from finetune_helpers import CAPTIONS, tiny_checkpoint, write_images, write_llava_json
from loop_helpers import REPO, SIGINT, env, python_module, run_until_line_then_signal, tensorboard_scalars, \
    training_rows
from recap_jax.captioning import model_loading
from recap_jax.data.lease import Lease
from recap_jax.training import checkpoints
from recap_jax.finetuning.defaults import base_config
from recap_jax.finetuning.trainer import run

TRAIN = dict(trainable="projector+llm", num_steps=6, global_batch_size=4, accum_steps=2, learning_rate=3e-3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune_loop")
    _, ckpt = tiny_checkpoint(root)
    names = write_images(root / "images")
    return root, ckpt, write_llava_json(root / "data.json", names, CAPTIONS)


def _config(ckpt, data, images, workdir, **train):
    c = base_config()
    c.model.checkpoint, c.workdir = str(ckpt), str(workdir)
    c.data.path, c.data.image_folder = str(data), str(images)
    c.data.max_length, c.data.length_buckets, c.data.num_workers = 64, (48,), 2
    c.mesh.fsdp, c.distributed.mode = 1, "off"
    c.export.hf = False
    c.train.update(dict(TRAIN, log_every=1, checkpoint_every=100, **train))
    return c


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    root, ckpt, data = tiny
    workdir = tmp_path_factory.mktemp("reference") / "run"
    return workdir, run(_config(ckpt, data, root / "images", workdir))


def _flat(checkpoint):
    _, params = model_loading.load_captioner(checkpoint=str(checkpoint))
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(params)).items()}


def test_tensorboard_shows_the_losses_of_metrics_jsonl(reference):
    workdir, summary = reference
    rows = [r for r in training_rows(workdir) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and summary["steps"] == 6
    assert tensorboard_scalars(workdir, "loss") == pytest.approx({r["step"]: r["loss"] for r in rows}, rel=1e-6)
    assert tensorboard_scalars(workdir, "learning_rate")[6] == pytest.approx(rows[-1]["learning_rate"])


def _command(tiny, workdir, *extra):
    root, ckpt, data = tiny
    settings = dict(TRAIN, log_every=1, checkpoint_every=100)
    return python_module(
        "recap_jax.finetune", f"--config={REPO / 'configs' / 'finetune_cpu.py'}", f"--config.model.checkpoint={ckpt}",
        "--config.model.build_tiny_if_missing=False", f"--config.data.path={data}",
        f"--config.data.image_folder={root / 'images'}", f"--config.workdir={workdir}", "--config.data.max_length=64",
        "--config.data.length_buckets=(48,)", "--config.export.hf=False", "--config.mesh.fsdp=1",
        *[f"--config.train.{k}={v}" for k, v in settings.items()], *extra)


def test_sigint_saves_exits_130_and_the_rerun_ends_bit_identical(tiny, reference, tmp_path):
    workdir = tmp_path / "run"
    code, out, err = run_until_line_then_signal(_command(tiny, workdir), "[finetune] step 2 ", SIGINT)
    assert code == 130, err[-2000:]
    stopped_at = checkpoints.step_folders(workdir)
    assert len(stopped_at) == 1 and 2 <= stopped_at[0] < 6, (stopped_at, out)
    assert not (workdir / "export").exists()
    rerun = subprocess.run(_command(tiny, workdir), capture_output=True, text=True, env=env(), cwd=REPO, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"resumed at step {stopped_at[0]}" in rerun.stdout
    expected, got = _flat(reference[1]["export"]), _flat(workdir / "export")
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=str(k))
    assert training_rows(workdir) == training_rows(reference[0])  # each step logged once, as uninterrupted


def test_no_usable_image_is_exit_2_before_any_step(tiny, tmp_path):
    empty = tmp_path / "empty_images"
    empty.mkdir()
    workdir = tmp_path / "run"
    result = subprocess.run(_command(tiny, workdir, f"--config.data.image_folder={empty}"), capture_output=True,
                            text=True, env=env(), cwd=REPO, timeout=900)
    assert result.returncode == 2, result.stderr[-2000:]
    first = result.stderr.splitlines()[0]
    assert first.startswith("error: data.image_folder: no usable example") and f"all {len(CAPTIONS)} examples" in first
    assert "[finetune] step" not in result.stdout
    # The evidence the message names; no identity, config, checkpoints, export.
    assert sorted(p.name for p in workdir.iterdir()) == ["failures-00000.jsonl"]


def test_a_second_job_on_the_workdir_is_refused(tiny, tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    with Lease(workdir, "another-run", field="workdir"):  # a live job of this host (this test process)
        result = subprocess.run(_command(tiny, workdir), capture_output=True, text=True, env=env(), cwd=REPO,
                                timeout=900)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith(f"error: workdir: {workdir} is being written by another job")
    assert sorted(p.name for p in workdir.iterdir()) == []
