"""encode_latents: a caption output -> the latents dataset (pixels and kl-f8), exactly once across
SIGKILL and rerun, misuse in one line."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

import configs_loader
from caption_helpers import REPO, env
from dit_eval_helpers import tiny_diffusers_vae, write_caption_output
from recap_jax.dit import latents
from recap_jax.dit.images import prepare_encoded

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("latents")
    records = write_caption_output(root / "captions", 10, per_unit=4, bad=(3,))
    tiny_diffusers_vae(root / "vae")
    return root, records


def _config(root, out, **fields):
    c = configs_loader.load("dit_latents_cpu.py")
    c.input.dir, c.output.dir, c.autoencoder.dir = str(root / "captions"), str(out), str(root / "vae")
    c.image_size, c.batch_size, c.input.records_per_unit, c.distributed.mode = 16, 3, 2, "off"
    for name, value in fields.items():
        section, _, field = name.rpartition("__")
        (c[section] if section else c)[field] = value
    return c


def _read(folder):
    source = tfds.builder_from_directory(str(folder)).as_data_source("train")
    return [source[i] for i in range(len(source))]


def test_pixels_and_kl_f8_latents(world, tmp_path):
    root, records = world
    summary = latents.run(_config(root, tmp_path / "pix", autoencoder__kind="pixels"))
    assert summary["finalized"] and summary["encoded"] == 9 and summary["failed"] == 1
    rows = _read(tmp_path / "pix")
    assert [r["key"].decode() for r in rows] == [k for k in sorted(records) if k != "k003"]
    for row in rows:
        source = records[row["key"].decode()]
        assert row["re_caption"].decode() == source["re_caption"] and row["org_caption"].decode() == source["org_caption"]
        expected = prepare_encoded(source["image"], 16).astype(np.float32) / 127.5 - 1
        np.testing.assert_allclose(row["latent"], expected, atol=1e-6)
    meta = json.loads((tmp_path / "pix" / latents.LATENTS_JSON).read_text())
    assert meta == {"codec": "pixels", "image_size": 16, "latent_shape": [16, 16, 3], "scale_factor": 1.0,
                    "autoencoder_dir": None, "posterior": None}
    failures = (tmp_path / "pix" / "failures-00001-of-00005.jsonl").read_text()
    assert '"key": "k003"' in failures

    import diffusers
    vae = diffusers.AutoencoderKL.from_pretrained(str(root / "vae")).eval()
    latents.run(_config(root, tmp_path / "kl", autoencoder__posterior="mean"))
    rows = _read(tmp_path / "kl")
    images = np.stack([prepare_encoded(records[r["key"].decode()]["image"], 16) for r in rows])
    with torch.no_grad():
        mean = vae.encode(torch.from_numpy(images / 127.5 - 1).float().permute(0, 3, 1, 2)).latent_dist.mean
    np.testing.assert_allclose(np.stack([r["latent"] for r in rows]), 0.3 * mean.permute(0, 2, 3, 1).numpy(),
                               atol=1e-4)
    meta = json.loads((tmp_path / "kl" / latents.LATENTS_JSON).read_text())
    assert meta["codec"] == "kl-f8" and meta["latent_shape"] == [8, 8, 4] and meta["scale_factor"] == 0.3


def _command(root, out):
    return [sys.executable, "-m", "recap_jax.encode_latents", f"--config={REPO / 'configs' / 'dit_latents_cpu.py'}",
            f"--config.input.dir={root / 'many'}", f"--config.autoencoder.dir={root / 'vae'}",
            f"--config.output.dir={out}", "--config.image_size=16", "--config.batch_size=2",
            "--config.input.records_per_unit=1", "--config.distributed.mode=off"]


def test_killed_run_resumes_to_every_key_once(world):
    root, _ = world
    count = 40
    write_caption_output(root / "many", count, per_unit=8, seed=1)
    reference = root / "reference"
    assert subprocess.run(_command(root, reference), env=env(), cwd=REPO, capture_output=True).returncode == 0
    out = root / "killed"
    markers = out / ".units"
    proc = subprocess.Popen(_command(root, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env(), cwd=REPO)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if markers.exists() and len(list(markers.glob("*.json"))) >= 2:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert 2 <= len(list(markers.glob("*.json"))) < count  # killed part-way
    assert not (out / "dataset_info.json").exists()
    rerun = subprocess.run(_command(root, out), env=env(), cwd=REPO, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = json.loads(rerun.stdout[rerun.stdout.index("{"):])
    assert 0 < summary["units_encoded_now"] < count
    rows, expected = _read(out), _read(reference)
    keys = [r["key"].decode() for r in rows]
    assert sorted(keys) == [f"k{i:03d}" for i in range(count)] and len(set(keys)) == count
    for row, ref in zip(rows, expected):  # posterior samples seeded by key: the same latents
        assert row["key"] == ref["key"]
        np.testing.assert_array_equal(row["latent"], ref["latent"])
    assert not list(out.glob(".*.tmp-*"))


@pytest.mark.parametrize("field, value, message", [
    ("autoencoder__kind", "vq", "autoencoder.kind='vq'"),
    ("input__dir", "/nonexistent/x", "input.dir: /nonexistent/x is not a TFDS dataset folder"),
    ("autoencoder__dir", "/nonexistent/vae", "autoencoder.dir: /nonexistent/vae has no config.json"),
    ("image_size", 15, "image_size: image_size 15 is not a multiple"),
])
def test_misuse_names_the_field(world, tmp_path, field, value, message):
    root, _ = world
    from recap_jax.errors import ConfigError
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        latents.run(_config(root, tmp_path / "out", **{field: value}))
    assert not (tmp_path / "out").exists()


def test_misuse_is_one_line(world, tmp_path):
    root, _ = world
    cmd = [sys.executable, "-m", "recap_jax.encode_latents", f"--config={REPO / 'configs' / 'dit_latents_cpu.py'}",
           f"--config.input.dir={root / 'captions'}", "--config.autoencoder.dir=",
           f"--config.output.dir={tmp_path / 'out'}", "--config.distributed.mode=off"]
    proc = subprocess.run(cmd, env=env(), cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "autoencoder.dir: required" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_help():
    proc = subprocess.run([sys.executable, "-m", "recap_jax.encode_latents", "--help"], env=env(), cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "input.dir" in proc.stdout
