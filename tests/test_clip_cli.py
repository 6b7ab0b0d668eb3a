"""Commands, configs, starting from / evaluating a Hugging Face CLIP, bfloat16 compute."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import linen as nn

import configs_loader
from clip_helpers import tiny_config, write_shapes
from recap_jax.clip import data, hf_weights, model as model_lib, model_loading, train_step, trainer
from recap_jax.parallel.mesh import make_mesh

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("module,expected", [
    ("recap_jax.train_clip", ["--config", "configs/clip_tiny.py", "resumes"]),
    ("recap_jax.eval_retrieval", ["--config", "recall", "hf_dir"]),
])
def test_help(module, expected):
    result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    for word in expected:
        assert word in result.stdout


def test_pod_config_loads_and_builds_the_big_model():
    config = configs_loader.load(
        "clip_v4_pod.py", "workdir=gs://b/run,folders=gs://b/a,gs://b/b,tokenizer=/tok,eval=gs://b/coco")
    assert config.workdir == "gs://b/run" and config.data.folders == "gs://b/a,gs://b/b"
    assert config.data.org_caption_prob == 0.8 and config.data.re_caption_max_tokens > config.data.org_caption_max_tokens
    cfg = model_lib.config_from_dict(dict(config.model.to_dict(), vocab_size=49408))
    assert (cfg.patch_size, cfg.vision.width, cfg.text.width, cfg.dtype) == (16, 1024, 1024, jnp.bfloat16)
    assert model_loading.text_length(config.data) <= cfg.text_context
    abstract = jax.eval_shape(lambda: model_lib.init_params(model_lib.CLIP(cfg), jax.random.key(0)))
    assert 600e6 < model_lib.count_params(abstract) < 750e6  # ViT-L/16 (~304M) + 24-layer 1024 text tower
    with pytest.raises(ValueError, match="clip_v4_pod.py: unknown config argument 'bucket=gs://x'"):
        configs_loader.load("clip_v4_pod.py", "bucket=gs://x")
    assert configs_loader.load("clip_eval.py").batch_size > 0


def test_config_errors_name_the_field(tmp_path):
    shapes = {"train": "", "tokenizer": ""}
    config = tiny_config(shapes, tmp_path)
    config.train.global_batch_size, config.train.accum_steps = 63, 2
    with pytest.raises(ValueError, match="train.global_batch_size"):
        trainer.validate_config(config)
    config = tiny_config(shapes, "")
    with pytest.raises(ValueError, match="workdir"):
        trainer.validate_config(config)
    config = tiny_config(shapes, tmp_path)
    config.data.re_caption_max_tokens = 500
    with pytest.raises(ValueError, match="model.text_context"):
        trainer.validate_config(config)
    with pytest.raises(ValueError, match="data.tokenizer"):
        data.Tokenizer(str(tmp_path / "nope"))


def _save_tiny_hf_clip(folder, vocab_size, eos_token_id):
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=32, eos_token_id=eos_token_id,
                         bos_token_id=0, pad_token_id=eos_token_id),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=1, num_attention_heads=4),
        projection_dim=16)
    torch.manual_seed(0)
    transformers.CLIPModel(config).save_pretrained(folder, safe_serialization=True)


def test_train_from_and_evaluate_a_hf_clip(tmp_path_factory, tmp_path):
    shapes = write_shapes(tmp_path_factory.mktemp("shapes_hf"), num_train=64)
    tokenizer = data.Tokenizer(shapes["tokenizer"])
    hf_dir = str(tmp_path / "hf")
    _save_tiny_hf_clip(hf_dir, vocab_size=40, eos_token_id=tokenizer.eos_id)

    # Fine-tuning starts exactly from the HF weights.
    config = tiny_config(shapes, tmp_path / "run", global_batch_size=16, num_steps=2, warmup_steps=1,
                         log_every=1, checkpoint_every=2)
    config.model.hf_dir = hf_dir
    model, hf_params = model_loading.build_model(config.model, tokenizer)
    tx = train_step.make_optimizer(config.train)
    state, _ = train_step.create_train_state(model, tx, make_mesh({"data": -1}), seed=0, init_from=hf_params)
    for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(hf_params)):
        np.testing.assert_array_equal(np.asarray(got), want)
    result = trainer.train(config)
    assert result["step"] == 2 and np.isfinite(result["loss"])

    # A tokenizer whose EOS differs from the model's is refused (pooling would be wrong).
    bad_dir = str(tmp_path / "hf_bad")
    _save_tiny_hf_clip(bad_dir, vocab_size=40, eos_token_id=39)
    config.model.hf_dir = bad_dir
    with pytest.raises(ValueError, match="data.tokenizer"):
        model_loading.build_model(config.model, tokenizer)

    # The evaluation command takes the HF folder directly.
    from recap_jax.clip.retrieval_job import evaluate_config
    eval_config = configs_loader.load("clip_eval.py")
    eval_config.model.hf_dir = hf_dir
    eval_config.tokenizer = shapes["tokenizer"]
    eval_config.datasets.main.folder = shapes["heldout"]
    eval_config.datasets.main.split = "train"
    metrics = evaluate_config(eval_config)["main"]
    assert metrics["num_images"] == 96 and 0 <= metrics["text_to_image/R@10"] <= 1


def test_bfloat16_compute_step():
    cfg = model_lib.config_from_dict(dict(image="tiny/8", text="tiny", image_size=16, text_context=8,
                                          embed_dim=8, vocab_size=50, eos_token_id=49, dtype="bfloat16"))
    model = model_lib.CLIP(cfg)
    from test_clip_train import _random_batch, _tiny_model
    _, tx = _tiny_model()
    mesh = make_mesh({"data": -1})
    state, shardings = train_step.create_train_state(model, tx, mesh, seed=0)
    step = train_step.make_train_step(model, tx, mesh, loss_kind="softmax", accum_steps=1,
                                      logit_scale_max=100, state_shardings=shardings)
    state, metrics = step(state, _random_batch())
    assert np.isfinite(float(metrics["loss"]))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))  # params stay float32
    hidden = jax.jit(lambda p, x: model.apply({"params": p}, x, method=lambda m, x: m.image_tower(x)))(
        state.params, jnp.ones((2, 16, 16, 3)))
    assert hidden.dtype == jnp.bfloat16  # compute really ran in bfloat16
