"""CLIP score and CLIP image features (metrics/clip_score.py) against transformers' CLIPModel."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dit_eval_helpers import tiny_hf_clip  # noqa: E402
from recap_jax.errors import ConfigError  # noqa: E402
from recap_jax.metrics import clip_score  # noqa: E402
from recap_jax.preprocess.image import CLIP_MEAN, CLIP_STD  # noqa: E402


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    model, tokenizer = tiny_hf_clip(folder)
    return folder, model, tokenizer


def test_clip_score_matches_transformers(clip):
    folder, model, tokenizer = clip
    encoders = clip_score.load_clip_encoders(str(folder), batch_size=3)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    prompts = ["a red square", "a photo of a dog", "green circle", "a cat", "blue blue dog"]
    ours = clip_score.clip_scores(encoders, images, prompts)
    pixels = (images / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    tokens = tokenizer(prompts, encoders.text_length)
    with torch.no_grad():
        image_emb = model.get_image_features(pixel_values=torch.from_numpy(pixels).float().permute(0, 3, 1, 2))
        text_emb = model.get_text_features(input_ids=torch.from_numpy(np.asarray(tokens)).long())
    image_emb = getattr(image_emb, "pooler_output", image_emb).numpy()
    text_emb = getattr(text_emb, "pooler_output", text_emb).numpy()
    cos = np.sum(image_emb * text_emb, -1) / np.linalg.norm(image_emb, axis=-1) / np.linalg.norm(text_emb, axis=-1)
    np.testing.assert_allclose(ours, 100 * np.maximum(cos, 0), atol=1e-3)
    assert np.any(cos < 0) or np.all(ours > 0)  # the floor is exercised when a cosine is negative
    features = clip_score.image_embeddings(encoders, images)
    np.testing.assert_allclose(features, image_emb / np.linalg.norm(image_emb, axis=-1, keepdims=True), atol=1e-5)


def test_scores_are_floored_at_zero():
    scores = clip_score.scores_from_embeddings(np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([[2.0, 0.0], [-1.0, 0.1]]))
    np.testing.assert_allclose(scores, [100.0, 0.0])


def test_clip_folder_misuse(tmp_path):
    with pytest.raises(ConfigError, match="eval.clip: .* has no config.json"):
        clip_score.load_clip_encoders(str(tmp_path))
