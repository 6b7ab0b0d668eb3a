"""train_clip on the one training loop: TensorBoard = metrics.jsonl, SIGINT -> 130 -> exact resume,
resumed metrics equal an uninterrupted run's, damaged checkpoints named and fallen back from, and
a failed start leaves nothing behind."""

import json
import os
import subprocess

import jax
import numpy as np
import pytest

from clip_helpers import tiny_config, write_shapes
from loop_helpers import REPO, SIGINT, env, python_module, run_until_line_then_signal, tensorboard_scalars, \
    training_rows
from recap_jax.clip import model_loading, trainer
from recap_jax.errors import ConfigError
from recap_jax.parallel.mesh import make_mesh
from recap_jax.training import checkpoints
from recap_jax.training.checkpoints import DamagedCheckpointError


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_shapes(tmp_path_factory.mktemp("shapes"), num_train=256)


def _config(shapes, workdir, **train):
    config = tiny_config(shapes, workdir, global_batch_size=16, num_steps=12, warmup_steps=2, log_every=3,
                         checkpoint_every=4)
    config.train.update(train)
    config.eval.datasets.heldout.folder = ""
    return config


@pytest.fixture(scope="module")
def straight(shapes, tmp_path_factory):
    """An uninterrupted 12-step run: (workdir, result)."""
    workdir = tmp_path_factory.mktemp("straight") / "run"
    return workdir, trainer.train(_config(shapes, workdir))


def _params_equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_tensorboard_shows_the_losses_of_metrics_jsonl(straight):
    workdir, _ = straight
    rows = [r for r in training_rows(workdir) if "loss" in r]
    assert [r["step"] for r in rows] == [3, 6, 9, 12]
    board = tensorboard_scalars(workdir, "loss")
    assert board == pytest.approx({r["step"]: r["loss"] for r in rows}, rel=1e-6)
    assert set(tensorboard_scalars(workdir, "learning_rate")) == {3, 6, 9, 12}


def test_resume_after_a_lost_checkpoint_logs_each_step_once(shapes, straight, tmp_path):
    """A crash after step 9 was logged but before step 12's checkpoint: the rerun restores step 8
    and its log (JSON and TensorBoard) equals the uninterrupted run's."""
    workdir = tmp_path / "run"
    trainer.train(_config(shapes, workdir, stop_after_steps=10))
    assert checkpoints.step_folders(workdir) == [8, 10]
    checkpoints.set_aside(workdir, 10)  # as if the run died before saving step 10
    assert max(r["step"] for r in training_rows(workdir)) == 9  # a row past the restored step
    resumed = trainer.train(_config(shapes, workdir))
    assert training_rows(workdir) == training_rows(straight[0])
    _params_equal(resumed["params"], straight[1]["params"])
    assert tensorboard_scalars(workdir, "loss") == pytest.approx(tensorboard_scalars(straight[0], "loss"))


def _damage(workdir, step):
    """Deletes the data files of a step's state (lost chunks; which array lives where is Orbax's)."""
    for folder, _, files in os.walk(workdir / "checkpoints" / str(step) / "state"):
        if os.path.basename(folder) == "d":
            for f in files:
                os.remove(os.path.join(folder, f))


def test_damaged_newest_checkpoint_is_named_then_the_run_falls_back(shapes, straight, tmp_path, capsys):
    workdir = tmp_path / "run"
    trainer.train(_config(shapes, workdir))
    assert checkpoints.step_folders(workdir) == [8, 12]
    _damage(workdir, 12)
    model, _ = model_loading.build_model(_config(shapes, workdir).model,
                                         model_loading.data_lib.Tokenizer(shapes["tokenizer"]))
    with pytest.raises(DamagedCheckpointError, match=rf"^{workdir}/checkpoints/12: damaged"):
        model_loading.latest_params(str(workdir), model, make_mesh({"data": -1}))
    again = trainer.train(_config(shapes, workdir))  # resumes from 8, saying so, and redoes 9..12
    out = capsys.readouterr().out
    assert f"{workdir}/checkpoints/12: damaged" in out and "resuming from step 8" in out
    _params_equal(again["params"], straight[1]["params"])
    assert os.listdir(workdir / "set_aside")[0].startswith("12-")
    # An explicit step: resume from 8 although 12 is intact (12 is set aside, saying so).
    chosen = trainer.train(_config(shapes, workdir, resume_from_step=8))
    assert "train.resume_from_step=8: step 12 moved to" in capsys.readouterr().out
    _params_equal(chosen["params"], straight[1]["params"])
    with pytest.raises(ConfigError, match=r"^train.resume_from_step: no step 5 under"):
        trainer.train(_config(shapes, workdir, resume_from_step=5))


def test_a_checksum_mismatch_is_a_damaged_checkpoint(shapes, straight, tmp_path):
    """Weights that read back without an error but differ from those saved are refused."""
    workdir = tmp_path / "run"
    trainer.train(_config(shapes, workdir, num_steps=4, warmup_steps=1))
    record = workdir / "checkpoints" / "4" / "loop" / "metadata"
    loop = json.loads(record.read_text())
    key = next(k for k in loop["checksums"] if k.startswith("params/"))
    loop["checksums"][key][0] += 1
    record.write_text(json.dumps(loop))
    model, _ = model_loading.build_model(_config(shapes, workdir).model,
                                         model_loading.data_lib.Tokenizer(shapes["tokenizer"]))
    with pytest.raises(DamagedCheckpointError, match="checksum of 1 array"):
        model_loading.latest_params(str(workdir), model, make_mesh({"data": -1}))


def _command(shapes, workdir, *extra):
    return python_module(
        "recap_jax.train_clip", f"--config={REPO / 'configs' / 'clip_tiny.py'}:folders={shapes['train']}",
        f"--config.workdir={workdir}", f"--config.data.tokenizer={shapes['tokenizer']}",
        "--config.data.num_threads=2", "--config.train.global_batch_size=16", "--config.train.num_steps=12",
        "--config.train.warmup_steps=2", "--config.train.log_every=1", "--config.train.checkpoint_every=100",
        "--config.eval.datasets.heldout.folder=", *extra)


def test_sigint_saves_exits_130_and_the_rerun_ends_bit_identical(shapes, straight, tmp_path):
    workdir = tmp_path / "run"
    code, out, err = run_until_line_then_signal(_command(shapes, workdir), "[train_clip] step 4 ", SIGINT)
    assert code == 130, err[-2000:]
    stopped_at = checkpoints.step_folders(workdir)
    assert len(stopped_at) == 1 and 4 <= stopped_at[0] < 12, (stopped_at, out)
    assert "checkpoint saved" in out
    rerun = subprocess.run(_command(shapes, workdir), capture_output=True, text=True, env=env(), cwd=REPO,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"resumed at step {stopped_at[0]}" in rerun.stdout
    model, _ = model_loading.build_model(_config(shapes, workdir).model,
                                         model_loading.data_lib.Tokenizer(shapes["tokenizer"]))
    params, step = model_loading.latest_params(str(workdir), model, make_mesh({"data": -1}))
    assert step == 12
    _params_equal(params, straight[1]["params"])


def test_a_failed_start_leaves_nothing_that_blocks_the_corrected_command(shapes, tmp_path):
    workdir = tmp_path / "run"
    bad = _command(shapes, workdir, f"--config.data.folders={tmp_path / 'nope'}")
    result = subprocess.run(bad, capture_output=True, text=True, env=env(), cwd=REPO, timeout=600)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith("error: ") and "data.folders" in result.stderr.splitlines()[0]
    assert not workdir.exists()  # no run_identity.json, config.json or checkpoints/ left behind
    good = trainer.train(_config(shapes, workdir, num_steps=2, warmup_steps=1))
    assert good["step"] == 2
