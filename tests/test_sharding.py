"""Every mesh shape the config allows produces the same tokens as one device (8 simulated CPUs),
sampled ones included."""

import json
import os
import subprocess
import sys

import pytest

from recap_jax.parallel.mesh import make_mesh
from tiny_llava import save_tiny_llava

HERE = os.path.dirname(__file__)


def test_mesh_shapes_give_identical_tokens(tmp_path):
    hf_dir = save_tiny_llava(tmp_path / "hf", kv_heads=2, seed=5)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, os.path.join(HERE, "sharded_decode_script.py"), str(hf_dir)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.split("RESULT", 1)[1])
    # Sampled captions depend on the image keys, not on the device count.
    sampled_one = results.pop(json.dumps(dict(data=1)) + " sampled")
    assert results.pop(json.dumps(dict(data=8)) + " sampled") == sampled_one
    single = results.pop(json.dumps(dict(data=1)))
    assert sampled_one != single["tokens"]
    assert single["num_devices"] == 1
    assert any(len(t) > 0 for t in single["tokens"])
    for axes, result in results.items():
        assert result["num_devices"] == 8
        assert result["tokens"] == single["tokens"], axes
    # The tensor/fsdp meshes really shard parameters.
    assert any("tensor" in spec for spec in results[json.dumps(dict(data=4, tensor=2))]["param_specs"])
    assert any("fsdp" in spec for spec in results[json.dumps(dict(fsdp=4, tensor=2))]["param_specs"])


def test_mesh_errors_name_the_problem():
    import jax
    with pytest.raises(ValueError, match="unknown axis"):
        make_mesh({"model": 2})
    with pytest.raises(ValueError, match="multiply to"):
        make_mesh({"data": len(jax.devices()) + 1})
