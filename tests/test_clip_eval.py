"""Retrieval recall@k equals the CLIP_benchmark definitions; dataset-level evaluation works."""

import numpy as np
import pytest
import torch

from clip_helpers import chance_recall
from recap_jax.clip import evaluate


def _clip_benchmark_recalls(image_emb, text_emb, text_to_image, ks):
    """CLIP_benchmark's zeroshot_retrieval formulas, written out with torch.topk."""
    images, texts = torch.tensor(image_emb), torch.tensor(text_emb)
    scores = texts @ images.T  # [texts, images]
    positive_pairs = torch.zeros_like(scores, dtype=torch.bool)
    positive_pairs[torch.arange(len(texts)), torch.tensor(text_to_image)] = True

    def recall_at_k(scores, positive_pairs, k):
        topk = torch.topk(scores, k, dim=1)[1]
        onehot = torch.nn.functional.one_hot(topk, num_classes=scores.shape[1]).sum(1)  # [queries, candidates]
        true_positives = (onehot * positive_pairs).sum(-1)
        return true_positives / positive_pairs.sum(-1)

    out = {}
    for k in ks:
        out[f"text_to_image/R@{k}"] = float((recall_at_k(scores, positive_pairs, k) > 0).float().mean())
        out[f"image_to_text/R@{k}"] = float((recall_at_k(scores.T, positive_pairs.T, k) > 0).float().mean())
    return out


def test_hand_built_case():
    # 3 images on the axes of R^3; 5 captions (image 0 has 2, image 1 has 2, image 2 has 1).
    image_emb = np.eye(3, dtype=np.float32)
    text_emb = np.array([
        [0.9, 0.1, 0.0],   # caption of image 0: ranks image 0 first          -> t2i hit@1
        [0.2, 0.7, 0.1],   # caption of image 0: ranks image 1, then 0        -> t2i hit@2
        [0.0, 0.8, 0.3],   # caption of image 1: ranks image 1 first          -> t2i hit@1
        [0.6, 0.0, 0.5],   # caption of image 1: image 1 is last (0.0)        -> t2i hit@3
        [0.1, 0.2, 0.3],   # caption of image 2: image 2 first                -> t2i hit@1
    ], np.float32)
    text_to_image = np.array([0, 0, 1, 1, 2])
    got = evaluate.retrieval_recalls(image_emb, text_emb, text_to_image, ks=(1, 2, 3))
    # text->image: hits@1 = captions 0, 2, 4 -> 3/5; @2 adds caption 1 -> 4/5; @3 all -> 5/5
    assert got["text_to_image/R@1"] == pytest.approx(3 / 5)
    assert got["text_to_image/R@2"] == pytest.approx(4 / 5)
    assert got["text_to_image/R@3"] == pytest.approx(1.0)
    # image->text: image 0's scores over captions = column 0 = [.9,.2,0,.6,.1] -> best is caption 0 (its own)
    # image 1: column 1 = [.1,.7,.8,0,.2] -> best caption 2 (its own); image 2: column 2 =
    # [0,.1,.3,.5,.3] -> best caption 3 (image 1's), then captions 2/4 tie at .3 (stable: 2 first,
    # not its own), then caption 4 -> hit only at k=3.
    assert got["image_to_text/R@1"] == pytest.approx(2 / 3)
    assert got["image_to_text/R@2"] == pytest.approx(2 / 3)
    assert got["image_to_text/R@3"] == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_clip_benchmark_on_random_embeddings(seed):
    rng = np.random.default_rng(seed)
    num_images = 40
    captions_per_image = rng.integers(1, 6, size=num_images)  # 1..5 captions each, like COCO
    text_to_image = np.repeat(np.arange(num_images), captions_per_image)
    image_emb = rng.normal(size=(num_images, 8)).astype(np.float32)
    # Captions near their image with noise, so recalls are neither 0 nor 1.
    text_emb = (image_emb[text_to_image] + 1.5 * rng.normal(size=(len(text_to_image), 8))).astype(np.float32)
    image_emb /= np.linalg.norm(image_emb, axis=1, keepdims=True)
    text_emb /= np.linalg.norm(text_emb, axis=1, keepdims=True)
    ks = (1, 5, 10)
    got = evaluate.retrieval_recalls(image_emb, text_emb, text_to_image, ks, chunk=7)  # chunking on
    want = _clip_benchmark_recalls(image_emb, text_emb, text_to_image, ks)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key  # torch means in float32
    assert 0 < got["text_to_image/R@1"] < 1 and 0 < got["image_to_text/R@1"] < 1


def test_perfect_and_reversed_embeddings():
    emb = np.eye(6, dtype=np.float32)
    assert set(evaluate.retrieval_recalls(emb, emb, np.arange(6), ks=(1,)).values()) == {1.0}
    got = evaluate.retrieval_recalls(emb, -emb, np.arange(6), ks=(1, 5))
    assert got["text_to_image/R@1"] == 0.0 and got["text_to_image/R@5"] == 0.0  # own image ranked last


def test_bad_mapping_is_rejected():
    with pytest.raises(ValueError, match="text_to_image"):
        evaluate.retrieval_recalls(np.eye(2), np.eye(3), np.array([0, 1, 2]))


def test_classification_accuracy_and_chance():
    image_emb = np.array([[1, 0], [0, 1], [1, 0.1]], np.float32)
    class_emb = np.array([[1, 0], [0, 1]], np.float32)
    got = evaluate.classification_accuracy(image_emb, class_emb, np.array([0, 1, 1]), ks=(1, 2))
    assert got == {"top1": pytest.approx(2 / 3), "top2": 1.0}
    assert chance_recall(100, 1) == pytest.approx(0.01)
    assert chance_recall(100, 10, positives=2) == pytest.approx(1 - (90 * 89) / (100 * 99))
