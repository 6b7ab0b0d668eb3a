"""The CLIP part of the plan: the train step's FLOPs count every layer of both towers (XLA's
cost analysis counts a scanned layer once), close to the model's own matmul FLOPs."""

import importlib.util
import pathlib

import jax
import pytest

from recap_jax.planning.clip_plan import compile_clip_step

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_config(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.slow  # a train step + two layer compiles: 244 s under a load average of 26 (shared 2 cores)
def test_step_flops_count_every_layer():
    config = load_config("clip_tiny")
    plan = compile_clip_step(config, jax.devices()[:1])
    assert plan.step_cost.flops > 1.2 * plan.step.flops  # the missing layers were added
    # Matmuls dominate: the compiled count (norms, softmax, the optimizer included) is a little above.
    assert plan.model_flops < plan.step_cost.flops < 1.5 * plan.model_flops
    assert plan.step_cost.bytes_accessed > plan.step.bytes_accessed
