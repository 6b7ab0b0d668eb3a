"""CLIPA's two stages: recipe configs (Table 2 / Table 4, sample-based schedules), position
embedding resampling, and stage 2 starting from stage 1 on the tiny CLIP (16 px -> 32 px)."""

import json

import jax
import numpy as np
import optax
import pytest

import configs_loader
from clip_helpers import tiny_config, write_shapes
from recap_jax.clip import model as model_lib, model_loading, pos_resample, stage_init, train_step, trainer
from recap_jax.errors import ConfigError
from recap_jax.training import optimizer as schedule
from recap_jax.parallel.mesh import make_mesh

# Table 2 (vision width/depth, text width/depth).
TABLE_2 = {"s16": ((384, 12), (384, 12)), "b16": ((768, 12), (512, 12)),
           "l16": ((1024, 24), (768, 12)), "h14": ((1280, 32), (1024, 24))}


@pytest.mark.parametrize("name", sorted(TABLE_2))
def test_recipe_configs_have_table_2_towers_and_the_clipa_schedule(name):
    stage1 = schedule.resolve_sample_schedule(configs_loader.load(f"recap_clip_{name}.py", "stage=1"))
    stage2 = schedule.resolve_sample_schedule(configs_loader.load(f"recap_clip_{name}.py", "stage=2,init=/s1"))
    cfg = model_lib.config_from_dict(dict(stage1.model.to_dict(), vocab_size=49408))
    vision, text = TABLE_2[name]
    assert (cfg.vision.width, cfg.vision.depth) == vision and (cfg.text.width, cfg.text.depth) == text
    assert cfg.text_context == 128 and stage1.data.org_caption_prob == 0.8
    assert (stage1.model.image_size, stage2.model.image_size) == (112, 224)
    # Samples, not steps: 2.56B / 32,768 and 128M / 16,384; lr = base x batch / 256.
    assert (stage1.train.num_steps, stage1.train.warmup_steps) == (78_125, 1_563)
    assert (stage2.train.num_steps, stage2.train.warmup_steps) == (7_813, 1_563)
    assert stage1.train.learning_rate == pytest.approx(8e-6 * 32_768 / 256)
    assert stage2.train.learning_rate == pytest.approx(4e-7 * 16_384 / 256)
    assert stage2.init.checkpoint == "/s1" and stage1.init.checkpoint == ""


def test_text_tower_variants_and_batch_changes_keep_the_recipe():
    config = configs_loader.load("recap_clip_b16.py", "stage=1,text=huge")
    cfg = model_lib.config_from_dict(dict(config.model.to_dict(), vocab_size=49408))
    assert (cfg.vision.width, cfg.text.width, cfg.text.depth) == (768, 1024, 24)  # Table 4: B/16 + huge text
    small = model_lib.config_from_dict(dict(configs_loader.load("recap_clip_b16.py", "text=small").model.to_dict(),
                                            vocab_size=49408))
    assert (small.text.width, small.text.heads) == (384, 6)
    config.train.global_batch_size = 16_384  # half the batch: twice the steps, half the lr
    resolved = schedule.resolve_sample_schedule(config)
    assert resolved.train.num_steps == 156_250 and resolved.train.learning_rate == pytest.approx(5.12e-4)
    with pytest.raises(ConfigError, match="text="):
        configs_loader.load("recap_clip_b16.py", "text=giant")
    with pytest.raises(ConfigError, match="init="):
        configs_loader.load("recap_clip_b16.py", "stage=2")
    abstract = jax.eval_shape(lambda: model_lib.init_params(model_lib.CLIP(cfg), jax.random.key(0)))
    assert model_lib.count_params(abstract) > 0


def test_position_resampling_is_the_identity_at_equal_size_and_bilinear_when_growing():
    rng = np.random.default_rng(0)
    pos = rng.normal(size=(1 + 4 * 4, 8)).astype(np.float32)
    for method in ("bilinear", "bicubic"):
        np.testing.assert_allclose(np.asarray(pos_resample.resample_pos_embed(pos, 17, method)), pos, atol=1e-6)
    small = rng.normal(size=(1 + 2 * 2, 8)).astype(np.float32)
    grown = np.asarray(pos_resample.resample_pos_embed(small, 17))
    assert grown.shape == (17, 8)
    np.testing.assert_array_equal(grown[0], small[0])  # CLS position untouched
    np.testing.assert_allclose(grown, pos_resample.numpy_reference(small, 17), atol=1e-5)
    assert not np.allclose(grown[1], grown[2])  # really interpolated, not repeated
    with pytest.raises(ConfigError, match="square grid"):
        pos_resample.resample_pos_embed(pos[:-1], 17)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_shapes(tmp_path_factory.mktemp("shapes_stages"), num_train=512)


def _stage(shapes, workdir, image_size, steps, init="", **train):
    settings = dict(global_batch_size=32, num_steps=steps, warmup_steps=2, log_every=1,
                    checkpoint_every=steps, learning_rate=5e-4)
    settings.update(train)
    config = tiny_config(shapes, workdir, **settings)
    config.model.image_size = image_size
    config.init.checkpoint = init
    config.eval.datasets.heldout.folder = ""
    return config


STAGE_1 = dict(steps=80, warmup_steps=10, log_every=10, learning_rate=2e-3)  # leaves the ln(32) plateau by ~60


def test_stage_2_starts_from_stage_1_and_its_loss_does_not_jump(shapes, tmp_path):
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    trainer.train(_stage(shapes, s1, 16, **STAGE_1))
    rows1 = [json.loads(line) for line in open(s1 / "metrics.jsonl")]
    start, end = rows1[0]["loss"], rows1[-1]["loss"]  # means over steps 1-10 and 71-80
    assert end < start - 0.5 and end < np.log(32) - 0.5  # stage 1 learned (chance is ln 32)

    # What stage 2 starts from: stage 1's last params, positions resampled 2x2 -> 4x4.
    config = _stage(shapes, s2, 32, steps=6, init=str(s1))
    config = schedule.resolve_sample_schedule(config)
    tok = model_loading.data_lib.Tokenizer(config.data.tokenizer)
    model, _ = model_loading.build_model(config.model, tok)
    mesh = make_mesh({"data": -1})
    tx = train_step.make_optimizer(config.train)
    abstract, shardings = train_step.abstract_train_state(model, tx, mesh)
    small_model, _ = model_loading.build_model(_stage(shapes, s1, 16, **STAGE_1).model, tok)
    stage1_params, step = model_loading.latest_params(str(s1), small_model, mesh)
    assert step == 80
    for mode in ("reset", "keep"):
        config.init.optimizer = mode
        state, info = stage_init.initial_state(config.init, model, tx, mesh, abstract, shardings)
        assert info["pos_grid"].startswith("2x2 -> 4x4") and int(state.step) == 0
        got, want = jax.device_get(state.params), jax.device_get(stage1_params)
        flat_got = {pos_resample.path_names(k): v for k, v in jax.tree_util.tree_leaves_with_path(got)}
        resampled = 0
        for k, v in jax.tree_util.tree_leaves_with_path(want):
            names = pos_resample.path_names(k)
            if pos_resample.is_image_position(names):
                resampled += 1
                assert flat_got[names].shape == (17, 64) and v.shape == (5, 64)
                np.testing.assert_allclose(flat_got[names], pos_resample.numpy_reference(v, 17), atol=1e-5)
            else:
                np.testing.assert_array_equal(flat_got[names], v)
        assert resampled == 1
        adam = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
                if isinstance(s, optax.ScaleByAdamState)][0]
        sched = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
                 if isinstance(s, optax.ScaleByScheduleState)][0]
        assert int(sched.count) == 0  # the stage-2 schedule starts at its own warm-up
        if mode == "reset":
            assert int(adam.count) == 0 and float(optax.tree.norm(adam.nu)) == 0.0
        else:
            assert int(adam.count) == 80 and float(optax.tree.norm(adam.nu)) > 0.0

    # The run itself: the loss continues from where stage 1 left off, not from scratch.
    result = trainer.train(_stage(shapes, s2, 32, steps=6, init=str(s1)))
    rows2 = [json.loads(line) for line in open(s2 / "metrics.jsonl")]
    assert result["step"] == 6 and len(rows2) == 6
    print("stage 1 loss", start, "->", end, "| stage 2 first/last", rows2[0]["loss"], rows2[-1]["loss"])
    assert max(r["loss"] for r in rows2) < start  # no jump back above where stage 1 started
    assert rows2[0]["loss"] < start - 0.3  # its first step already benefits from stage 1
    assert json.load(open(s2 / "config.json"))["init"]["checkpoint"] == str(s1)
    # A rerun resumes stage 2 from its own checkpoint (stage 1 is not read again).
    assert trainer.train(_stage(shapes, s2, 32, steps=6, init=str(s1)))["step"] == 6


def test_init_refuses_a_checkpoint_of_another_architecture(shapes, tmp_path):
    trainer.train(_stage(shapes, tmp_path / "s1", 16, steps=3))
    config = _stage(shapes, tmp_path / "s2", 32, steps=3, init=str(tmp_path / "s1"))
    config.model.embed_dim = 32
    with pytest.raises(ConfigError, match="init.checkpoint"):
        trainer.train(config)
    config = _stage(shapes, tmp_path / "s3", 32, steps=3, init=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="init.checkpoint"):
        trainer.train(config)
