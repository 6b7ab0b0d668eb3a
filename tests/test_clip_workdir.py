"""A CLIP workdir belongs to one run: another model, tokenizer or data is refused by name."""

import json

import pytest

from clip_helpers import tiny_config, write_shapes
from recap_jax.clip import trainer
from recap_jax.data.identity import DifferentRunError


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_shapes(tmp_path_factory.mktemp("shapes"), num_train=64)


def _config(shapes, workdir, **model):
    config = tiny_config(shapes, workdir, global_batch_size=16, num_steps=2, warmup_steps=1, log_every=1,
                         checkpoint_every=2)
    config.eval.datasets.heldout.folder = ""
    config.model.update(model)
    return config


def test_another_model_size_is_refused_before_restoring(shapes, tmp_path):
    trainer.train(_config(shapes, tmp_path / "run"))
    recorded = json.loads((tmp_path / "run" / "run_identity.json").read_text())
    assert recorded["model.embed_dim"] == 64 and recorded["data.folders"] == shapes["train"]
    with pytest.raises(DifferentRunError) as error:
        trainer.train(_config(shapes, tmp_path / "run", embed_dim=32, image_size=16))
    message = str(error.value)
    assert message.startswith("workdir: ") and "2 field(s) differ" in message
    assert "model.embed_dim: 64 -> 32" in message and "model.image_size: 32 -> 16" in message
    # A compute-only change (dtype) is the same run: it resumes (nothing left to train).
    assert trainer.train(_config(shapes, tmp_path / "run", dtype="bfloat16"))["step"] == 2
