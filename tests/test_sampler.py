"""Continuous batching: captions equal HF `generate` one prompt at a time, whatever the slot reuse."""

import numpy as np
import pytest
import torch

from recap_jax.conversion import bundle
from recap_jax.decoding.sampler import DecodeSettings, Request, Sampler
from recap_jax.models.llava import LlavaModel
from recap_jax.preprocess.image import preprocess_image
from tiny_llava import load_reference, sample_images, save_tiny_llava

PROMPTS = ["describe the image .", "what is in this picture ?", "a photo of",
           "please generate a detailed caption of this image .", "describe the scene , left to right ."]
MAX_NEW = 20


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    hf_dir = save_tiny_llava(tmp_path_factory.mktemp("hf") / "tiny", kv_heads=2, rope_scaling=True, seed=3)
    reference, processor = load_reference(hf_dir)
    spec, params = bundle.load_captioner(hf_dir=str(hf_dir))
    images = (sample_images(1) + sample_images(2))[:len(PROMPTS)]
    encoder = spec.prompt_encoder()
    requests = [Request(encoder.encode(p), preprocess_image(im, spec.image), i)
                for i, (p, im) in enumerate(zip(PROMPTS, images))]

    def hf_generate(stop_id):
        outputs = []
        for request in requests:
            ids = torch.tensor(request.token_ids[None].astype(np.int64))
            pixels = torch.tensor(request.pixels.transpose(2, 0, 1)[None])
            with torch.no_grad():
                out = reference.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=MAX_NEW,
                                         do_sample=False, eos_token_id=stop_id, pad_token_id=1)
            outputs.append(out[0, ids.shape[1]:].numpy())
        return outputs

    return spec, params, requests, hf_generate


@pytest.mark.parametrize("batch_size,prefill_batch,steps", [(2, 1, 1), (3, 2, 4), (8, 4, 16)])
def test_continuous_batching_matches_hf(setup, batch_size, prefill_batch, steps):
    spec, params, requests, hf_generate = setup
    free_running = hf_generate(None)
    # A token that some captions produce mid-way serves as the stop token, so that captions end at
    # different steps and slots get refilled.
    counts = np.bincount(np.concatenate([o[2:MAX_NEW - 2] for o in free_running]))
    stop_id = int(np.argmax(counts))
    expected = hf_generate(stop_id)
    lengths = {len(o) for o in expected}
    assert len(lengths) > 1  # captions of different lengths: the refill path is exercised

    settings = DecodeSettings(max_new_tokens=MAX_NEW, batch_size=batch_size, prefill_batch=prefill_batch,
                              prompt_buckets=(32, 64), steps_per_sync=steps, stop_ids=(stop_id,))
    sampler = Sampler(LlavaModel(spec.config), params, settings)
    results = {r.tag: r for r in sampler.generate(iter(requests))}
    assert sorted(results) == list(range(len(requests)))
    for i, hf_tokens in enumerate(expected):
        hf_tokens = hf_tokens[hf_tokens != 1]  # HF pads finished rows
        stopped = len(hf_tokens) and hf_tokens[-1] == stop_id
        np.testing.assert_array_equal(results[i].tokens, hf_tokens[:-1] if stopped else hf_tokens)
        assert results[i].stopped == bool(stopped)
    assert sampler.generated_tokens == sum(len(o[o != 1]) for o in expected)


def test_bucket_errors_name_the_field():
    settings = DecodeSettings(prompt_buckets=(16,))
    with pytest.raises(ValueError, match="prompt_buckets"):
        settings.bucket(17)
    with pytest.raises(ValueError, match="prefill_batch"):
        DecodeSettings(batch_size=2, prefill_batch=3)
