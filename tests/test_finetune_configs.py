"""The fine-tuning configs load, validate, and carry LLaVA-1.5's published recipe."""

import pytest

from configs_loader import load
from recap_jax.errors import ConfigError
from recap_jax.training.trainer import validate

RECIPES = {  # config: (trainable, global batch, learning rate, data format)
    "llava_stage1_v4.py": ("projector", 256, 1e-3, "llava_json"),
    "llava_stage2_v4.py": ("projector+llm", 128, 2e-5, "llava_json"),
    "caption_tune_v4.py": ("projector+llm", 128, 2e-5, "webdataset"),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_pod_configs_follow_llava_1_5(name):
    c = load(name)
    trainable, batch, lr, format = RECIPES[name]
    assert (c.train.trainable, c.train.global_batch_size, c.train.learning_rate, c.data.format) == (
        trainable, batch, lr, format)
    assert c.train.warmup_ratio == 0.03 and c.train.weight_decay == 0.0
    assert c.model.compute_dtype == "bfloat16" and c.mesh.fsdp == -1
    assert c.train.remat == "full" and c.train.loss_chunk > 0  # the 8B step needs both on a v4 chip
    validate(c)  # gs:// paths are checked when opened


def test_cpu_config_validates_and_names_bad_fields():
    c = load("finetune_cpu.py")
    validate(c)
    c.train.trainable = "everything"
    with pytest.raises(ConfigError, match="train.trainable"):
        validate(c)
    c = load("finetune_cpu.py")
    c.train.global_batch_size, c.train.accum_steps = 6, 4
    with pytest.raises(ConfigError, match="accum_steps"):
        validate(c)
    c = load("finetune_cpu.py")
    c.train.remat = "some"
    with pytest.raises(ConfigError, match="train.remat"):
        validate(c)
    c = load("finetune_cpu.py")
    c.train.loss_chunk = -1
    with pytest.raises(ConfigError, match="train.loss_chunk"):
        validate(c)


def test_command_exits_2_naming_the_bad_field():
    import subprocess
    import sys

    from caption_helpers import REPO, env
    result = subprocess.run([sys.executable, "-m", "recap_jax.finetune", "--config=configs/finetune_cpu.py",
                             "--config.train.trainable=everything"], capture_output=True, text=True,
                            env=env(), cwd=REPO, timeout=300)
    assert result.returncode == 2 and "train.trainable" in result.stderr, result.stderr[-2000:]
