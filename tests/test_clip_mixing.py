"""The paper's caption mixing: p = probability of the ORIGINAL caption, the concat variant, and
the realised share of original captions that the trainer logs."""

import json
import os
import subprocess
import sys

import pytest

from clip_helpers import tiny_config, write_shapes
from recap_jax.clip import data, trainer
from recap_jax.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_shapes(tmp_path_factory.mktemp("shapes_mix"), num_train=256)


@pytest.fixture(scope="module")
def tokenizer(shapes):
    return data.Tokenizer(shapes["tokenizer"])


def test_choose_caption_follows_p_and_falls_back_on_empty_captions():
    kw = dict(caption_mix="sample")
    assert data.choose_caption("org", "re", org_caption_prob=0.8, draw=0.79, **kw) == ("org", data.SOURCE_ORG_CAPTION)
    assert data.choose_caption("org", "re", org_caption_prob=0.8, draw=0.8, **kw) == ("re", data.SOURCE_RE_CAPTION)
    assert data.choose_caption("org", "re", org_caption_prob=1.0, draw=0.999, **kw)[1] == data.SOURCE_ORG_CAPTION
    assert data.choose_caption("org", "re", org_caption_prob=0.0, draw=0.0, **kw)[1] == data.SOURCE_RE_CAPTION
    assert data.choose_caption(" ", "re", org_caption_prob=1.0, draw=0.0, **kw) == ("re", data.SOURCE_RE_CAPTION)
    assert data.choose_caption("org", "", org_caption_prob=0.0, draw=0.5, **kw) == ("org", data.SOURCE_ORG_CAPTION)
    concat = data.choose_caption("red circle", "a long recaption", org_caption_prob=0.8, draw=0.0,
                                 caption_mix="concat")
    assert concat == ("red circle a long recaption", data.SOURCE_CONCAT)


def test_concat_is_cut_to_128_tokens_with_its_end_token(shapes, tokenizer):
    org, re = "red circle left", " ".join(["a simple picture of the blue square"] * 30)  # 210 words
    text, source = data.choose_caption(org, re, org_caption_prob=0.8, draw=0.0, caption_mix="concat")
    tokens = tokenizer([text], 128)[0]
    assert source == data.SOURCE_CONCAT and tokens.shape == (128,)
    assert tokens[0] == tokenizer.hf.bos_token_id and tokens[-1] == tokenizer.eos_id
    assert list(tokens[1:4]) == tokenizer.hf("red circle left", add_special_tokens=False)["input_ids"]
    assert (tokens[1:-1] != tokenizer.eos_id).all()  # cut inside the recaption, EOS appended

    # Through the pipeline: every example is a concatenation, original first, cut to the text length.
    ds = data.train_dataset(shapes["train"], tokenizer, image_size=32, per_host_batch=16, seed=0,
                            caption_mix="concat", re_caption_max_tokens=12, org_caption_max_tokens=6)
    batch = ds[0]
    assert (batch["caption_source"] == data.SOURCE_CONCAT).all() and batch["tokens"].shape == (16, 12)
    assert (batch["tokens"][:, -1] == tokenizer.eos_id).all()  # 2 + 3 + 18 words > 12: cut, EOS kept
    words = tokenizer.hf.convert_ids_to_tokens(batch["tokens"][0, 1:4].tolist())
    assert words[1] in ("circle", "square", "triangle")  # alt-text ("colour shape position") comes first


def _logged_rows(shapes, workdir, p, steps):
    config = tiny_config(shapes, workdir, global_batch_size=64, num_steps=steps, warmup_steps=1,
                         log_every=steps, checkpoint_every=steps)
    config.data.org_caption_prob = p
    config.eval.datasets.heldout.folder = ""
    trainer.train(config)
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def test_trainer_logs_the_realised_share_of_original_captions(shapes, tmp_path):
    rows = _logged_rows(shapes, tmp_path / "p08", 0.8, steps=20)  # 1280 examples in one log interval
    assert len(rows) == 1 and rows[0]["step"] == 20
    assert abs(rows[0]["org_caption_fraction"] - 0.8) <= 0.05, rows[0]
    assert rows[0]["concat_fraction"] == 0.0
    for p in (0.0, 1.0):
        (row,) = _logged_rows(shapes, tmp_path / f"p{p}", p, steps=2)
        assert row["org_caption_fraction"] == p


def test_old_field_re_caption_prob_is_refused_naming_the_new_one(shapes, tmp_path):
    config = tiny_config(shapes, tmp_path / "run")
    with config.unlocked():
        config.data.re_caption_prob = 0.8
    with pytest.raises(ConfigError, match="data.org_caption_prob"):
        trainer.validate_config(config)

    # The command exits with status 2 and a one-line message (before any training work).
    old_config = tmp_path / "old_config.py"
    old_config.write_text(
        "import importlib.util, os\n"
        f"spec = importlib.util.spec_from_file_location('t', {os.path.join(REPO, 'configs', 'clip_tiny.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "def get_config():\n"
        "    c = m.get_config()\n"
        "    del c.data['org_caption_prob']\n"
        "    c.data.re_caption_prob = 0.8\n"
        f"    c.workdir = {str(tmp_path / 'cli')!r}\n"
        "    return c\n")
    result = subprocess.run([sys.executable, "-m", "recap_jax.train_clip", "--config", str(old_config)],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "data.org_caption_prob" in result.stderr and "Traceback" not in result.stderr
