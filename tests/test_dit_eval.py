"""eval_dit's scoring (FID per prompt set against real images, CLIP score), outputs and misuse."""

import json
import subprocess
import sys
import textwrap

import ml_collections
import numpy as np
import pytest
from PIL import Image

from caption_helpers import REPO, env
from dit_eval_helpers import tiny_hf_clip
from recap_jax.dit import evaluate as dit_eval
from recap_jax.dit.images import center_crop
from recap_jax.errors import ConfigError
from recap_jax.metrics import clip_score, frechet

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("dit_eval")
    tiny_hf_clip(root / "clip")
    rng = np.random.default_rng(0)
    (root / "real" / "sub").mkdir(parents=True)
    for i in range(6):
        size = (40 + 4 * i, 36 + 2 * i)
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
            root / "real" / ("sub" if i % 2 else "") / f"{i}.png")
    (root / "real" / "notes.txt").write_text("not an image")
    (root / "raw.txt").write_text("a red square\na photo of a dog\n\na cat\ngreen circle\n")
    (root / "recap.txt").write_text("a red square photo\na dog\na blue cat\na green circle\n")
    return root


def _config(root, out, **eval_fields):
    c = ml_collections.ConfigDict(dict(workdir=str(root / "run"), sample=dict(prompts=str(root / "raw.txt"))))
    c.eval = dit_eval.eval_defaults()
    c.eval.update({**dict(reference_dir=str(root / "real"), clip=str(root / "clip"), fid_features="clip",
                          out=str(out), prompt_sets=f"raw={root / 'raw.txt'},recap={root / 'recap.txt'}",
                          batch_size=4, grid_images=3), **eval_fields})
    return c


def test_scores_and_outputs(world, tmp_path):
    config = _config(world, tmp_path / "eval")
    sets = dit_eval.prompt_sets(config)
    assert sets["raw"] == ["a red square", "a photo of a dog", "a cat", "green circle"] and len(sets["recap"]) == 4
    reference = dit_eval.reference_images(str(world / "real"), 32)
    assert reference.shape == (6, 32, 32, 3)
    noise = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)

    def generate(cfg, prompts, keys):  # the real images for "raw", noise for "recap"
        assert keys == [str(i) for i in range(len(prompts))]
        return reference[:len(prompts)] if prompts == sets["raw"] else noise

    results = dit_eval.evaluate(config, generate=generate)
    encoders = clip_score.load_clip_encoders(str(world / "clip"), batch_size=4)
    ref_features = clip_score.image_embeddings(encoders, reference)
    for name, images in (("raw", reference[:4]), ("recap", noise)):
        r = results["sets"][name]
        expected_fid = frechet.frechet_distance_of_features(clip_score.image_embeddings(encoders, images), ref_features)
        assert r["fid"] == pytest.approx(expected_fid, abs=1e-5)
        assert r["clip_score"] == pytest.approx(np.mean(clip_score.clip_scores(encoders, images, sets[name])), abs=1e-4)
        assert r["num_images"] == 4
    assert results["sets"]["raw"]["fid"] < results["sets"]["recap"]["fid"]  # real images are nearer the reference
    assert results["reference_images"] == 6 and results["image_size"] == 32
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["sets"] == json.loads(json.dumps(results["sets"]))
    table = (tmp_path / "eval" / "table.md").read_text()
    assert f"| raw | 4 | {results['sets']['raw']['fid']:.2f} |" in table and "| recap | 4 |" in table
    grid = np.asarray(Image.open(tmp_path / "eval" / "grid.png"))
    assert grid.shape == (64, 96, 3)
    np.testing.assert_array_equal(grid[32:64, 32:64], noise[1])


def test_reference_images_are_cropped_as_dit_does(world):
    reference = dit_eval.reference_images(str(world / "real"), 16, limit=2)
    first = Image.open(world / "real" / "0.png").convert("RGB")
    np.testing.assert_array_equal(reference[0], center_crop(first, 16))
    assert len(reference) == 2


@pytest.mark.parametrize("fields, message", [
    (dict(fid_features="kid"), "eval.fid_features='kid'"),
    (dict(reference_dir="/nonexistent"), "eval.reference_dir: /nonexistent is not a folder"),
    (dict(fid_features="inception"), "eval.inception_weights: (empty) is not a file"),
    (dict(clip=""), "eval.clip: required"),
    (dict(prompt_sets="raw=/nonexistent.txt"), r"eval.prompt_sets (raw): /nonexistent.txt is not a file"),
    (dict(prompt_sets="raw"), "eval.prompt_sets: 'raw'"),
])
def test_misuse_names_the_field(world, tmp_path, fields, message):
    with pytest.raises(ConfigError) as e:
        dit_eval.validate(_config(world, tmp_path, **fields))
    assert message in str(e.value)


def test_command_misuse_and_help(world, tmp_path):
    config_file = tmp_path / "cfg.py"
    config_file.write_text(textwrap.dedent(f"""
        import ml_collections
        from recap_jax.dit.evaluate import eval_defaults
        def get_config():
            c = ml_collections.ConfigDict(dict(workdir="{tmp_path / 'run'}", sample=dict(prompts="{world / 'raw.txt'}")))
            c.eval = eval_defaults()
            return c
    """))
    cmd = [sys.executable, "-m", "recap_jax.eval_dit", f"--config={config_file}", f"--config.eval.clip={world / 'clip'}"]
    proc = subprocess.run(cmd, env=env(), cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "eval.reference_dir" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "recap_jax.eval_dit", "--help"], env=env(), cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "eval.reference_dir" in proc.stdout
