"""Recap-DiT end to end on a CPU, command by command as a user runs them: the demo images ->
caption job -> encode_latents (a tiny random KL-f8 autoencoder) -> 20 DiT steps -> sample 4
images -> eval table."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from caption_helpers import REPO, env
from dit_eval_helpers import tiny_hf_clip

pytest.importorskip("torch")


def _run(module, *args):
    proc = subprocess.run([sys.executable, "-m", f"recap_jax.{module}", *args], env=env(), cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{module}: {proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_demo_images_to_an_eval_table(tmp_path):
    tiny_hf_clip(tmp_path / "clip")  # the DiT's text encoder and the CLIP score's model
    _run("caption", "--config", "configs/demo.py", f"--config.output.dir={tmp_path / 'captions'}")
    _run("encode_latents", "--config", "configs/dit_latents_cpu.py", f"--config.input.dir={tmp_path / 'captions'}",
         f"--config.autoencoder.dir={tmp_path / 'vae'}", "--config.autoencoder.build_tiny_if_missing=true",
         "--config.image_size=32", f"--config.output.dir={tmp_path / 'latents'}")
    meta = json.loads((tmp_path / "latents" / "latents.json").read_text())
    assert meta["codec"] == "kl-f8" and meta["latent_shape"] == [4, 4, 4]
    dit = ["--config", "configs/recap_dit_cpu.py", f"--config.workdir={tmp_path / 'dit'}"]
    _run("train_dit", *dit, f"--config.data.dir={tmp_path / 'latents'}", f"--config.text.encoder={tmp_path / 'clip'}")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\na green triangle\na purple box\n")
    _run("sample_dit", *dit, f"--config.sample.prompts={prompts}", f"--config.sample.out={tmp_path / 'samples'}")
    pngs = sorted(p.name for p in (tmp_path / "samples").glob("*.png"))
    assert pngs == ["00001.png", "00002.png", "00003.png", "00004.png"]
    _run("eval_dit", *dit, f"--config.sample.prompts={prompts}", f"--config.eval.reference_dir={REPO / 'assets' / 'demo_images'}",
         f"--config.eval.clip={tmp_path / 'clip'}", "--config.eval.fid_features=clip",
         f"--config.eval.out={tmp_path / 'eval'}", "--config.eval.grid_images=4")
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    r = results["sets"]["prompts"]
    assert r["num_images"] == 4 and np.isfinite(r["fid"]) and 0 <= r["clip_score"] <= 100
    assert results["image_size"] == 32 and results["reference_images"] >= 9
    assert "| prompts | 4 |" in (tmp_path / "eval" / "table.md").read_text()
    grid = np.asarray(Image.open(tmp_path / "eval" / "grid.png"))
    np.testing.assert_array_equal(grid[:, :32], np.asarray(Image.open(tmp_path / "samples" / "00001.png")))
