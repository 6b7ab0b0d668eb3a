"""The fine-tuning loss against HF `LlavaForConditionalGeneration(..., labels=...)`: same masking,
same loss, same gradients; and conversations encoded as the caption job prompts."""

import jax
import numpy as np
import pytest
import torch

from finetune_helpers import CAPTIONS, PROMPT, tiny_checkpoint, write_images, write_llava_json
from recap_jax.captioning import model_loading
from recap_jax.models.llava import LlavaModel
from recap_jax.finetuning.batches import BatchMaker, FailureLog, Position
from recap_jax.finetuning.conversation import ConversationEncoder, caption_turns, llava_turns
from recap_jax.finetuning.export import hf_tensors
from recap_jax.finetuning.loss import summed_loss
from recap_jax.finetuning.records import LlavaJsonReader
from tiny_llava import load_reference


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("loss")
    hf_dir, ckpt = tiny_checkpoint(root)
    spec, params = model_loading.load_captioner(checkpoint=str(ckpt))
    return root, hf_dir, spec, params


def test_single_turn_prompt_is_the_caption_prompt(setup):
    _, _, spec, _ = setup
    prompts = spec.prompt_encoder()
    encoded = ConversationEncoder(prompts).encode(caption_turns(PROMPT, CAPTIONS[0]))
    prompt_ids = prompts.encode(PROMPT)
    n = len(prompt_ids)
    np.testing.assert_array_equal(encoded.token_ids[:n], prompt_ids)
    assert not encoded.is_target[:n].any() and encoded.is_target[n:].all()
    answer = spec.tokenizer.decode(encoded.token_ids[n:])
    assert answer.split() == CAPTIONS[0].split() + ["<|eot_id|>"]


def test_multi_turn_targets_only_the_answers(setup):
    _, _, spec, _ = setup
    turns = llava_turns([{"from": "human", "value": "what is this ?\n<image>"},
                         {"from": "gpt", "value": "a red circle ."},
                         {"from": "human", "value": "is it big ?"},
                         {"from": "gpt", "value": "on the left ."}])
    encoded = ConversationEncoder(spec.prompt_encoder()).encode(turns)
    ids, target = encoded.token_ids, encoded.is_target
    assert (ids == spec.config.image_token_id).sum() == spec.config.num_image_tokens
    spans = np.flatnonzero(np.diff(np.concatenate([[0], target.astype(int), [0]])))
    answers = [spec.tokenizer.decode(ids[a:b]).split() for a, b in zip(spans[::2], spans[1::2])]
    assert answers == [["a", "red", "circle", ".", "<|eot_id|>"], ["on", "the", "left", ".", "<|eot_id|>"]]
    whole = spec.tokenizer.decode(ids[~target & (ids != spec.config.image_token_id)])
    assert "is it big ?" in whole and "red" not in whole


def _batch(setup, captions):
    root, _, spec, _ = setup
    names = write_images(root / "images", len(captions))
    path = write_llava_json(root / "data.json", names, captions)
    reader = LlavaJsonReader(str(path), str(root / "images"), shuffle=False, seed=0)
    maker = BatchMaker(reader, ConversationEncoder(spec.prompt_encoder()), spec.image,
                       global_batch_size=len(captions), max_length=128, length_buckets=(128,),
                       failures=FailureLog(root, 0), num_workers=1)
    return next(maker.batches(Position())).arrays


def mean_loss(model: LlavaModel, params, batch: dict, chunk: int = 0) -> jax.Array:
    """Mean cross-entropy per assistant token: what HF's `labels=` loss computes."""
    return summed_loss(model, params, batch, chunk) / jax.numpy.maximum(jax.numpy.sum(batch["weights"]), 1.0)


def test_loss_and_grads_match_hf(setup):
    _, hf_dir, spec, params = setup
    # Different answer lengths: padding and masking both matter.
    arrays = _batch(setup, [CAPTIONS[0], "a dog .", CAPTIONS[6] + " " + CAPTIONS[2]])
    # Every training variant must give HF's loss and gradients: plain, rematerialised decoder
    # layers with a chunked loss (48 does not divide the 128 positions: a padded last chunk), and
    # the dots-saveable policy with one whole-sequence chunk.
    variants = {}
    for remat, chunk in (("none", 0), ("full", 48), ("dots_saveable", 128)):
        model = LlavaModel(spec.config, remat=remat)
        variants[remat, chunk] = jax.jit(jax.value_and_grad(
            lambda p, b, m=model, c=chunk: mean_loss(m, p, b, c)))(params, arrays)

    reference, _ = load_reference(hf_dir)
    tokens = torch.from_numpy(arrays["tokens"]).long()
    labels = torch.full_like(tokens, -100)
    shifted = np.where(arrays["weights"][:, :-1] > 0, arrays["targets"][:, :-1], -100)
    labels[:, 1:] = torch.from_numpy(shifted).long()
    mask = torch.zeros_like(tokens)
    for row in range(tokens.shape[0]):  # attend to the real tokens: those before the right padding
        last = np.flatnonzero(arrays["tokens"][row])[-1]
        mask[row, :last + 1] = 1
    pixels = torch.from_numpy(arrays["pixels"].transpose(0, 3, 1, 2).copy())
    out = reference(input_ids=tokens, pixel_values=pixels, attention_mask=mask, labels=labels)
    out.loss.backward()
    assert int((labels != -100).sum()) == int(arrays["weights"].sum()) > 20
    theirs = dict(reference.named_parameters())
    for variant, (loss, grads) in variants.items():
        assert abs(float(loss) - out.loss.item()) < 1e-4, (variant, float(loss), out.loss.item())
        compared = 0
        for name, ours in hf_tensors(spec.config, jax.device_get(grads)):
            ref = theirs[name].grad.numpy()
            scale = np.abs(ref).max()
            assert scale > 0, name
            assert np.abs(ours - ref).max() <= 1e-4 * scale + 1e-9, (variant, name, np.abs(ours - ref).max(), scale)
            compared += 1
        assert compared > 50  # vision (used blocks), projector, LLM, head
