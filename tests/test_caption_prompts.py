"""The prompt's `{org_caption}` slot: each image's prompt carries its original caption; prompts
without the slot are encoded once and unchanged; an over-long prompt is a listed failure."""

import numpy as np

from recap_jax.captioning.prompts import CaptionPrompt
from recap_jax.captioning.run import caption_requests
from recap_jax.captioning.tiny_demo import tiny_tokenizer
from recap_jax.captioning.units import PreparedImage, UnitAssembler
from recap_jax.data.pipeline import UnitEnd, UnitItem
from recap_jax.data.inputs import Failure, Sample, WorkUnit
from recap_jax.decoding.settings import DecodeSettings
from recap_jax.preprocess.text import PromptEncoder

IMAGE_TOKENS = 4


def encoder() -> PromptEncoder:
    tokenizer = tiny_tokenizer()
    return PromptEncoder(tokenizer, tokenizer.convert_tokens_to_ids("<image>"), IMAGE_TOKENS)


def test_prompt_without_slot_is_unchanged():
    enc = encoder()
    prompt = CaptionPrompt(enc, "describe the image .")
    assert not prompt.conditioned
    np.testing.assert_array_equal(prompt.token_ids("a red dog"), enc.encode("describe the image ."))
    assert prompt.token_ids("a red dog") is prompt.token_ids("two cats")


def test_org_caption_is_substituted_per_image():
    enc = encoder()
    prompt = CaptionPrompt(enc, "the caption is : {org_caption} . describe the image .")
    assert prompt.conditioned
    dog, cat = prompt.token_ids("a red dog"), prompt.token_ids(" two cats ")
    np.testing.assert_array_equal(dog, enc.encode("the caption is : a red dog . describe the image ."))
    np.testing.assert_array_equal(cat, enc.encode("the caption is : two cats . describe the image ."))
    dog_id = enc.tokenizer.convert_tokens_to_ids("dog")
    assert dog_id in dog and dog_id not in cat
    assert len(prompt.fixed_ids) < len(dog)  # the slot's own text is not encoded


class _Output:
    def __init__(self):
        self.units = {}

    def write_unit(self, index, records, failures):
        self.units[index] = (records, failures)


class _Meter:
    def unit_done(self, records, failures):
        pass


def test_requests_carry_their_caption_and_long_prompts_fail():
    prompt = CaptionPrompt(encoder(), "{org_caption} . describe the image .")
    unit = WorkUnit(index=0, path="/x")
    prepared = PreparedImage(np.zeros((2, 2, 3), np.float32), 2, 2)
    samples = [Sample("a", "/x/a.jpg", b"", org_caption="a red dog"),
               Sample("b", "/x/b.jpg", b"", org_caption=" ".join(["blue"] * 80))]
    entries = [UnitItem(unit, i, (s, prepared)) for i, s in enumerate(samples)]
    entries.insert(1, UnitItem(unit, 2, Failure("c", "/x/c.jpg", "not an image")))
    output = _Output()
    assembler = UnitAssembler([unit], output, _Meter())
    settings = DecodeSettings(prompt_buckets=(32,))
    requests = list(caption_requests(entries + [UnitEnd(unit, 3)], prompt, settings, assembler))
    assert [r.tag.sample.key for r in requests] == ["a"]
    np.testing.assert_array_equal(requests[0].token_ids, prompt.token_ids("a red dog"))
    assert requests[0].tag.position == 0 and requests[0].tag.unit_index == 0
    assert 0 not in output.units  # "a" is still being captioned
    assembler.add_record(0, 0, {"key": "a"})
    records, failures = output.units[0]
    assert records == [{"key": "a"}]
    assert [f.key for f in failures] == ["b", "c"]  # input order
    assert "decode.prompt_buckets" in failures[0].reason
