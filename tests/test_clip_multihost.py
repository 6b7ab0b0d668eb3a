"""Two hosts (2 processes x 4 CPU devices, jax.distributed) train exactly like one 8-device host."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "clip_multihost_script.py")


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_hosts_match_one_host(tmp_path):
    data_root = str(tmp_path / "shapes")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    single = subprocess.run([sys.executable, SCRIPT, "0", "1", "0", str(tmp_path / "one"), data_root,
                             str(tmp_path / "one.npz")], env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-5000:]

    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, SCRIPT, str(i), "2", port, str(tmp_path / "two"), data_root,
                               str(tmp_path / "two.npz")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-5000:]
    assert sorted(os.listdir(tmp_path / "two" / "checkpoints")) == ["3", "6"]

    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert set(one.files) == set(two.files)
    for name in one.files:  # same examples, hosts only permute the global batch: same result
        np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=2e-6, err_msg=name)
