"""The optimizer and the train step: torch's AdamW, LLaVA's schedule, accumulation, frozen params."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import torch
from flax import linen as nn

from recap_jax.models.llava import LlavaModel
from recap_jax.models.config import llava_config_from_hf
from recap_jax.captioning.tiny_demo import tiny_llava_hf_config
from recap_jax.training import optimizer
from recap_jax.finetuning import step as step_lib
from recap_jax.training.loop_config import train_fields


def test_adamw_step_equals_torch_adamw():
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(5, 4)).astype(np.float32), "b": rng.normal(size=(4,)).astype(np.float32)}
    grads = [{k: (3 * rng.normal(size=v.shape)).astype(np.float32) for k, v in params.items()} for _ in range(2)]
    s = optimizer.OptimizerSettings(learning_rate=1e-2, num_steps=1000, warmup_steps=0, weight_decay=0.1,
                                    b1=0.9, b2=0.95, eps=1e-6, grad_clip_norm=1.0)
    tx = optimizer.make_optimizer(s)
    ours, state = {k: jnp.asarray(v) for k, v in params.items()}, None
    state = tx.init(ours)
    for g in grads:
        updates, state = tx.update({k: jnp.asarray(v) for k, v in g.items()}, state, ours)
        ours = optax.apply_updates(ours, updates)

    w, b = (torch.nn.Parameter(torch.from_numpy(params[k].copy())) for k in ("w", "b"))
    # HF's Trainer groups: decay on matrices, none on biases/norms; the same cosine schedule.
    opt = torch.optim.AdamW([{"params": [w], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0}],
                            lr=1e-2, betas=(0.9, 0.95), eps=1e-6)
    schedule = optimizer.learning_rate_schedule(s)
    for i, g in enumerate(grads):
        w.grad, b.grad = torch.from_numpy(g["w"]), torch.from_numpy(g["b"])
        torch.nn.utils.clip_grad_norm_([w, b], 1.0)
        for group in opt.param_groups:
            group["lr"] = float(schedule(i))
        opt.step()
    assert float(schedule(1)) < 1e-2  # the second step really ran at a decayed rate
    np.testing.assert_allclose(np.asarray(ours["w"]), w.detach().numpy(), rtol=0, atol=2e-6)
    np.testing.assert_allclose(np.asarray(ours["b"]), b.detach().numpy(), rtol=0, atol=2e-6)
    assert np.abs(np.asarray(ours["w"]) - params["w"]).max() > 1e-3  # the step moved the params


def test_schedule_warms_up_then_decays_to_zero():
    t = ml_collections.ConfigDict(dict(train_fields(ml_collections.ConfigDict()), num_steps=100,
                                       warmup_ratio=0.03, learning_rate=1e-3))
    s = optimizer.settings_from_config(t)
    lr = [float(optimizer.learning_rate_schedule(s)(i)) for i in range(101)]
    assert s.warmup_steps == 3 and lr[0] == 0.0 and abs(lr[3] - 1e-3) < 1e-9
    assert lr[1] < lr[2] < lr[3] and all(a >= b for a, b in zip(lr[3:], lr[4:])) and lr[100] < 1e-9


def _tiny():
    config = llava_config_from_hf(tiny_llava_hf_config())
    model = LlavaModel(config)
    side = config.vision.image_size
    rng = np.random.default_rng(1)
    length = config.num_image_tokens + 12
    tokens = rng.integers(8, 200, size=(4, length)).astype(np.int32)
    tokens[:, 2:2 + config.num_image_tokens] = config.image_token_id
    batch = {"tokens": tokens, "targets": np.roll(tokens, -1, axis=1),
             "weights": (np.arange(length) >= length - 8)[None].repeat(4, 0).astype(np.float32),
             "pixels": rng.normal(size=(4, side, side, 3)).astype(np.float32)}
    batch["weights"][1, -3:] = 0  # rows of different answer lengths
    from flax import linen as nn
    params = nn.unbox(model.init(jax.random.PRNGKey(0), tokens[:1], batch["pixels"][:1])["params"])
    return model, params, batch


def test_accumulation_equals_one_big_batch_and_frozen_stay_frozen():
    model, params, batch = _tiny()
    s = optimizer.OptimizerSettings(learning_rate=1e-3, num_steps=10)
    tx = optimizer.make_optimizer(s)
    step = jax.jit(step_lib.make_train_step(model, tx))
    trainable, frozen = step_lib.split_params(params, "projector")
    assert set(trainable) == {"multi_modal_projector"} and "multi_modal_projector" not in frozen
    results = []
    for accum in (1, 2):
        state = step_lib.init_state(trainable, tx)
        micro = {k: v.reshape((accum, v.shape[0] // accum) + v.shape[1:]) for k, v in batch.items()}
        state, metrics = step(state, frozen, micro)
        results.append((state, metrics))
    (s1, m1), (s2, m2) = results
    assert abs(float(m1["loss"]) - float(m2["loss"])) < 1e-6
    # Adam divides each gradient by its own magnitude: where a gradient is ~eps, the float32
    # summation order of the two batchings moves that element's update by a few 1e-6 of lr 1e-3.
    # The params must agree within 1% of one step's update (mis-weighted micro-batches move them by ~lr).
    for a, b in zip(jax.tree.leaves(s1["trainable"]), jax.tree.leaves(s2["trainable"])):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    # Optimizer state only for the trainable (projector) params.
    n_state = sum(x.size for x in jax.tree.leaves(s1["opt_state"]))
    n_projector = sum(x.size for x in jax.tree.leaves(trainable))
    assert 2 * n_projector <= n_state <= 2 * n_projector + 8
    merged = step_lib.merge_params(s1["trainable"], frozen)
    assert jax.tree.structure(merged) == jax.tree.structure(params)


def test_remat_and_chunked_loss_step_equals_the_plain_step():
    model, params, batch = _tiny()
    s = optimizer.OptimizerSettings(learning_rate=1e-3, num_steps=10)
    tx = optimizer.make_optimizer(s)
    trainable, frozen = step_lib.split_params(params, "projector+llm")
    micro = {k: v.reshape((2, v.shape[0] // 2) + v.shape[1:]) for k, v in batch.items()}
    remat_model = LlavaModel(model.config, remat="full")
    # Same params whatever the policy: checkpoints move between the two.
    shapes = jax.eval_shape(lambda: remat_model.init(jax.random.PRNGKey(0), batch["tokens"][:1],
                                                      batch["pixels"][:1]))["params"]
    assert jax.tree.structure(nn.unbox(shapes)) == jax.tree.structure(params)
    plain = jax.jit(step_lib.make_train_step(model, tx))
    chunked = step_lib.make_train_step(remat_model, tx, loss_chunk=5)  # 5 does not divide the length
    jaxpr = str(jax.make_jaxpr(chunked)(step_lib.init_state(trainable, tx), frozen, micro))
    assert "checkpoint" in jaxpr or "remat" in jaxpr
    (s1, m1), (s2, m2) = (f(step_lib.init_state(trainable, tx), frozen, micro) for f in (plain, jax.jit(chunked)))
    assert abs(float(m1["loss"]) - float(m2["loss"])) < 1e-5 and float(m1["loss"]) > 0
    assert abs(float(m1["grad_norm"]) - float(m2["grad_norm"])) < 1e-5 * float(m1["grad_norm"])
    for a, b in zip(jax.tree.leaves(s1["trainable"]), jax.tree.leaves(s2["trainable"])):
        # Adam's update of a near-zero gradient amplifies summation-order noise: 1% of one lr step.
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
