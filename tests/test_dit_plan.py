"""The Recap-DiT part of the plan: the train step's FLOPs count every DiT block and text layer
(XLA's cost analysis counts a scanned block once), close to the model's own matmul FLOPs."""

import jax
import pytest

from configs_loader import load
from recap_jax.planning.dit_plan import compile_dit_step


@pytest.mark.slow  # a train step + a block + a text layer compile on the CPU
def test_step_flops_count_every_block():
    config = load("recap_dit_cpu.py")
    config.model.size, config.model.patch_size, config.train.global_batch_size = "S", 4, 4
    plan = compile_dit_step(config, jax.devices()[:1], text_tower="B")
    assert plan.name == "S/4" and plan.batch_per_chip == 4
    assert plan.step_cost.flops > 3 * plan.step.flops  # 11 of 12 blocks and 11 of 12 text layers were added
    # Matmuls dominate: the compiled count (norms, softmax, the optimizer included) is a little above.
    assert plan.model_flops < plan.step_cost.flops < 1.5 * plan.model_flops, (plan.model_flops, plan.step_cost.flops)
