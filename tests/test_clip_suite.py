"""The paper's evaluation suite: readers on fixtures in the release layouts, the report's
columns, skipping, truncation reporting, and recall equal to CLIP_benchmark's formula."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import configs_loader
import suite_fixtures
from clip_helpers import write_shapes
from recap_jax.clip import data, evaluate
from recap_jax.clip.suite import imagenet, report, retrieval_sets, run as suite, vg_attribute
from recap_jax.errors import ConfigError
from test_clip_eval import _clip_benchmark_recalls

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_imagenet_names_and_the_80_templates():
    names, templates = imagenet.prompts()
    assert len(names) == 1000 and len(set(names)) > 990
    assert names[0] == "tench" and names[999] == "toilet paper"
    assert len(templates) == 80 and all(t.count("{}") == 1 for t in templates)
    assert templates[0].format("dog") == "a bad photo of a dog."
    assert "clip-benchmark" in json.load(open(imagenet.PROMPTS_FILE))["source"]
    assert imagenet.templates_for("simple") == ("a photo of a {}.",)


def test_readers_on_release_layouts(tmp_path):
    coco = suite_fixtures.karpathy(str(tmp_path / "coco"), "coco")
    paths, captions = retrieval_sets.read_karpathy(coco["annotations"], coco["images"], "test")
    assert len(paths) == 6 and [len(c) for c in captions] == [6, 5, 5, 5, 5, 5]  # train images left out
    assert paths[0].endswith(os.path.join("val2014", "COCO_val2014_000000000000.jpg")) and os.path.exists(paths[0])
    flickr = suite_fixtures.karpathy(str(tmp_path / "flickr"), "flickr")
    paths, _ = retrieval_sets.read_karpathy(flickr["annotations"], flickr["images"], "test")
    assert paths[1].endswith(os.path.join("flickr30k-images", "1001.jpg")) and os.path.exists(paths[1])
    with pytest.raises(ConfigError, match="coco.split"):
        retrieval_sets.read_karpathy(coco["annotations"], coco["images"], "val")

    paths, labels = imagenet.read_image_folder(suite_fixtures.imagenet(str(tmp_path / "imagenet")))
    assert len(paths) == 6 and list(labels) == [0, 0, 1, 1, 999, 999]
    os.rmdir(tmp_path / "imagenet" / "val" / "n00000500")
    with pytest.raises(ConfigError, match="999 class folders"):
        imagenet.read_image_folder(str(tmp_path / "imagenet"))

    paths, captions = retrieval_sets.read_urban1k(suite_fixtures.urban1k(str(tmp_path / "urban")))
    assert len(paths) == 4 and all(len(c) == 1 and len(c[0].split()) > 60 for c in captions)
    cases = vg_attribute.read(suite_fixtures.vg_attribute(str(tmp_path / "vg")))
    assert len(cases) == 52 and cases[0]["attributes"] == ["red", "blue"]


def test_vg_attribute_accuracy_counts_ties_as_wrong_and_averages_pairs():
    true = np.array([0.9, 0.5, 0.2, 0.7, 0.6, 0.1])
    false = np.array([0.1, 0.5, 0.3, 0.1, 0.2, 0.0])  # case 1 ties -> wrong; case 2 wrong
    pairs = ["a_b", "a_b", "a_b", "c_d", "c_d", "e_f"]
    m = vg_attribute.accuracies(true, false, pairs, min_pair_count=2)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["num_pairs"] == 2 and m["macro_accuracy"] == pytest.approx((1 / 3 + 1) / 2)  # e_f has 1 case
    assert np.isnan(vg_attribute.accuracies(true, false, pairs, min_pair_count=25)["macro_accuracy"])


class _IndexTokenizer:
    """Caption 'caption number K' -> token row [K] (hand-made embeddings are looked up by K)."""
    eos_id = 0

    def __call__(self, texts, max_tokens, pad_to=None):
        return np.array([[int(t.split()[-1])] + [0] * (max_tokens - 1) for t in texts], np.int32)


def test_recall_through_the_suite_equals_clip_benchmark_on_hand_made_embeddings(tmp_path):
    num_images, dim = 10, 8
    captions_per_image = [6, 5, 5, 5, 5, 5, 5, 5, 5, 5]
    rng = np.random.default_rng(3)
    image_table = rng.normal(size=(num_images, dim)).astype(np.float32)
    text_to_image = np.repeat(np.arange(num_images), captions_per_image)
    text_table = image_table[text_to_image] + 1.2 * rng.normal(size=(len(text_to_image), dim)).astype(np.float32)
    image_table /= np.linalg.norm(image_table, axis=1, keepdims=True)
    text_table /= np.linalg.norm(text_table, axis=1, keepdims=True)
    first_caption = np.concatenate([[0], np.cumsum(captions_per_image)])

    # Image i is a flat grey of level 20 i + 10: the fake image encoder reads i back from the pixels.
    fixture = suite_fixtures.karpathy(
        str(tmp_path / "coco"), "coco", num_test=num_images,
        image_fn=lambda i: Image.new("RGB", (40, 30), (20 * i + 10,) * 3),
        caption_fn=lambda i, n: [f"caption number {first_caption[i] + j}" for j in range(n)]
        if i < num_images else ["caption number 0"] * n)
    encoders = evaluate.Encoders(
        encode_images=lambda images: image_table[np.clip(np.round((images[:, 8, 8, 0] - 10) / 20), 0, num_images - 1).astype(int)],
        encode_tokens=lambda tokens: text_table[tokens[:, 0]],
        tokenizer=_IndexTokenizer(), image_size=16, text_length=4, batch_size=4)
    got = retrieval_sets.evaluate_sets(encoders, *retrieval_sets.read_karpathy(
        fixture["annotations"], fixture["images"]), field="coco")
    want = _clip_benchmark_recalls(image_table, text_table, text_to_image, (1, 5, 10))
    assert got["num_images"] == num_images and got["num_texts"] == 51
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key
    assert 0 < got["text_to_image/R@1"] < 1 and 0 < got["image_to_text/R@1"] < 1


@pytest.fixture(scope="module")
def tiny_hf_clip(tmp_path_factory):
    from test_clip_cli import _save_tiny_hf_clip

    root = tmp_path_factory.mktemp("suite_model")
    shapes = write_shapes(root / "shapes", num_train=16)
    hf_dir = str(root / "hf")
    _save_tiny_hf_clip(hf_dir, vocab_size=40, eos_token_id=data.Tokenizer(shapes["tokenizer"]).eos_id)
    return hf_dir, shapes["tokenizer"]


def _suite_config(tiny_hf_clip, out):
    config = configs_loader.load("eval_suite.py")
    config.model.hf_dir, config.tokenizer = tiny_hf_clip
    config.output_dir, config.name, config.batch_size = str(out), "tiny random CLIP", 512
    return config


def test_suite_on_every_fixture_reports_every_column(tiny_hf_clip, tmp_path, capsys):
    config = _suite_config(tiny_hf_clip, tmp_path / "out")
    coco = suite_fixtures.karpathy(str(tmp_path / "coco"), "coco")
    flickr = suite_fixtures.karpathy(str(tmp_path / "flickr"), "flickr")
    config.coco.annotations, config.coco.images = coco["annotations"], coco["images"]
    config.flickr.annotations, config.flickr.images = flickr["annotations"], flickr["images"]
    config.imagenet.folder = suite_fixtures.imagenet(str(tmp_path / "imagenet"))
    config.imagenet.templates = "simple"  # 1000 prompts; the 80-template ensemble is 80x the text encoding
    config.urban1k.folder = suite_fixtures.urban1k(str(tmp_path / "urban"))
    config.vg_attribute.folder = suite_fixtures.vg_attribute(str(tmp_path / "vg"))
    out = suite.evaluate_model(config)
    printed = capsys.readouterr().out

    assert out["skipped"] == {}
    saved = json.load(open(tmp_path / "out" / "eval_suite.json"))
    assert list(saved["table"]) == [c for c, _, _ in report.COLUMNS]
    assert all(isinstance(v, float) and 0 <= v <= 100 for v in saved["table"].values()), saved["table"]
    r = saved["datasets"]
    assert (r["imagenet"]["num_classes"], r["imagenet"]["num_templates"], r["imagenet"]["num_images"]) == (1000, 1, 6)
    assert (r["coco"]["num_images"], r["coco"]["num_texts"]) == (6, 31)
    assert (r["flickr"]["num_images"], r["flickr"]["num_texts"]) == (6, 31)
    assert r["vg_attribute"]["num_cases"] == 52 and r["vg_attribute"]["num_pairs"] == 2
    # Urban-1K's long captions do not fit the model's 32 tokens: the run says so.
    assert r["urban1k"]["text_length"] == 32 and r["urban1k"]["num_truncated"] == 4
    assert r["urban1k"]["max_caption_tokens"] > 32
    assert "4 of 4 captions cut to 32 tokens" in printed
    table = open(tmp_path / "out" / "eval_suite.md").read()
    assert table.startswith("| model | IN-1K | COCO I->T | COCO T->I | Flickr I->T | Flickr T->I | "
                            "Urban-1K I->T | Urban-1K T->I | VG-Attr |")
    assert "| tiny random CLIP |" in table and "cut to the model's 32-token text length" in table


def test_unset_datasets_are_skipped_with_a_line(tiny_hf_clip, tmp_path, capsys):
    config = _suite_config(tiny_hf_clip, tmp_path / "out")
    config.urban1k.folder = suite_fixtures.urban1k(str(tmp_path / "urban"))
    out = suite.evaluate_model(config)
    printed = capsys.readouterr().out
    assert set(out["results"]) == {"urban1k"}
    assert set(out["skipped"]) == {"imagenet", "coco", "flickr", "vg_attribute"}
    assert "skipped imagenet: imagenet.folder not set" in printed
    assert "skipped coco: coco.annotations/coco.images not set" in printed
    table = open(tmp_path / "out" / "eval_suite.md").read()
    assert "| tiny random CLIP | - | - | - | - | - |" in table


@pytest.mark.parametrize("field, value, message", [
    ("imagenet.folder", "{tmp}/no_imagenet", "imagenet.folder={tmp}/no_imagenet: does not exist"),
    ("coco.annotations", "{tmp}/karpathy.json", "coco.images: not set, but coco.annotations is; set both or neither"),
])
def test_a_set_path_that_is_wrong_is_an_error_not_a_skip(tiny_hf_clip, tmp_path, field, value, message):
    config = _suite_config(tiny_hf_clip, tmp_path / "out")
    (tmp_path / "karpathy.json").write_text("{}")
    section, leaf = field.split(".")
    config[section][leaf] = value.replace("{tmp}", str(tmp_path))
    with pytest.raises(ConfigError) as e:
        suite.evaluate_model(config)
    assert str(e.value) == message.replace("{tmp}", str(tmp_path))
    assert not (tmp_path / "out").exists()


def test_command_help_and_user_errors_exit_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "recap_jax.eval_suite", "--help"], capture_output=True,
                            text=True, cwd=REPO, timeout=120)
    assert result.returncode in (0, 1) and "--config" in result.stdout
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    result = subprocess.run([sys.executable, "-m", "recap_jax.eval_suite", "--config", "configs/eval_suite.py",
                             f"--config.model.checkpoint={tmp_path}"], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 2 and "config.json" in result.stderr and "Traceback" not in result.stderr
