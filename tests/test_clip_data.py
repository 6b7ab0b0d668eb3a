"""The grain input pipeline over captioner output folders."""

import os

import numpy as np
import pytest

from recap_jax.clip import data, synthetic
from recap_jax.data.images import decode_image
from recap_jax.preprocess.image import CLIP_MEAN, CLIP_STD
from clip_helpers import write_shapes


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_shapes(tmp_path_factory.mktemp("shapes"), num_train=256)


@pytest.fixture(scope="module")
def tokenizer(shapes):
    return data.Tokenizer(shapes["tokenizer"])


def _dataset(shapes, tokenizer, **kw):
    args = dict(image_size=32, per_host_batch=16, seed=0, re_caption_max_tokens=24, org_caption_max_tokens=6)
    args.update(kw)
    return data.train_dataset(shapes["train"], tokenizer, **args)


def test_reads_the_captioner_layout_with_tfds(shapes):
    import tensorflow_datasets as tfds

    from recap_jax.data import schema
    builder = tfds.builder_from_directory(shapes["train"])
    assert set(builder.info.features.keys()) == set(schema.RECORD_FEATURES.keys())
    record = builder.as_data_source(schema.SPLIT)[0]
    # written by the captioner's own writer, in 4 units
    assert os.path.exists(os.path.join(shapes["train"], "summary.json"))
    assert len([f for f in os.listdir(shapes["train"]) if ".array_record-" in f]) == 4
    assert record["org_caption"].decode().split()[1] in synthetic.SHAPES


def test_batches_have_static_shapes_and_truncated_captions(shapes, tokenizer):
    batch = _dataset(shapes, tokenizer, re_caption_max_tokens=12)[0]
    assert batch["image"].shape == (16, 32, 32, 3) and batch["image"].dtype == np.uint8
    assert batch["tokens"].shape == (16, 12) and batch["tokens"].dtype == np.int32
    is_re_caption = batch["caption_source"] == data.SOURCE_RE_CAPTION
    for tokens, is_re in zip(batch["tokens"], is_re_caption):
        length = int(np.argmax(tokens == tokenizer.eos_id)) + 1  # BOS ... EOS
        assert tokens[0] == tokenizer.hf.bos_token_id
        # org captions have 3 words (+2 specials = 5 <= 6); recaptions (18 words) are cut at 12
        # tokens with their EOS kept
        assert length == (12 if is_re else 5)
    assert 0 < is_re_caption.sum() < 16


def test_caption_mixing_probability(shapes, tokenizer):
    def org_fraction(p):
        ds = _dataset(shapes, tokenizer, org_caption_prob=p, per_host_batch=64)
        return np.mean([(ds[i]["caption_source"] == data.SOURCE_ORG_CAPTION).mean() for i in range(8)])

    assert org_fraction(0.0) == 0.0 and org_fraction(1.0) == 1.0  # 512 examples each
    assert abs(org_fraction(0.8) - 0.8) < 0.06 and abs(org_fraction(0.2) - 0.2) < 0.06
    with pytest.raises(ValueError, match="data.org_caption_prob"):
        _dataset(shapes, tokenizer, org_caption_prob=1.5)
    with pytest.raises(ValueError, match="data.caption_mix"):
        _dataset(shapes, tokenizer, caption_mix="interleave")


def test_deterministic_order_and_seed_dependence(shapes, tokenizer):
    a, b = _dataset(shapes, tokenizer)[3], _dataset(shapes, tokenizer)[3]
    c = _dataset(shapes, tokenizer, seed=1)[3]
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    assert not np.array_equal(a["image"], c["image"])
    # epochs are reshuffled: batch 0 of epoch 2 differs from batch 0 of epoch 1 (256 / 16 = 16 batches)
    ds = _dataset(shapes, tokenizer)
    assert not np.array_equal(ds[0]["tokens"], ds[16]["tokens"])


def test_hosts_get_disjoint_interleaved_shares(shapes, tokenizer):
    whole = _dataset(shapes, tokenizer, per_host_batch=16)
    host0 = _dataset(shapes, tokenizer, per_host_batch=8, process_index=0, process_count=2)
    host1 = _dataset(shapes, tokenizer, per_host_batch=8, process_index=1, process_count=2)
    # Step 0's global batch is split between the hosts, element for element.
    np.testing.assert_array_equal(host0[0]["image"], whole[0]["image"][0::2])
    np.testing.assert_array_equal(host1[0]["image"], whole[0]["image"][1::2])


def test_iterator_state_restores_the_exact_stream(shapes, tokenizer):
    it = data.CheckpointableIterator(_dataset(shapes, tokenizer), num_threads=2)
    for _ in range(5):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    resumed = data.CheckpointableIterator(_dataset(shapes, tokenizer), num_threads=2)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["tokens"], want["tokens"])


def test_several_folders_are_read_together(shapes, tokenizer, tmp_path):
    # The extra folder's captions are marked (a word three times: no shapes caption reads so), so
    # that its records can be told from the main folder's, which repeats forever too.
    records = synthetic.make_records(32, 32, seed=7)
    for record in records:
        record["org_caption"] = "left left left"
    extra = synthetic.write_tfds_folder(str(tmp_path / "extra"), records)
    ds = data.train_dataset(f"{shapes['train']},{extra}", tokenizer, image_size=32, per_host_batch=48,
                            seed=0, org_caption_prob=1.0, org_caption_max_tokens=8)
    # 256 + 32 records -> 6 batches per epoch: one epoch holds each extra caption exactly once.
    one_epoch = np.concatenate([ds[i]["tokens"] for i in range(6)])
    assert len(one_epoch) == 288
    marker = tokenizer(["left left left"], 8)[0][:5]  # BOS, the three words, EOS
    assert sum(np.array_equal(row[:5], marker) for row in one_epoch) == 32
    with pytest.raises(ValueError, match="data.folders"):
        data.train_dataset(str(tmp_path / "missing"), tokenizer, image_size=32, per_host_batch=4, seed=0)


def test_image_transforms():
    rng = np.random.default_rng(0)
    image = synthetic.render("red", "circle", "left", 64, rng).resize((80, 60))
    assert data.resize_center_crop(image, 32).shape == (32, 32, 3)
    a = data.random_resized_crop(image, 32, np.random.default_rng(1), scale=(0.5, 1.0))
    b = data.random_resized_crop(image, 32, np.random.default_rng(2), scale=(0.5, 1.0))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8 and not np.array_equal(a, b)
    normalized = np.asarray(data.normalize_on_device(a))
    np.testing.assert_allclose(normalized, (a / 255.0 - np.asarray(CLIP_MEAN)) / np.asarray(CLIP_STD), rtol=1e-5, atol=1e-6)
    decoded = decode_image(synthetic.encode_png(image))
    assert decoded.size == (80, 60) and decoded.mode == "RGB"


def test_tokenizer_is_safe_under_concurrent_threads(tokenizer):
    """grain tokenizes in threads with two different lengths; results must not depend on timing."""
    from concurrent.futures import ThreadPoolExecutor

    texts = [" ".join(synthetic.captions(*c)) for c in synthetic.COMBINATIONS]
    jobs = [(t, 6 if i % 2 else 24) for i, t in enumerate(texts * 4)]
    sequential = [tokenizer([t], n, 24)[0] for t, n in jobs]
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(lambda job: tokenizer([job[0]], job[1], 24)[0], jobs))
    for want, got, (_, n) in zip(sequential, threaded, jobs):
        np.testing.assert_array_equal(got, want)
        assert got[n - 1] == tokenizer.eos_id  # truncated with EOS kept
