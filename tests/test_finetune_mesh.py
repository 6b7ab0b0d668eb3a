"""The train step on 8 simulated devices with fsdp=8 equals the one-device step."""

import json
import subprocess
import sys

import pytest

from caption_helpers import REPO, env


@pytest.mark.slow  # a fresh 8-device process compiling two meshes' steps
def test_fsdp8_step_equals_one_device():
    result = subprocess.run([sys.executable, str(REPO / "tests" / "finetune_mesh_script.py")],
                            capture_output=True, text=True, env=env(devices=8), cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["embed_shards"] == 8  # the params really are sharded
    for a, b in zip(out["one"], out["fsdp8"]):
        assert abs(a - b) < 1e-5, out
    assert out["one"][1] != out["one"][0]  # the second loss is after an update
    assert out["max_param_diff"] < 1e-5, out
