"""ImageNet-1K zero-shot top-1 / top-5 with CLIP's class names and its 80 prompt templates.

The names and templates are those CLIP_benchmark ships (`imagenet_prompts.json` beside this
file says where they were copied from). The validation set is read either as an ImageFolder
(`val/<wnid>/*.JPEG`: the 1000 synset folders in sorted order are the class indices, as in the
standard ILSVRC-2012 label order) or as a TFDS `imagenet2012` folder in ArrayRecord format
(split `validation`, ClassLabel `label`).
"""

from __future__ import annotations

import functools
import json
import os
import time

import numpy as np

from recap_jax.clip import data as data_lib, evaluate
from recap_jax.clip.suite.images import ImageFiles, is_image_file
from recap_jax.errors import ConfigError

NUM_CLASSES = 1000
PROMPTS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet_prompts.json")
TEMPLATE_SETS = ("openai", "simple")


@functools.cache
def prompts() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(1000 class names, 80 templates with '{}' for the class name)."""
    with open(PROMPTS_FILE, encoding="utf-8") as f:
        data = json.load(f)
    return tuple(data["classnames"]), tuple(t.replace("{c}", "{}") for t in data["templates"])


def templates_for(name: str) -> tuple[str, ...]:
    if name not in TEMPLATE_SETS:
        raise ConfigError(f"imagenet.templates: {name!r} is not one of {TEMPLATE_SETS}")
    return prompts()[1] if name == "openai" else ("a photo of a {}.",)


def read_image_folder(folder: str) -> tuple[list[str], np.ndarray]:
    """(image paths, labels) of `folder/val/<wnid>/*` (or `folder/<wnid>/*`)."""
    root = os.path.join(folder, "val") if os.path.isdir(os.path.join(folder, "val")) else folder
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if len(classes) != NUM_CLASSES:
        raise ConfigError(f"imagenet.folder: {root} has {len(classes)} class folders; ImageNet-1K's "
                          f"validation set has {NUM_CLASSES} (val/<wnid>/*.JPEG)")
    paths, labels = [], []
    for label, wnid in enumerate(classes):
        for name in sorted(os.listdir(os.path.join(root, wnid))):
            if is_image_file(name):
                paths.append(os.path.join(root, wnid, name))
                labels.append(label)
    if not paths:
        raise ConfigError(f"imagenet.folder: no images under {root}/<wnid>/")
    return paths, np.asarray(labels)


def is_tfds_folder(folder: str) -> bool:
    return os.path.exists(os.path.join(folder, "dataset_info.json"))


def evaluate_zero_shot(encoders: evaluate.Encoders, folder: str, *, templates: str = "openai",
                       split: str = "validation", max_images: int = 0) -> dict[str, float]:
    """Top-1 / top-5 accuracy (evaluate.classification_accuracy) over the validation images."""
    start = time.time()
    classnames, _ = prompts()
    if is_tfds_folder(folder):
        source = data_lib.open_tfds_folder(folder, split, field="imagenet.folder")
        image_emb, labels = evaluate.encode_image_dataset(
            encoders, source, max_images=max_images, keep=lambda r: int(r["label"]))
    else:
        paths, labels = read_image_folder(folder)
        if max_images:
            paths, labels = paths[:max_images], labels[:max_images]
        image_emb, _ = evaluate.encode_image_dataset(encoders, ImageFiles(paths))
    chosen = templates_for(templates)
    class_emb = evaluate.class_embeddings(encoders, classnames, chosen)
    metrics = evaluate.classification_accuracy(image_emb, class_emb, np.asarray(labels))
    metrics.update(num_images=len(labels), num_classes=len(classnames), num_templates=len(chosen),
                   seconds=time.time() - start)
    return metrics
