"""`python -m recap_jax.export_hf`: a converted captioner of the ORIGINAL `llava_llama` layout (as the
paper's captioner was released) -> a llava-hf folder whose processor builds our prompt ids and whose
HF `generate` gives our greedy captions; misuse answered in one line, nothing written."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

from recap_jax import convert
from recap_jax.captioning import model_loading
from recap_jax.decoding.sampler import Request, Sampler
from recap_jax.decoding.settings import DecodeSettings
from recap_jax.models.llava import LlavaModel
from recap_jax.preprocess.image import preprocess_image
from test_convert_original import PROMPT, VOCAB, llama3_tokenizer, write_original
from tiny_llava import sample_images, save_tiny_llava

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEW_TOKENS = 12


def _export(*args):
    return subprocess.run([sys.executable, "-m", "recap_jax.export_hf", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=300)


@pytest.fixture(scope="module")
def original_ckpt(tmp_path_factory):
    """A tiny original-layout captioner (tower inside, images padded to square), converted."""
    root = tmp_path_factory.mktemp("export_hf")
    hf_dir = save_tiny_llava(root / "hf", seed=3, pad=True)
    ckpt, tower = write_original(hf_dir, root / "original", tower_inside=True, aspect="pad")
    tokenizer = llama3_tokenizer(root / "tokenizer")
    out = root / "converted"
    assert convert.main(["--hf_dir", str(ckpt), "--out", str(out), "--dtype", "float32", "--layout", "original",
                         "--vision_tower_dir", str(tower), "--tokenizer_dir", str(tokenizer)]) == 0
    return out


def our_captions(ckpt, images):
    spec, params = model_loading.load_captioner(checkpoint=str(ckpt))
    ids = spec.prompt_encoder().encode(PROMPT)
    settings = DecodeSettings(max_new_tokens=NEW_TOKENS, batch_size=2, prefill_batch=2, prompt_buckets=(64,),
                              steps_per_sync=4, stop_ids=spec.stop_ids)
    requests = [Request(ids, preprocess_image(im, spec.image), i) for i, im in enumerate(images)]
    tokens = {r.tag: list(r.tokens) for r in Sampler(LlavaModel(spec.config), params, settings).generate(iter(requests))}
    return spec, ids, [tokens[i] for i in range(len(images))]


def test_original_layout_exports_and_hf_generate_gives_our_captions(original_ckpt, tmp_path):
    dest = tmp_path / "llava-hf"
    result = _export(original_ckpt, dest)
    assert result.returncode == 0, result.stderr[-3000:]
    images = sample_images(4)[:2]
    spec, ids, ours = our_captions(original_ckpt, images)
    assert spec.template == "llama3_llava" and spec.config.image_token_id == VOCAB  # the original layout's

    model = transformers.LlavaForConditionalGeneration.from_pretrained(dest).eval()
    processor = transformers.AutoProcessor.from_pretrained(dest)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert prompt == spec.prompt_encoder().render(PROMPT)
    for image, want in zip(images, ours):
        # The template writes <|begin_of_text|> itself (as our PromptEncoder does: no second BOS).
        inputs = processor(images=[image], text=[prompt], return_tensors="pt", add_special_tokens=False)
        np.testing.assert_array_equal(inputs["input_ids"][0].numpy(), ids)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        theirs = out[0, len(ids):].tolist()
        assert theirs[:len(want)] == want
        assert len(want) == NEW_TOKENS or want[-1] in spec.stop_ids
    assert ours[0] != ours[1] and spec.tokenizer.decode(ours[0], skip_special_tokens=True).strip()
    generation = json.loads((dest / "generation_config.json").read_text())
    assert VOCAB in generation["suppress_tokens"]  # <image>'s zero row is never generated


def test_misuse_answers_in_one_line_and_writes_nothing(original_ckpt, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in os.listdir(original_ckpt):
        os.symlink(original_ckpt / item, broken / item)
    meta = json.loads((original_ckpt / "recap_config.json").read_text())
    meta["llava"]["text"]["hidden_size"] *= 2  # stored params no longer fit the config
    (broken / "recap_config.json").unlink()
    (broken / "recap_config.json").write_text(json.dumps(meta))
    layer0 = tmp_path / "layer0"
    layer0.mkdir()
    for item in os.listdir(original_ckpt):
        os.symlink(original_ckpt / item, layer0 / item)
    meta = json.loads((original_ckpt / "recap_config.json").read_text())
    meta["llava"]["vision_feature_layer"] = 0
    (layer0 / "recap_config.json").unlink()
    (layer0 / "recap_config.json").write_text(json.dumps(meta))
    existing = tmp_path / "existing"
    existing.mkdir()
    for args, needle in [((tmp_path / "nowhere",), "recap_config.json"), ((broken,), "do not fit"),
                         ((layer0,), "vision_feature_layer"), ((original_ckpt, existing), "exists"),
                         ((original_ckpt,), "expected CKPT and DEST")]:
        dest = tmp_path / "dest"
        result = _export(*args, *([] if len(args) == 2 or "expected" in needle else [dest]))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and needle in lines[0], (args, result.stderr[-2000:])
        assert not dest.exists() and not any(p.name.startswith(".dest") for p in tmp_path.iterdir())
    assert not list(existing.iterdir())
