"""Training parity with open_clip: the same random model (built by open_clip, converted into ours),
the same batches, AdamW, warm-up + cosine schedule, gradient clipping, logit-scale clamp and loss:
per-step losses equal within 1e-4 (float32) and the parameters close after the steps."""

import math

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from open_clip_helpers import ARCHS, build_open_clip, open_clip_train_steps, random_batches, save_open_clip
from recap_jax.clip import open_clip_weights
from recap_jax.clip.model import CLIP
from recap_jax.parallel.mesh import make_mesh

STEPS, BATCH, LR, WARMUP, WD = 12, 16, 1e-3, 3, 0.1


def our_trainer(model: CLIP, params, train: ml_collections.ConfigDict, loss: str):
    """(state, step_fn) of OUR trainer for `model` started from `params`: the one place that names
    the optimizer builder and the train step (re-point it here when they move)."""
    from recap_jax.clip import train_step

    mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    tx = train_step.make_optimizer(train)
    _, shardings = train_step.abstract_train_state(model, tx, mesh, 0)
    step_fn = train_step.make_train_step(model, tx, mesh, loss_kind=loss, accum_steps=1,
                                         logit_scale_max=100.0, learning_rate_fn=train_step.learning_rate_schedule(train),
                                         state_shardings=shardings)
    state, _ = train_step.create_train_state(model, tx, mesh, 0, init_from=params)
    return state, step_fn


def train_config() -> ml_collections.ConfigDict:
    """open_clip_train's defaults for ViTs (beta2 0.98, eps 1e-6), cosine to 0, clip 1.0."""
    return ml_collections.ConfigDict(dict(learning_rate=LR, warmup_steps=WARMUP, num_steps=STEPS, end_lr_ratio=0.0,
                                          b1=0.9, b2=0.98, eps=1e-6, weight_decay=WD, grad_clip_norm=1.0))


def run_both(arch: str, tmp_path, loss: str = "softmax"):
    model_cfg = ARCHS[arch]
    torch_model = build_open_clip(model_cfg)
    folder = save_open_clip(torch_model, model_cfg, tmp_path / arch)
    cfg, params, _ = open_clip_weights.load_open_clip(folder)
    batches = random_batches(model_cfg, BATCH, 3)
    theirs = open_clip_train_steps(torch_model, batches, STEPS, lr=LR, warmup=WARMUP, wd=WD, siglip=loss == "sigmoid")
    state, step_fn = our_trainer(CLIP(cfg), params, train_config(), loss)
    ours = []
    for step in range(STEPS):
        batch = {k: jnp.asarray(v) for k, v in batches[step % len(batches)].items()}
        state, metrics = step_fn(state, batch)
        ours.append(float(metrics["loss"]))
    return np.array(ours), np.array(theirs), state.params, torch_model


@pytest.mark.parametrize("arch,loss", [("b16", "softmax"), ("htxt", "softmax"), ("siglip", "sigmoid")])
def test_same_losses_and_params_as_open_clip(arch, loss, tmp_path):
    ours, theirs, params, torch_model = run_both(arch, tmp_path, loss)
    assert theirs[-1] < theirs[0] - 0.3, f"open_clip did not learn: {theirs}"  # the comparison means something
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
    trained = open_clip_weights.open_clip_tensors(params)
    reference = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
    assert set(trained) == set(reference)
    worst = max((float(np.max(np.abs(trained[k] - reference[k]))), k) for k in reference)
    moved = max(float(np.max(np.abs(reference[k] - v))) for k, v in
                open_clip_weights.open_clip_tensors(open_clip_weights.load_open_clip(str(tmp_path / arch))[1]).items())
    assert moved > 100 * worst[0], f"training moved params by {moved}, ours differ by {worst}"
    assert worst[0] < 1e-4, f"params differ after {STEPS} steps: {worst}"
    assert math.isclose(float(np.exp(params["logit_scale"])), float(torch_model.logit_scale.exp()), rel_tol=1e-5)

