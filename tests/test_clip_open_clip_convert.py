"""`convert_clip`: open_clip hub folders into ours and back (embeddings equal to open_clip's, the round
trip bit-identical), a train_clip workdir out to open_clip, and misuse answered in one line."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import configs_loader
from clip_helpers import tiny_config, write_shapes
from open_clip_helpers import ARCHS, build_open_clip, random_batches, save_open_clip
from recap_jax.clip import folders, hf_weights, open_clip_weights, trainer
from recap_jax.clip.model import CLIP

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def open_clip_embeddings(model, batch):
    with torch.no_grad():
        image = model.encode_image(torch.from_numpy(batch["image"]).permute(0, 3, 1, 2), normalize=True)
        text = model.encode_text(torch.from_numpy(batch["tokens"]).long(), normalize=True)
    return image.numpy(), text.numpy()


def load_open_clip_folder(folder):
    """What an open_clip user runs on our output."""
    import open_clip

    model = open_clip.create_model(f"local-dir:{folder}")
    return model.eval()


@pytest.mark.parametrize("arch", ["b16", "htxt"])
def test_open_clip_to_ours_and_back(arch, tmp_path):
    model_cfg = ARCHS[arch]
    reference = build_open_clip(model_cfg, seed=1).eval()
    src = save_open_clip(reference, model_cfg, tmp_path / "open_clip")
    ours_dir, back_dir = str(tmp_path / "ours"), str(tmp_path / "back")
    folders.from_open_clip(src, ours_dir)

    # The converted folder is what model.hf_dir reads: embeddings equal to open_clip's.
    cfg = hf_weights.read_hf_config(ours_dir)
    params = hf_weights.load_hf_params(ours_dir, cfg)
    batch = random_batches(model_cfg, 6, 1, seed=3)[0]
    image, text = CLIP(cfg).apply({"params": params}, jnp.asarray(batch["image"]), jnp.asarray(batch["tokens"]))
    want_image, want_text = open_clip_embeddings(reference, batch)
    np.testing.assert_allclose(np.asarray(image), want_image, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(text), want_text, atol=1e-4, rtol=0)
    assert np.abs(want_image[0] - want_image[1]).max() > 1e-2  # the inputs are told apart

    # And back: open_clip loads it; config and every tensor bit-identical to the source.
    folders.to_open_clip(ours_dir, back_dir)
    with open(os.path.join(src, "open_clip_config.json")) as a, open(os.path.join(back_dir, "open_clip_config.json")) as b:
        assert json.load(a) == json.load(b)
    loaded = load_open_clip_folder(back_dir)
    want = reference.state_dict()
    got = loaded.state_dict()
    assert set(got) == set(want)
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name


def test_workdir_to_open_clip_and_eval_of_converted(tmp_path_factory, tmp_path):
    """train_clip starts from a converted folder (model.hf_dir), eval_retrieval reads it, and the
    workdir's latest step goes out to open_clip with the same embeddings as ours."""
    shapes = write_shapes(tmp_path_factory.mktemp("shapes_oc"), num_train=32)
    model_cfg = ARCHS["b16"]
    src = save_open_clip(build_open_clip(model_cfg), model_cfg, tmp_path / "open_clip")
    converted = str(tmp_path / "converted")
    subprocess.run([sys.executable, "-m", "recap_jax.convert_clip", "--from", "open_clip", src, converted,
                    "--tokenizer", shapes["tokenizer"]], check=True, cwd=REPO, timeout=300)

    from recap_jax.clip.retrieval_job import evaluate_config
    eval_config = configs_loader.load("clip_eval.py")
    eval_config.model.hf_dir = converted  # its tokenizer was copied in
    eval_config.datasets.main.folder, eval_config.datasets.main.split = shapes["heldout"], "train"
    eval_config.text_length = 16
    assert evaluate_config(eval_config)["main"]["num_images"] == 96

    config = tiny_config(shapes, tmp_path / "run", global_batch_size=16, num_steps=2, warmup_steps=1,
                         log_every=1, checkpoint_every=2)
    config.model.hf_dir = converted
    config.data.re_caption_max_tokens = config.data.org_caption_max_tokens = 16
    assert trainer.train(config)["step"] == 2
    out = str(tmp_path / "to_open_clip")
    folders.to_open_clip(str(tmp_path / "run"), out)
    cfg, params, _ = folders.read_ours(str(tmp_path / "run"))
    trained_tensors = open_clip_weights.open_clip_tensors(params)
    loaded = load_open_clip_folder(out)
    batch = random_batches(model_cfg, 4, 1, seed=5)[0]
    image, text = CLIP(cfg).apply({"params": params}, jnp.asarray(batch["image"]), jnp.asarray(batch["tokens"]))
    want_image, want_text = open_clip_embeddings(loaded, batch)
    np.testing.assert_allclose(np.asarray(image), want_image, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(text), want_text, atol=1e-4, rtol=0)
    start = open_clip_weights.open_clip_tensors(open_clip_weights.load_open_clip(src)[1])
    assert any(not np.array_equal(v, start[k]) for k, v in trained_tensors.items())  # the latest step, not the start


def _convert(*args):
    return subprocess.run([sys.executable, "-m", "recap_jax.convert_clip", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=300)


def test_misuse_answers_in_one_line_and_writes_nothing(tmp_path):
    model_cfg = ARCHS["b16"]
    src = save_open_clip(build_open_clip(model_cfg), model_cfg, tmp_path / "src")
    empty = tmp_path / "empty"
    empty.mkdir()
    # An architecture we cannot map (layer scale), and a config whose sizes do not fit the weights.
    layer_scale = json.loads(json.dumps(model_cfg))
    layer_scale["vision_cfg"]["ls_init_value"] = 0.1
    wider = json.loads(json.dumps(model_cfg))
    wider["text_cfg"]["width"] = 64
    for name, cfg in (("ls", layer_scale), ("wide", wider)):
        folder = tmp_path / name
        folder.mkdir()
        os.link(os.path.join(src, "open_clip_model.safetensors"), folder / "open_clip_model.safetensors")
        (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    cases = [
        (["--from", "open_clip", str(empty)], "open_clip_config.json"),
        (["--from", "open_clip", str(tmp_path / "ls")], "ls_init_value"),
        (["--from", "open_clip", str(tmp_path / "wide")], "token_embedding.weight"),  # names the tensor
        (["--to", "open_clip", str(empty)], "neither a train_clip workdir"),
        (["--from", "open_clip", src, "--to", "open_clip"], "exactly one"),
    ]
    for args, needle in cases:
        dest = tmp_path / "dest"
        result = _convert(*args, str(dest))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and needle in lines[0], (args, result.stderr[-2000:])
        assert not dest.exists() and not any(p.name.startswith(".dest") for p in tmp_path.iterdir())
    existing = tmp_path / "existing"
    existing.mkdir()
    result = _convert("--from", "open_clip", src, str(existing))
    assert result.returncode == 2 and "exists" in result.stderr and not list(existing.iterdir())
    assert _convert("--help").returncode == 0
