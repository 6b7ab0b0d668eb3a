"""The Flax port against the HF PyTorch reference, through conversion to Orbax and back."""

import numpy as np
import pytest
import torch

from recap_jax import convert
from recap_jax.captioning import model_loading
from recap_jax.conversion import bundle
from recap_jax.decoding.sampler import Request, Sampler
from recap_jax.decoding.settings import DecodeSettings
from recap_jax.models.llava import LlavaModel
from recap_jax.preprocess.image import preprocess_image
from tiny_llava import load_reference, save_tiny_llava, sample_images

PROMPTS = ["describe the image .",
           "please generate a detailed caption of this image . please be as descriptive as possible ."]

VARIANTS = {
    "gqa-layer-2-default-pad": dict(kv_heads=2, feature_layer=-2, select_strategy="default", pad=True),
    "mqa-llama3rope-layer-1-full-crop": dict(kv_heads=1, rope_scaling=True, feature_layer=-1,
                                             select_strategy="full", pad=False),
    "gqa-llama3rope-crop-tied": dict(kv_heads=3, rope_scaling=True, pad=False, tie_word_embeddings=True),
    "mha-layer1-pad": dict(kv_heads=6, feature_layer=1, pad=True),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def converted(request, tmp_path_factory):
    """(HF folder, converted checkpoint folder) for one variant."""
    root = tmp_path_factory.mktemp(request.param)
    hf_dir = save_tiny_llava(root / "hf", **VARIANTS[request.param])
    assert convert.main(["--hf_dir", str(hf_dir), "--out", str(root / "ckpt"), "--dtype", "float32"]) == 0
    return hf_dir, root / "ckpt"


def _hf_batch(processor, images, prompts):
    texts = [processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p}]}],
        add_generation_prompt=True) for p in prompts]
    processor.tokenizer.padding_side = "left"
    return processor(images=images, text=texts, return_tensors="pt", padding=True)


def test_pixels_match_hf_processor(converted):
    hf_dir, ckpt = converted
    _, processor = load_reference(hf_dir)
    spec, _ = bundle.read_converted_spec(ckpt)
    for image in sample_images():
        ours = preprocess_image(image, spec.image)
        theirs = processor.image_processor(image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


def test_logits_and_greedy_tokens_match_hf(converted):
    hf_dir, ckpt = converted
    reference, processor = load_reference(hf_dir)
    spec, params = model_loading.load_captioner(checkpoint=str(ckpt))
    model = LlavaModel(spec.config)
    images = sample_images()[:2]
    inputs = _hf_batch(processor, images, PROMPTS)
    encoder = spec.prompt_encoder()
    prompt_ids = [encoder.encode(p) for p in PROMPTS]
    assert len(prompt_ids[0]) != len(prompt_ids[1])
    mask = inputs["attention_mask"].bool().numpy()
    for row, ids in enumerate(prompt_ids):  # same tokens as the HF processor, image tokens included
        np.testing.assert_array_equal(inputs["input_ids"][row].numpy()[mask[row]], ids)

    with torch.no_grad():
        hf_logits = reference(**inputs).logits.numpy()
    tokens = np.zeros((2, max(map(len, prompt_ids))), np.int32)  # right-padded, unlike HF's left
    for row, ids in enumerate(prompt_ids):
        tokens[row, :len(ids)] = ids
    pixels = np.stack([preprocess_image(im, spec.image) for im in images])
    logits = np.asarray(model.apply({"params": params}, tokens, pixels))
    assert np.abs(hf_logits).max() > 1.0  # logits large enough for 1e-4 to mean something
    for row, ids in enumerate(prompt_ids):
        np.testing.assert_allclose(logits[row, :len(ids)], hf_logits[row][mask[row]], atol=1e-4, rtol=0)

    with torch.no_grad():
        hf_out = reference.generate(**inputs, max_new_tokens=32, do_sample=False, eos_token_id=None,
                                    pad_token_id=1)
    hf_tokens = hf_out[:, inputs["input_ids"].shape[1]:].numpy()
    # No stop tokens: every one of the 32 steps goes through our KV cache.
    sampler = Sampler(model, params, DecodeSettings(max_new_tokens=32, batch_size=2, prefill_batch=1,
                                                    prompt_buckets=(64,), steps_per_sync=5))
    results = {r.tag: r for r in sampler.generate(
        Request(ids, px, row) for row, (ids, px) in enumerate(zip(prompt_ids, pixels)))}
    for row in range(2):
        assert len(results[row].tokens) == 32
        np.testing.assert_array_equal(results[row].tokens, hf_tokens[row])
