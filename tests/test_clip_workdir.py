"""A CLIP workdir belongs to one run: another model, tokenizer or data is refused by name."""

import json

import pytest

from clip_helpers import tiny_config, write_shapes
from recap_jax.clip import trainer
from recap_jax.data.identity import DifferentRunError
from recap_jax.errors import ConfigError


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_shapes(tmp_path_factory.mktemp("shapes"), num_train=64)


def _config(shapes, workdir, model=None, **data):
    config = tiny_config(shapes, workdir, global_batch_size=16, num_steps=2, warmup_steps=1, log_every=1,
                         checkpoint_every=2)
    config.eval.datasets.heldout.folder = ""
    config.model.update(model or {})
    config.data.update(data)
    return config


def test_another_model_or_data_is_refused_before_restoring(shapes, tmp_path):
    trainer.train(_config(shapes, tmp_path / "run"))
    recorded = json.loads((tmp_path / "run" / "run_identity.json").read_text())
    assert recorded["data.folders"] == shapes["train"] and recorded["data.org_caption_prob"] == 0.8
    with pytest.raises(ConfigError, match=r"holds a different run \(model\.embed_dim, model\.image_size differ"):
        trainer.train(_config(shapes, tmp_path / "run", model=dict(embed_dim=32, image_size=16)))
    with pytest.raises(DifferentRunError) as error:
        trainer.train(_config(shapes, tmp_path / "run", org_caption_prob=0.2, split="heldout"))
    message = str(error.value)
    assert message.startswith("workdir: ") and "2 field(s) differ" in message
    assert "data.org_caption_prob: 0.8 -> 0.2" in message and 'data.split: "train" -> "heldout"' in message
    # A compute-only change (dtype) is the same run: it resumes (nothing left to train).
    assert trainer.train(_config(shapes, tmp_path / "run", model=dict(dtype="bfloat16")))["step"] == 2
