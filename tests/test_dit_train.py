"""train_dit: the caption mix and drop, the frozen text encoder against transformers, SIGKILL +
rerun exact, and the command's misuse / --help answers."""

import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import dit_helpers as h
from recap_jax.clip import data as clip_data
from recap_jax.dit import data as dit_data
from recap_jax.dit import trainer
from recap_jax.dit.text_encoder import load_text_encoder

ROOT = os.path.join(os.path.dirname(__file__), "..")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("dit_world")
    encoder = h.save_text_encoder(root / "enc", "text")
    latents = h.colour_latents()
    data = h.write_latents(root / "latents", latents, list(h.COLOURS), [f"a {c} square" for c in h.COLOURS])
    return dict(root=root, encoder=encoder, data=data, latents=latents)


def test_caption_mix_is_recap_clips_and_captions_drop_to_empty(world):
    assert dit_data.choose_caption is clip_data.choose_caption  # the same code as Recap-CLIP, not a copy
    tok = clip_data.Tokenizer(world["encoder"])
    record = {"org_caption": b"red", "re_caption": b"a red square", "latent": np.zeros((2, 2, 3), np.float32)}
    org, re, empty = (tok([t], 8)[0] for t in ("red", "a red square", ""))
    for p in (0.0, 0.3, 1.0):
        transform = dit_data.LatentTransform(tok, 8, org_caption_prob=p, cond_drop_prob=0.1, seed=5)
        examples = [transform(i, record) for i in range(2000)]
        dropped = np.array([e["dropped"] for e in examples], bool)
        is_org = np.array([(e["tokens"] == org).all() for e in examples])
        is_re = np.array([(e["tokens"] == re).all() for e in examples])
        assert all((e["tokens"] == empty).all() for e, d in zip(examples, dropped) if d)
        assert abs(dropped.mean() - 0.1) < 0.02
        kept = ~dropped
        assert abs(is_org[kept].mean() - p) < 0.04 and (is_org | is_re)[kept].all()
        assert transform(17, record)["tokens"].tolist() == transform(17, record)["tokens"].tolist()


@pytest.mark.parametrize("kind", ["text", "projected", "clip"])
def test_text_encoder_equals_transformers(world, tmp_path, kind):
    import transformers

    folder = h.save_text_encoder(tmp_path / kind, kind, seed=1)
    enc = load_text_encoder(folder, max_tokens=10)
    texts = ["a red square", "", "the blue circle of a photo"]
    tokens = enc.tokenize(texts)
    features, mask, pooled = jax.jit(enc.encode)(enc.params, jnp.asarray(tokens))
    ids = torch.from_numpy(tokens.astype(np.int64))
    with torch.no_grad():
        if kind == "clip":
            model = transformers.CLIPModel.from_pretrained(folder).eval()
            hidden = model.text_model(input_ids=ids).last_hidden_state
            want_pooled = model.get_text_features(input_ids=ids)
            want_pooled = getattr(want_pooled, "pooler_output", want_pooled)
        else:
            cls = transformers.CLIPTextModel if kind == "text" else transformers.CLIPTextModelWithProjection
            out = cls.from_pretrained(folder).eval()(input_ids=ids)
            hidden = out.last_hidden_state
            want_pooled = out.pooler_output if kind == "text" else out.text_embeds
    lengths = (tokens != enc.tokenizer.pad_id).sum(1) + 1  # BOS .. EOS (EOS pads)
    np.testing.assert_array_equal(np.asarray(mask).sum(1), lengths)
    # Causal attention: the features up to EOS do not depend on the padding after it.
    for row, n in enumerate(lengths):
        np.testing.assert_allclose(np.asarray(features)[row, :n], hidden.numpy()[row, :n], atol=2e-5)
    np.testing.assert_allclose(np.asarray(pooled), want_pooled.numpy(), atol=2e-5)


def _final_params(world, workdir, **train):
    config = h.cpu_config(workdir, world["data"], world["encoder"], **train)
    return trainer.train(config)["state"]


def test_sigkill_and_rerun_give_the_uninterrupted_params(world, tmp_path):
    train = dict(num_steps=6, checkpoint_every=2, log_every=2)
    want = _final_params(world, tmp_path / "straight", **train)
    workdir = tmp_path / "killed"
    args = [sys.executable, "-m", "recap_jax.train_dit", "--config", os.path.join(ROOT, "configs/recap_dit_cpu.py"),
            f"--config.workdir={workdir}", f"--config.data.dir={world['data']}",
            f"--config.text.encoder={world['encoder']}"] + [f"--config.train.{k}={v}" for k, v in train.items()]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    while not (workdir / "checkpoints" / "2").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    got = _final_params(world, workdir, **train)
    assert int(got.step) == 6
    for name in ("params", "ema_params", "opt_state"):
        for a, b in zip(jax.tree.leaves(getattr(got, name)), jax.tree.leaves(getattr(want, name))):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _command(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)


@pytest.mark.parametrize("module", ["recap_jax.train_dit", "recap_jax.sample_dit"])
def test_help_and_misuse(world, tmp_path, module):
    assert _command(module, "--help").returncode == 0
    config = ["--config", "configs/recap_dit_cpu.py"]
    cases = [([], "--config"), (config + ["--config.model.sise=B"], "sise")]
    if module.endswith("train_dit"):
        cases += [(config + [f"--config.workdir={tmp_path / 'w'}"], "data.dir"),
                  (config + [f"--config.workdir={tmp_path / 'w'}", f"--config.data.dir={world['data']}",
                             f"--config.text.encoder={tmp_path}"], "text.encoder"),
                  (config + [f"--config.workdir={tmp_path / 'w'}", f"--config.data.dir={world['data']}",
                             f"--config.text.encoder={world['encoder']}", "--config.model.size=XXL"], "model.size")]
    else:
        cases += [(config + [f"--config.workdir={tmp_path}", f"--config.sample.out={tmp_path / 'o'}",
                             f"--config.sample.prompts={tmp_path / 'none.txt'}"], "sample.prompts")]
    for args, field in cases:
        result = _command(module, *args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and field in lines[0], (args, result.stderr[-2000:])
    assert not (tmp_path / "w").exists()  # a refused start leaves nothing behind
