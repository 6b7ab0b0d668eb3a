"""CLIP score (100 x cosine of image and prompt embeddings, floored at 0) and CLIP image features
(for a Frechet distance on CLIP features, as clean-fid offers), with a Hugging Face CLIPModel
folder or a Recap-CLIP `train_clip` workdir, through the CLIP evaluator's encoders
(`clip/model_loading.py`, `clip/evaluate.py`)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import ml_collections
import numpy as np
from PIL import Image

from recap_jax.errors import ConfigError


def clip_eval_config(folder: str, *, field: str = "eval.clip", batch_size: int = 16,
                     dtype: str = "float32") -> ml_collections.ConfigDict:
    """The CLIP evaluator's `model`/`mesh` fields for `folder`: a HF CLIPModel folder (its config.json
    has a `vision_config`) or a train_clip workdir (its config.json is the run's config)."""
    path = os.path.join(folder or "", "config.json")
    if not folder or not os.path.isfile(path):
        raise ConfigError(f"{field}: {folder or '(empty)'} has no config.json (a HF CLIPModel folder or a "
                          "train_clip workdir is expected)")
    with open(path) as f:
        hf = "vision_config" in json.load(f)
    return ml_collections.ConfigDict(dict(
        model=dict(checkpoint="" if hf else folder, hf_dir=folder if hf else "", dtype=dtype),
        tokenizer="", text_length=0, batch_size=batch_size, mesh=dict(data=-1, fsdp=1, tensor=1)))


def load_clip_encoders(folder: str, *, field: str = "eval.clip", batch_size: int = 16):
    """`clip.evaluate.Encoders` (normalised embeddings) of the CLIP model in `folder`."""
    import jax

    from recap_jax.clip import model_loading
    # A batch the mesh's batch axes divide: round up to a multiple of the device count.
    devices = jax.device_count()
    config = clip_eval_config(folder, field=field, batch_size=-(-batch_size // devices) * devices)
    try:
        return model_loading.build_encoders(config)
    except ConfigError as e:
        raise ConfigError(f"{field}: {folder}: {e}") from None
    except ValueError as e:  # the tokenizer's "not a local tokenizer folder"
        raise ConfigError(f"{field}: {folder}: {e}") from None


def _resized(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 NHWC -> uint8 [n, size, size, 3] with the CLIP evaluator's resize and centre crop."""
    from recap_jax.clip.data import resize_center_crop
    if images.shape[1:3] == (size, size):
        return images
    return np.stack([resize_center_crop(Image.fromarray(image), size) for image in images])


def image_embeddings(encoders, images: np.ndarray) -> np.ndarray:
    """[n, D] normalised CLIP image embeddings of uint8 NHWC images."""
    from recap_jax.clip.evaluate import _pad_to
    out = []
    for start in range(0, len(images), encoders.batch_size):
        chunk = _resized(np.asarray(images[start:start + encoders.batch_size]), encoders.image_size)
        out.append(np.asarray(encoders.encode_images(_pad_to(chunk, encoders.batch_size)))[:len(chunk)])
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, 0))


def clip_scores(encoders, images: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
    """Per image: 100 x max(cos(image, its prompt), 0)."""
    from recap_jax.clip.evaluate import encode_texts
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
    return scores_from_embeddings(image_embeddings(encoders, images), encode_texts(encoders, list(prompts)))


def scores_from_embeddings(image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
    """100 x max(cos, 0) of matching rows (the embeddings are normalised again here)."""
    image_emb = image_emb / np.maximum(np.linalg.norm(image_emb, axis=-1, keepdims=True), 1e-12)
    text_emb = text_emb / np.maximum(np.linalg.norm(text_emb, axis=-1, keepdims=True), 1e-12)
    return 100.0 * np.maximum(np.sum(image_emb * text_emb, axis=-1), 0.0)
