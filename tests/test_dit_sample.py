"""A DiT overfits 8 latents with fixed captions, and guided sampling returns them; images do not
depend on the batch size; sample_dit writes one PNG per prompt line and a TFDS dataset of them."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import dit_helpers as h
from recap_jax.data.tfds_folder import open_tfds_folder
from recap_jax.dit import sample, trainer

ROOT = os.path.join(os.path.dirname(__file__), "..")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny DiT trained on 8 flat-colour images (pixel space), caption = the colour's name."""
    root = tmp_path_factory.mktemp("dit_overfit")
    encoder = h.save_text_encoder(root / "enc", "text")
    latents = h.colour_latents()
    data = h.write_latents(root / "latents", latents, list(h.COLOURS), list(h.COLOURS))
    config = h.cpu_config(root / "run", data, encoder, num_steps=400, log_every=100, checkpoint_every=400,
                          learning_rate=3e-3)
    trainer.train(config)
    config.sample.update(steps=50, sampler="ddpm", guidance_scale=4.0, batch_size=8)
    return dict(config=config, latents=latents, root=root)


def _nearest(images: np.ndarray, latents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = images.astype(np.float32) / 127.5 - 1.0
    d = ((x[:, None] - latents[None]) ** 2).mean(axis=(2, 3, 4))
    return d.argmin(1), d


def test_guided_sampling_returns_the_training_latents(trained):
    keys = [f"{i:05d}" for i in range(8)]
    images = sample.generate(trained["config"], list(h.COLOURS), keys)
    assert images.shape == (8, 8, 8, 3) and images.dtype == np.uint8
    nearest, d = _nearest(images, trained["latents"])
    np.testing.assert_array_equal(nearest, np.arange(8))  # every caption gives its own image
    assert (d[np.arange(8), nearest] < 0.2).all(), d.min(1)
    # An image depends on its prompt and key only: alone, or in another batch, it is the same.
    config = trained["config"]
    config.sample.batch_size = 3
    again = sample.generate(config, [h.COLOURS[5], h.COLOURS[2]], [keys[5], keys[2]])
    config.sample.batch_size = 8
    np.testing.assert_array_equal(again, images[[5, 2]])


def test_sample_dit_writes_pngs_by_line_number_and_a_dataset(trained, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("red\n\nblue\ngreen\n")
    out = tmp_path / "out"
    args = [sys.executable, "-m", "recap_jax.sample_dit", "--config", "configs/recap_dit_cpu.py",
            f"--config.workdir={trained['config'].workdir}", f"--config.sample.prompts={prompts}",
            f"--config.sample.out={out}", "--config.sample.steps=50", "--config.sample.guidance_scale=4.0",
            "--config.sample.batch_size=2", "--config.sample.prompts_per_unit=2"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out.glob("*.png")) == ["00001.png", "00003.png", "00004.png"]
    records = open_tfds_folder(str(out), "train", field="sample.out")
    rows = {r["key"].decode(): r for r in (records[i] for i in range(len(records)))}
    assert sorted(rows) == ["00001", "00003", "00004"] and rows["00003"]["prompt"].decode() == "blue"
    want = sample.generate(trained["config"], ["blue"], ["00003"])[0]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(rows["00003"]["image"]))), want)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "00003.png")), want)
    # A rerun finds every unit done and writes nothing new.
    again = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert again.returncode == 0 and "'generated': 0" in again.stdout, again.stdout + again.stderr[-2000:]
