"""Training records and batches: caption pairs from webdataset shards, resumable positions."""

import io

import numpy as np
from PIL import Image

from finetune_helpers import CAPTIONS, PROMPT, write_images, write_llava_json
from recap_jax.captioning.tiny_demo import tiny_tokenizer
from recap_jax.preprocess.image import ImageSettings
from recap_jax.preprocess.text import PromptEncoder
from recap_jax.finetuning.batches import BatchMaker, FailureLog, Position
from recap_jax.finetuning.conversation import ConversationEncoder
from recap_jax.finetuning.records import make_reader
from webdataset_helpers import write_tar

N_IMAGE_TOKENS = 16


def _encoder():
    tokenizer = tiny_tokenizer()
    return ConversationEncoder(PromptEncoder(tokenizer, 7, N_IMAGE_TOKENS, None, tokenizer.chat_template))


def _maker(reader, tmp_path, batch):
    return BatchMaker(reader, _encoder(), ImageSettings(size=28, mode="pad"), global_batch_size=batch,
                      max_length=64, length_buckets=(40,), failures=FailureLog(tmp_path, 0), num_workers=2)


def _png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (30, 20), colour).save(buffer, "PNG")
    return buffer.getvalue()


def test_webdataset_caption_pairs_become_the_caption_prompt(tmp_path):
    samples = [(f"k{i}", "png", _png((30 * i, 0, 0)), CAPTIONS[i]) for i in range(3)]
    samples.append(("empty", "png", _png((0, 0, 0)), ""))
    write_tar(tmp_path / "00000.tar", samples)
    reader = make_reader("webdataset", str(tmp_path / "*.tar"), "", PROMPT, "", shuffle=False, seed=0)
    batches = _maker(reader, tmp_path, 3).batches(Position())
    batch = next(batches).arrays
    encoder = _encoder()
    prompt = encoder.prompts.encode(PROMPT)
    tokenizer = encoder.tokenizer
    for row, caption in enumerate(CAPTIONS[:3]):
        np.testing.assert_array_equal(batch["tokens"][row, :len(prompt)], prompt)
        answer = batch["targets"][row][batch["weights"][row] > 0]
        assert tokenizer.decode(answer).split() == caption.split() + ["<|eot_id|>"]
    assert batch["tokens"].shape == (3, 40) and batch["pixels"].shape == (3, 28, 28, 3)
    assert not (tmp_path / "failures-00000.jsonl").exists()  # the first batch filled first
    second = next(batches)  # the empty caption is skipped, then the next epoch fills the batch
    assert second.next_position == Position(epoch=1, offset=3)
    assert '"key": "empty"' in (tmp_path / "failures-00000.jsonl").read_text()


def test_position_resumes_at_the_same_records_across_epochs(tmp_path):
    names = write_images(tmp_path / "images", 5)
    data = write_llava_json(tmp_path / "data.json", names, CAPTIONS[:5])
    reader = make_reader("llava_json", str(data), str(tmp_path / "images"), PROMPT, "", shuffle=True, seed=3)
    batches = _maker(reader, tmp_path, 2).batches(Position())
    first = [next(batches) for _ in range(5)]  # 10 rows: two epochs of 5
    assert first[2].next_position.epoch == 1  # the third batch took the last record of epoch 0
    again = _maker(reader, tmp_path, 2).batches(first[1].next_position)
    for expected in first[2:]:
        got = next(again)
        np.testing.assert_array_equal(got.arrays["tokens"], expected.arrays["tokens"])
        np.testing.assert_array_equal(got.arrays["pixels"], expected.arrays["pixels"])
    assert not np.array_equal(reader.order(0), reader.order(1))  # reshuffled per epoch


def test_data_errors_name_the_finetune_fields(tmp_path):
    import pytest

    from recap_jax.errors import ConfigError

    for format, path in (("webdataset", tmp_path / "none-*.tar"), ("tfds", tmp_path / "no_dataset")):
        with pytest.raises(ConfigError) as error:
            make_reader(format, str(path), "", PROMPT, "", shuffle=False, seed=0)
        assert "data.path" in str(error.value) and "input." not in str(error.value), str(error.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="data.path") as error:
        make_reader("webdataset", str(tmp_path / "empty"), "", PROMPT, "", shuffle=False, seed=0)
    assert "input." not in str(error.value)


def padding_share(batches) -> float:
    """Padded positions / all positions of the batches' token arrays (pad id 0 is never text here)."""
    tokens = np.concatenate([b.arrays["tokens"].ravel() for b in batches])
    return float(np.mean(tokens == 0))


def test_length_grouped_batches_pad_less_and_resume_exactly(tmp_path):
    from finetune_helpers import random_captions

    captions = [" ".join([c] * (1 + i % 4)) for i, c in enumerate(random_captions(24, seed=5))]
    names = write_images(tmp_path / "images", 8)
    data = write_llava_json(tmp_path / "data.json", [names[i % 8] for i in range(24)], captions)
    reader = make_reader("llava_json", str(data), str(tmp_path / "images"), PROMPT, "", shuffle=True, seed=1)

    def maker(group):
        return BatchMaker(reader, _encoder(), ImageSettings(size=28, mode="pad"), global_batch_size=4,
                          max_length=96, length_buckets=tuple(range(8, 96, 4)), failures=FailureLog(tmp_path, 0),
                          num_workers=2, group_batches=group, seed=2)

    plain = maker(1).batches(Position())
    grouped_iter = maker(3).batches(Position())
    ungrouped = [next(plain) for _ in range(12)]  # two epochs
    grouped = [next(grouped_iter) for _ in range(12)]
    assert padding_share(grouped) < padding_share(ungrouped) * 0.8, (padding_share(grouped), padding_share(ungrouped))
    # the same records per group of 3 batches, only regrouped
    rows = lambda bs: sorted(tuple(np.trim_zeros(r, "b")) for b in bs for r in b.arrays["tokens"])  # noqa: E731
    for g in range(0, 12, 3):
        assert rows(grouped[g:g + 3]) == rows(ungrouped[g:g + 3])
    # resume from inside a group (and at its end) gives the same following batches
    for k in (3, 4, 5):
        assert grouped[k].next_position.skip == (k + 1) % 3
        again = maker(3).batches(grouped[k].next_position)
        for expected in grouped[k + 1:k + 5]:
            got = next(again)
            np.testing.assert_array_equal(got.arrays["tokens"], expected.arrays["tokens"])
            np.testing.assert_array_equal(got.arrays["pixels"], expected.arrays["pixels"])
