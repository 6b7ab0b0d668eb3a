"""Image-text retrieval sets from their release layouts, evaluated with CLIP_benchmark's recall.

- COCO 2014 / Flickr30K, Karpathy split JSON (`dataset_coco.json`, `dataset_flickr30k.json`):
  `{"images": [{"filepath"?, "filename", "split", "sentences": [{"raw": ...}, ...]}, ...]}`;
  images under `images_root/filepath/filename` (COCO: `val2014/`) or `images_root/filename`
  (Flickr30K: the `flickr30k-images` folder). Every caption of a test image is used.
- Urban-1K (Long-CLIP's release): `image/<name>.jpg` + `caption/<name>.txt`, one long caption
  each. Captions longer than the text length are cut (keeping the EOS); how many is reported.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np

from recap_jax.clip import evaluate
from recap_jax.clip.suite.images import ImageFiles, is_image_file, missing_files
from recap_jax.errors import ConfigError


def read_karpathy(annotations: str, images_root: str, split: str = "test",
                  field: str = "coco") -> tuple[list[str], list[list[str]]]:
    """(image paths, captions per image) of one split of a Karpathy JSON."""
    with open(annotations) as f:
        data = json.load(f)
    if not isinstance(data, dict) or "images" not in data:
        raise ConfigError(f"{field}.annotations: {annotations} is not a Karpathy split JSON (no 'images' list)")
    paths, captions = [], []
    for entry in data["images"]:
        if entry.get("split") != split:
            continue
        paths.append(os.path.join(images_root, entry.get("filepath", ""), entry["filename"]))
        captions.append([s["raw"].strip() for s in entry["sentences"] if s["raw"].strip()])
    if not paths:
        raise ConfigError(f"{field}.split: no image of split {split!r} in {annotations}")
    return paths, captions


def read_urban1k(folder: str) -> tuple[list[str], list[list[str]]]:
    """(image paths, [caption] per image) of an Urban-1K folder (image/ + caption/)."""
    image_dir, caption_dir = os.path.join(folder, "image"), os.path.join(folder, "caption")
    if not os.path.isdir(image_dir) or not os.path.isdir(caption_dir):
        raise ConfigError(f"urban1k.folder: {folder} needs image/ and caption/ subfolders")
    paths, captions = [], []
    for name in sorted(os.listdir(image_dir)):
        if not is_image_file(name):
            continue
        caption_file = os.path.join(caption_dir, os.path.splitext(name)[0] + ".txt")
        if not os.path.exists(caption_file):
            raise ConfigError(f"urban1k.folder: {caption_file} is missing (one caption file per image)")
        with open(caption_file, encoding="utf-8") as f:
            captions.append([f.read().strip()])
        paths.append(os.path.join(image_dir, name))
    return paths, captions


def token_lengths(tokenizer: Any, texts: list[str]) -> np.ndarray:
    """Tokens per text with BOS/EOS, before any truncation."""
    ids = tokenizer.hf(list(texts), add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_id
    return np.array([len(s) + (0 if s and s[-1] == eos else 1) for s in ids])


def evaluate_sets(encoders: evaluate.Encoders, paths: list[str], captions: list[list[str]], *,
                  field: str, count_truncated: bool = False) -> dict[str, float]:
    """Recall@1/5/10 both ways (evaluate.retrieval_recalls, CLIP_benchmark's definitions)."""
    start = time.time()
    absent = missing_files(paths)
    if absent:
        raise ConfigError(f"{field}: image files are missing, e.g. {absent}")
    texts = [c for caps in captions for c in caps]
    text_to_image = np.repeat(np.arange(len(paths)), [len(c) for c in captions])
    image_emb, _ = evaluate.encode_image_dataset(encoders, ImageFiles(paths))
    text_emb = evaluate.encode_texts(encoders, texts)
    metrics = evaluate.retrieval_recalls(image_emb, text_emb, text_to_image)
    metrics.update(num_images=len(paths), num_texts=len(texts), text_length=encoders.text_length,
                   seconds=time.time() - start)
    if count_truncated:
        lengths = token_lengths(encoders.tokenizer, texts)
        metrics.update(num_truncated=int((lengths > encoders.text_length).sum()),
                       max_caption_tokens=int(lengths.max()), mean_caption_tokens=float(lengths.mean()))
    return metrics
