"""CLIP training: learning on synthetic shapes, exact resume, sharded steps, accumulation, NaN stop."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from clip_helpers import tiny_config, write_shapes
from recap_jax.clip import evaluate, train_step, trainer
from recap_jax.training import loop
from recap_jax.clip.model import CLIP, config_from_dict
from recap_jax.parallel.mesh import make_mesh

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_shapes(tmp_path_factory.mktemp("shapes"), num_train=1024)


def _small(config, **train):
    """An even smaller, faster variant for bookkeeping tests (numbers, not learning, matter)."""
    config.train.update(dict(global_batch_size=16, num_steps=12, warmup_steps=2, log_every=2,
                             checkpoint_every=4), **train)
    config.eval.datasets.heldout.folder = ""
    return config


def test_tiny_clip_learns_retrieval_on_heldout_shapes(shapes, tmp_path):
    config = tiny_config(shapes, tmp_path / "run", num_steps=300, warmup_steps=30, log_every=100,
                         checkpoint_every=300)
    config.eval.datasets.heldout.folder = shapes["heldout"]
    result = trainer.train(config)
    r = {k.removeprefix("eval/heldout/"): v for k, v in result.items() if k.startswith("eval/heldout/")}
    assert r["num_images"] == 96 and r["num_texts"] == 192  # one image per combination, 2 captions each
    chance_r1, chance_r5 = 1 / 96, evaluate.chance_recall(96, 5)
    print("heldout recalls after 300 steps:", evaluate.format_recalls(r))
    assert r["text_to_image/R@1"] > 5 * chance_r1 and r["image_to_text/R@1"] > 5 * chance_r1
    assert r["text_to_image/R@5"] > 3 * chance_r5 and r["image_to_text/R@5"] > 3 * chance_r5

    # The metrics log has progress rows and the eval row.
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [row["step"] for row in rows if "loss" in row] == [100, 200, 300]
    assert rows[0]["loss"] > rows[2]["loss"]
    assert abs(rows[2]["org_caption_fraction"] - 0.8) < 0.05

    # The evaluation command on the saved run reproduces the in-training figures.
    from recap_jax.clip.retrieval_job import evaluate_config
    import configs_loader
    eval_config = configs_loader.load("clip_eval.py")
    eval_config.model.checkpoint = str(tmp_path / "run")
    eval_config.datasets.main.folder = shapes["heldout"]
    eval_config.datasets.main.split = "train"
    eval_config.datasets.main.caption_fields = "re_caption,org_caption"
    eval_config.output = str(tmp_path / "eval.json")
    # Same images as a COCO-style folder (a list of captions per record), and zero-shot colours.
    eval_config.datasets.coco_style = ml_collections.ConfigDict(dict(
        folder=shapes["coco_style"], split="test", caption_fields="captions", image_field="image",
        max_images=0))
    eval_config.zeroshot.folder = shapes["colours"]
    eval_config.zeroshot.templates = "{} circle left|{} square right|{} triangle top|{} circle bottom"
    results = evaluate_config(eval_config)
    again = results["main"]
    assert results["coco_style"]["num_texts"] == 192
    assert results["coco_style"]["text_to_image/R@5"] > 3 * chance_r5
    print("zero-shot colour accuracy:", results["zeroshot"])
    assert results["zeroshot"]["num_images"] == 96 and results["zeroshot"]["top1"] > 3 / 8
    for key in ("image_to_text/R@1", "text_to_image/R@1", "image_to_text/R@10"):
        assert again[key] == pytest.approx(r[key])
    assert json.load(open(tmp_path / "eval.json"))["main"]["num_texts"] == 192


def test_interrupted_and_resumed_equals_uninterrupted(shapes, tmp_path, monkeypatch):
    straight = trainer.train(_small(tiny_config(shapes, tmp_path / "straight")))

    # Crash during step 7 (after the step-4 checkpoint, before the step-8 one).
    real_make = train_step.make_train_step

    def crashing_make(*args, **kwargs):
        step_fn, calls = real_make(*args, **kwargs), []

        def step(state, batch):
            calls.append(1)
            if len(calls) == 7:
                raise RuntimeError("simulated preemption")
            return step_fn(state, batch)
        return step

    monkeypatch.setattr(train_step, "make_train_step", crashing_make)
    with pytest.raises(RuntimeError, match="simulated preemption"):
        trainer.train(_small(tiny_config(shapes, tmp_path / "resumed")))
    monkeypatch.setattr(train_step, "make_train_step", real_make)
    assert sorted(os.listdir(tmp_path / "resumed" / "checkpoints")) == ["4"]
    resumed = trainer.train(_small(tiny_config(shapes, tmp_path / "resumed")))  # resumes at step 4

    assert resumed["step"] == straight["step"] == 12
    diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                         straight["params"], resumed["params"])
    assert max(jax.tree.leaves(diffs)) <= 1e-6, diffs
    # ...and the runs really updated the params (the comparison is not vacuous).
    rows = [json.loads(line) for line in open(tmp_path / "straight" / "metrics.jsonl")]
    assert len(rows) == 6 and all(r["learning_rate"] > 0 and r["grad_norm"] > 0 for r in rows)


def test_stop_after_steps_then_continue(shapes, tmp_path):
    first = trainer.train(_small(tiny_config(shapes, tmp_path / "run"), stop_after_steps=6))
    assert first["step"] == 6 and sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["4", "6"]
    second = trainer.train(_small(tiny_config(shapes, tmp_path / "run")))
    assert second["step"] == 12


def test_non_finite_loss_stops_with_a_clear_message(shapes, tmp_path):
    config = _small(tiny_config(shapes, tmp_path / "run"), learning_rate=float("nan"), log_every=1)
    with pytest.raises(loop.NonFiniteLossError, match="non-finite loss .* at step 2"):
        trainer.train(config)
    assert not os.path.exists(tmp_path / "run" / "checkpoints" / "4")


def _tiny_model(loss="softmax"):
    cfg = config_from_dict(dict(image="tiny/8", text="tiny", image_size=16, text_context=8, embed_dim=8,
                                vocab_size=50, eos_token_id=49, use_logit_bias=loss == "sigmoid"))
    tcfg = ml_collections.ConfigDict(dict(num_steps=10, warmup_steps=2, learning_rate=1e-3, end_lr_ratio=0.1,
                                          b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1, grad_clip_norm=1.0))
    return CLIP(cfg), train_step.make_optimizer(tcfg)


def _random_batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, 48, size=(n, 8)).astype(np.int32)
    tokens[np.arange(n), rng.integers(2, 8, size=n)] = 49  # EOS somewhere
    return {"image": rng.normal(size=(n, 16, 16, 3)).astype(np.float32), "tokens": tokens}


@pytest.mark.parametrize("loss", ["softmax", pytest.param("sigmoid", marks=pytest.mark.slow)])
def test_gradient_accumulation_equals_full_batch(loss):
    model, tx = _tiny_model(loss)
    mesh = make_mesh({"data": -1})
    results = []
    for accum in (1, 4):
        state, shardings = train_step.create_train_state(model, tx, mesh, seed=0)
        step = train_step.make_train_step(model, tx, mesh, loss_kind=loss, accum_steps=accum,
                                          logit_scale_max=100, state_shardings=shardings)
        for i in range(2):
            state, metrics = step(state, _random_batch(seed=i))
        results.append((state.params, float(metrics["loss"])))
    (p1, l1), (p4, l4) = results
    assert l1 == pytest.approx(l4, rel=1e-5)
    diffs = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), p1, p4)
    assert max(jax.tree.leaves(diffs)) < 1e-5


def test_logit_scale_is_clamped():
    model, tx = _tiny_model()
    mesh = make_mesh({"data": -1})
    state, shardings = train_step.create_train_state(model, tx, mesh, seed=0)
    step = train_step.make_train_step(model, tx, mesh, loss_kind="softmax", accum_steps=1,
                                      logit_scale_max=10.0, state_shardings=shardings)
    _, metrics = step(state, _random_batch())
    assert float(metrics["logit_scale"]) == pytest.approx(10.0)  # init 1/0.07 = 14.3 > 10


_SHARDED_STEP_CHECK = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, numpy as np
    sys_path = os.environ["TESTS_DIR"]
    import sys; sys.path.insert(0, sys_path)
    from test_clip_train import _tiny_model, _random_batch
    from recap_jax.clip import train_step
    from recap_jax.parallel.mesh import make_mesh
    assert jax.device_count() == 8

    def run(mesh, loss, accum):
        model, tx = _tiny_model(loss)
        state, shardings = train_step.create_train_state(model, tx, mesh, seed=0)
        step = train_step.make_train_step(model, tx, mesh, loss_kind=loss, accum_steps=accum,
                                          logit_scale_max=100, state_shardings=shardings)
        losses = []
        for i in range(2):
            state, metrics = step(state, _random_batch(seed=i))
            losses.append(float(metrics["loss"]))
        return jax.device_get(state.params), losses

    single = make_mesh({"data": 1}, devices=jax.devices()[:1])
    # (data=8 alone is covered by test_clip_loss; here FSDP + accumulation, and tensor parallelism.)
    for loss, accum, axes in (("softmax", 2, {"data": 2, "fsdp": 4}), ("sigmoid", 1, {"data": 4, "tensor": 2})):
        want_params, want_losses = run(single, loss, accum)
        got_params, got_losses = run(make_mesh(axes), loss, accum)
        np.testing.assert_allclose(got_losses, want_losses, rtol=1e-5)
        diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), want_params, got_params)
        assert max(jax.tree.leaves(diffs)) < 1e-5, diffs
        print("ok", loss, accum, axes, got_losses)
""")


def test_sharded_train_step_on_8_devices_matches_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               TESTS_DIR=os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", _SHARDED_STEP_CHECK], env=env, capture_output=True,
                            text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr[-5000:]
    assert result.stdout.count("ok") == 2, result.stdout
