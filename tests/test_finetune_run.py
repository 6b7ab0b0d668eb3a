"""The fine-tuning command end to end on a tiny model: memorise 8 captions and caption with the
export (recap_jax.caption and transformers' generate), frozen params, bad data, SIGKILL resume."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from flax import traverse_util

from caption_helpers import REPO, env, read_output, run_caption, text
from finetune_helpers import CAPTIONS, PROMPT, tiny_checkpoint, write_images, write_llava_json
from recap_jax import convert
from recap_jax.captioning import model_loading
from recap_jax.training.defaults import base_config
from recap_jax.training.trainer import run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    hf_dir, ckpt = tiny_checkpoint(root)
    names = write_images(root / "images")
    data = write_llava_json(root / "data.json", names, CAPTIONS)
    return root, ckpt, names, data


def _config(ckpt, data, images, workdir, **train):
    c = base_config()
    c.model.checkpoint, c.workdir = str(ckpt), str(workdir)
    c.data.path, c.data.image_folder = str(data), str(images)
    c.data.max_length, c.data.length_buckets, c.data.num_workers = 64, (48,), 2
    c.mesh.fsdp, c.distributed.mode = 1, "off"
    c.train.global_batch_size, c.train.log_every = 8, 50
    for k, v in train.items():
        setattr(c.train, k, v)
    return c


def _flat(checkpoint):
    _, params = model_loading.load_captioner(checkpoint=str(checkpoint))
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(params)).items()}


@pytest.mark.slow  # 150 steps + the caption command + HF generate: minutes on 2 cores
def test_overfit_then_caption_with_both_exports(tiny, tmp_path):
    root, ckpt, names, data = tiny
    summary = run(_config(ckpt, data, root / "images", tmp_path / "work", trainable="all",
                          num_steps=150, learning_rate=5e-3))
    assert summary["steps"] == 150 and summary["loss"] < 0.05 and summary["failures"] == 0

    out = tmp_path / "captions"
    cmd = [sys.executable, "-m", "recap_jax.caption", f"--config={REPO / 'configs' / 'cpu_small.py'}",
           f"--config.model.checkpoint={summary['export']}", f"--config.input.paths={root / 'images'}",
           f"--config.output.dir={out}", f"--config.prompt={PROMPT}", "--config.decode.max_new_tokens=16",
           "--config.decode.prompt_buckets=(64,)", "--config.distributed.mode=off"]
    result = run_caption(cmd)
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_output(out)
    assert {k: text(r["re_caption"]) for k, r in records.items()} == {
        name.split(".")[0]: caption for name, caption in zip(names, CAPTIONS)}

    model = transformers.LlavaForConditionalGeneration.from_pretrained(summary["export_hf"]).eval()
    processor = transformers.AutoProcessor.from_pretrained(summary["export_hf"], backend="pil")
    processor.tokenizer.padding_side = "left"
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}],
        add_generation_prompt=True)
    images = [Image.open(root / "images" / n).convert("RGB") for n in names]
    inputs = processor(images=images, text=[prompt] * len(images), return_tensors="pt", padding=True)
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answers = processor.batch_decode(generated[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert [a.strip() for a in answers] == CAPTIONS

    # The llava-hf export converts back to exactly the exported params.
    back = tmp_path / "back"
    assert convert.main(["--hf_dir", summary["export_hf"], "--out", str(back), "--dtype", "float32"]) == 0
    exported, converted = _flat(summary["export"]), _flat(back)
    assert exported.keys() == converted.keys()
    for k in exported:
        np.testing.assert_array_equal(exported[k], converted[k], err_msg=str(k))


def test_projector_training_freezes_the_rest_and_skips_bad_data(tiny, tmp_path):
    root, ckpt, names, _ = tiny
    (root / "bad").mkdir(exist_ok=True)
    (root / "bad" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    good = [{"id": f"ok{i}", "image": f"images/{n}",
             "conversations": [{"from": "human", "value": f"<image>\n{PROMPT}"},
                               {"from": "gpt", "value": CAPTIONS[i]}]} for i, n in enumerate(names[:4])]
    turn = [{"from": "human", "value": f"<image>\n{PROMPT}"}]
    bad = [{"id": "missing", "image": "images/nope.png", "conversations": good[0]["conversations"]},
           {"id": "corrupt", "image": "bad/corrupt.png", "conversations": good[0]["conversations"]},
           {"id": "no_answer", "image": f"images/{names[0]}", "conversations": turn},
           {"id": "too_long", "image": f"images/{names[0]}",
            "conversations": turn + [{"from": "gpt", "value": "a red dog " * 30}]},
           {"id": "text_only", "conversations": good[0]["conversations"]}]
    data = root / "mixed.json"
    data.write_text(json.dumps(good[:2] + bad + good[2:]))
    work = tmp_path / "work"
    summary = run(_config(ckpt, data, root, work, trainable="projector", num_steps=3,
                          global_batch_size=4, learning_rate=1e-2))
    assert summary["steps"] == 3

    reasons = {f["key"]: f["reason"] for f in map(json.loads, (work / "failures-00000.jsonl").read_text().splitlines())}
    assert set(reasons) == {"missing", "corrupt", "no_answer", "too_long", "text_only"}
    assert "missing image file" in reasons["missing"] and "not an image" in reasons["corrupt"]
    assert "no gpt turn" in reasons["no_answer"] and "too long" in reasons["too_long"]
    assert "text-only" in reasons["text_only"]

    before, after = _flat(ckpt), _flat(summary["export"])
    assert before.keys() == after.keys()
    changed = {k[0] for k in before if not np.array_equal(before[k], after[k])}
    assert changed == {"multi_modal_projector"}
    for k in before:
        if k[0] == "multi_modal_projector":
            assert not np.array_equal(before[k], after[k]), k  # every projector param moved


@pytest.mark.slow  # three training runs, two of them fresh processes
def test_sigkill_then_rerun_equals_uninterrupted_run(tiny, tmp_path):
    root, ckpt, _, data = tiny
    train = dict(trainable="projector+llm", num_steps=6, global_batch_size=4, accum_steps=2,
                 checkpoint_every=2, learning_rate=3e-3)
    reference = run(_config(ckpt, data, root / "images", tmp_path / "reference", **train))

    work = tmp_path / "killed"
    cmd = [sys.executable, "-m", "recap_jax.finetune", f"--config={REPO / 'configs' / 'finetune_cpu.py'}",
           f"--config.model.checkpoint={ckpt}", "--config.model.build_tiny_if_missing=False",
           f"--config.data.path={data}", f"--config.data.image_folder={root / 'images'}",
           f"--config.workdir={work}", "--config.data.max_length=64", "--config.data.length_buckets=(48,)",
           "--config.train.log_every=1", "--config.export.hf=False", "--config.mesh.fsdp=1",
           *[f"--config.train.{k}={v}" for k, v in train.items()]]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env(), cwd=REPO)
    for line in proc.stdout:
        if line.startswith("[finetune] step 3 "):
            os.kill(proc.pid, signal.SIGKILL)
            break
    assert proc.wait(timeout=600) == -signal.SIGKILL
    assert not (work / "export").exists()

    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=REPO, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resumed at step 2" in rerun.stdout or "resumed at step 4" in rerun.stdout, rerun.stdout
    expected, got = _flat(reference["export"]), _flat(work / "export")
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=str(k))
    assert any(not np.array_equal(expected[k], before) for k, before in _flat(ckpt).items())
