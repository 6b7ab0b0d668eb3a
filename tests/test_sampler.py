"""Continuous batching: greedy captions equal HF `generate` one prompt at a time, whatever the slot
reuse; sampled captions depend on the image key and seed only, not on the batch or the order."""

import dataclasses

import jax
import numpy as np
import pytest
import torch

from recap_jax.captioning import model_loading
from recap_jax.decoding.sampler import Request, Sampler
from recap_jax.decoding.settings import DecodeSettings
from recap_jax.decoding.token_choice import choose_tokens, greedy, sample_seed
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
    spec, params = model_loading.load_captioner(hf_dir=str(hf_dir))
    images = (sample_images(1) + sample_images(2))[:len(PROMPTS)]
    encoder = spec.prompt_encoder()
    requests = [Request(encoder.encode(p), preprocess_image(im, spec.image), i, sample_seed(f"image-{i}"))
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


def _sampler(spec, params, **settings) -> Sampler:
    defaults = dict(max_new_tokens=MAX_NEW, batch_size=2, prefill_batch=1, prompt_buckets=(32, 64),
                    steps_per_sync=4, stop_ids=spec.stop_ids)
    return Sampler(LlavaModel(spec.config), params, DecodeSettings(**{**defaults, **settings}))


def _captions(sampler: Sampler, requests) -> dict:
    return {r.tag: r.tokens.tolist() for r in sampler.generate(iter(requests))}


@pytest.fixture(scope="module")
def greedy_captions(setup):
    spec, params, requests, _ = setup
    return _captions(_sampler(spec, params), requests)


def test_top_k_1_is_greedy(setup, greedy_captions):
    spec, params, requests, _ = setup
    top_1 = _sampler(spec, params, sampling="top_k", top_k=1, temperature=0.7, seed=5)
    assert _captions(top_1, requests) == greedy_captions


def test_sampling_depends_on_key_and_seed_only(setup, greedy_captions):
    spec, params, requests, _ = setup
    options = dict(sampling="top_p", top_p=0.95, temperature=1.5, seed=7)
    small = _sampler(spec, params, **options)
    sampled = _captions(small, requests)
    assert sampled != greedy_captions  # it does sample
    assert _captions(_sampler(spec, params, **{**options, "seed": 8}), requests) != sampled
    # Another batch shape; the requests in another order and split in two (as after a resume).
    large = _sampler(spec, params, **options, batch_size=8, prefill_batch=4, steps_per_sync=16)
    assert _captions(large, requests) == sampled
    reordered = requests[::-1]
    assert {**_captions(large, reordered[:2]), **_captions(small, reordered[2:])} == sampled
    # The same image under another key is another draw.
    renamed = [dataclasses.replace(r, sample_seed=sample_seed(f"other-{r.tag}")) for r in requests]
    assert _captions(small, renamed) != sampled


def test_token_choice_stays_in_the_candidate_set():
    logits = jax.random.normal(jax.random.PRNGKey(0), (64, 50)) * 3
    seeds = np.arange(64, dtype=np.int32)
    steps = np.zeros(64, np.int32)
    top3 = np.argsort(-np.asarray(logits), axis=-1)[:, :3]
    picks = []
    for step in range(8):
        token = np.asarray(choose_tokens(DecodeSettings(sampling="top_k", top_k=3), logits, seeds, steps + step))
        assert all(t in row for t, row in zip(token, top3))
        picks.append(token)
    assert len({tuple(p) for p in picks}) > 1  # the step index changes the draw
    assert not all((p == top3[:, 0]).all() for p in picks)  # not always the argmax
    # top_p: only tokens inside the nucleus; a greedy row of one-hot logits stays put.
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    order = np.argsort(-probs, axis=-1)
    mass_before = np.cumsum(np.take_along_axis(probs, order, -1), -1) - np.take_along_axis(probs, order, -1)
    token = np.asarray(choose_tokens(DecodeSettings(sampling="top_p", top_p=0.5), logits, seeds, steps))
    for row in range(64):
        rank = int(np.where(order[row] == token[row])[0][0])
        assert mass_before[row, rank] < 0.5
    tiny_p = choose_tokens(DecodeSettings(sampling="top_p", top_p=1e-6), logits, seeds, steps)
    np.testing.assert_array_equal(tiny_p, order[:, 0])  # the nucleus is the likeliest token alone
    np.testing.assert_array_equal(greedy(logits), np.argmax(np.asarray(logits), -1))


def test_sampling_settings_are_checked():
    for bad, field in [(dict(sampling="beam"), "decode.sampling"), (dict(top_k=0), "decode.top_k"),
                       (dict(top_p=0.0), "decode.top_p"), (dict(temperature=0.0), "decode.temperature")]:
        with pytest.raises(ValueError, match=field):
            DecodeSettings(**bad)
    assert sample_seed("abc") == sample_seed("abc") != sample_seed("abd")
