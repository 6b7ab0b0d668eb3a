"""The sharded global-batch loss equals the single-device loss (values and gradients)."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recap_jax.clip import loss as loss_lib

_EIGHT_DEVICE_CHECK = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from recap_jax.clip import loss as loss_lib
    from recap_jax.parallel.mesh import make_mesh
    assert jax.device_count() == 8, jax.devices()

    rng = np.random.default_rng(0)
    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)
    img = jnp.asarray(unit(rng.normal(size=(32, 16))), jnp.float32)
    txt = jnp.asarray(unit(rng.normal(size=(32, 16))), jnp.float32)
    scale, bias = jnp.float32(2.3), jnp.float32(-4.0)

    for kind in ("softmax", "sigmoid"):
        def reference(img, txt, scale, bias):
            if kind == "softmax":
                return loss_lib.softmax_loss(img, txt, scale)
            return loss_lib.sigmoid_loss(img, txt, scale, bias)
        ref_val, ref_grads = jax.value_and_grad(reference, argnums=(0, 1, 2, 3))(img, txt, scale, bias)
        for axes in ({"data": 8}, {"data": 2, "fsdp": 4}, {"data": 4, "tensor": 2}):
            mesh = make_mesh(axes)
            batch = NamedSharding(mesh, P(("data", "fsdp")))
            sharded = loss_lib.sharded_contrastive_loss(kind, mesh)
            f = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1, 2, 3)))
            val, grads = f(jax.device_put(img, batch), jax.device_put(txt, batch), scale, bias)
            # the embeddings really are split over devices
            assert len(jax.device_put(img, batch).addressable_shards) == 8
            np.testing.assert_allclose(val, ref_val, rtol=1e-5, atol=1e-5)
            for g, r in zip(grads, ref_grads):
                np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-5)
            print("ok", kind, axes, float(val))
""")


def test_sharded_loss_on_8_devices_matches_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", _EIGHT_DEVICE_CHECK], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok") == 6, result.stdout


def _naive_softmax_loss(img, txt, log_scale):
    """Textbook CLIP loss written with explicit loops (independent of the library formulas)."""
    scale = np.exp(log_scale)
    logits = scale * img @ txt.T
    n = len(img)
    i2t = [-(logits[i, i] - np.log(np.sum(np.exp(logits[i])))) for i in range(n)]
    t2i = [-(logits[j, j] - np.log(np.sum(np.exp(logits[:, j])))) for j in range(n)]
    return (np.mean(i2t) + np.mean(t2i)) / 2


def _naive_sigmoid_loss(img, txt, log_scale, bias):
    logits = np.exp(log_scale) * img @ txt.T + bias
    n = len(img)
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            total += np.log1p(np.exp(-z * logits[i, j]))
    return total / n


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_loss_formulas_match_naive_loops(kind):
    rng = np.random.default_rng(1)
    img = rng.normal(size=(6, 4)); img /= np.linalg.norm(img, axis=-1, keepdims=True)
    txt = rng.normal(size=(6, 4)); txt /= np.linalg.norm(txt, axis=-1, keepdims=True)
    if kind == "softmax":
        want = _naive_softmax_loss(img, txt, 1.5)
        got = loss_lib.softmax_loss(jnp.asarray(img), jnp.asarray(txt), jnp.float32(1.5))
    else:
        want = _naive_sigmoid_loss(img, txt, 1.5, -2.0)
        got = loss_lib.sigmoid_loss(jnp.asarray(img), jnp.asarray(txt), jnp.float32(1.5), jnp.float32(-2.0))
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_perfect_alignment_gives_low_softmax_loss():
    eye = jnp.eye(8)
    assert float(loss_lib.softmax_loss(eye, eye, jnp.log(100.0))) < 1e-3
    assert float(loss_lib.softmax_loss(eye, jnp.roll(eye, 1, axis=0), jnp.log(100.0))) > 10


def test_unknown_loss_names_the_field():
    with pytest.raises(ValueError, match="train.loss"):
        loss_lib.sharded_contrastive_loss("hinge", None)
