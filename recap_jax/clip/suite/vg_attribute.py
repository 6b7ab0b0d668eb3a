"""VG-Attribution (ARO, Yuksekgonul et al. 2023): does the image crop match its true caption
("the white dog and the black cat") better than the swapped one ("the black dog and ...")?

Release layout: `visual_genome_attribution.json` (a list of {"image_path", "bbox_x", "bbox_y",
"bbox_w", "bbox_h", "true_caption", "false_caption", "attributes": [a1, a2]}) and `images/`.
As in ARO, each image is cropped to its box and a tie counts as wrong. ARO reports per attribute
pair (pairs with at least 25 cases); `macro_accuracy` is the mean over those pairs (the number
ARO's script prints and papers quote), `accuracy` the mean over all cases.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from recap_jax.clip import evaluate
from recap_jax.clip.suite.images import ImageFiles, missing_files
from recap_jax.errors import ConfigError

ANNOTATIONS = "visual_genome_attribution.json"


def read(folder: str) -> list[dict]:
    path = os.path.join(folder, ANNOTATIONS)
    if not os.path.exists(path):
        raise ConfigError(f"vg_attribute.folder: {path} is missing (ARO's annotation file)")
    with open(path) as f:
        cases = json.load(f)
    if not isinstance(cases, list) or not cases or "true_caption" not in cases[0]:
        raise ConfigError(f"vg_attribute.folder: {path} is not ARO's list of true/false caption cases")
    return cases


def accuracies(true_scores: np.ndarray, false_scores: np.ndarray, pairs: list[str],
               min_pair_count: int = 25) -> dict[str, float]:
    """Micro accuracy, and the macro mean over attribute pairs with >= min_pair_count cases."""
    correct = np.asarray(true_scores) > np.asarray(false_scores)  # argmax picks the false one on a tie
    pairs_arr = np.asarray(pairs)
    per_pair = [correct[pairs_arr == p].mean() for p in np.unique(pairs_arr) if (pairs_arr == p).sum() >= min_pair_count]
    return {"accuracy": float(correct.mean()),
            "macro_accuracy": float(np.mean(per_pair)) if per_pair else float("nan"),
            "num_pairs": len(per_pair), "num_cases": int(len(correct))}


def evaluate_attribution(encoders: evaluate.Encoders, folder: str, *, min_pair_count: int = 25,
                         max_cases: int = 0) -> dict[str, float]:
    start = time.time()
    cases = read(folder)[:max_cases or None]
    paths = [os.path.join(folder, "images", c["image_path"]) for c in cases]
    absent = missing_files(paths)
    if absent:
        raise ConfigError(f"vg_attribute.folder: image files are missing, e.g. {absent}")
    boxes = [(c["bbox_x"], c["bbox_y"], c["bbox_w"], c["bbox_h"]) for c in cases]
    image_emb, _ = evaluate.encode_image_dataset(encoders, ImageFiles(paths, boxes))
    true_emb = evaluate.encode_texts(encoders, [c["true_caption"] for c in cases])
    false_emb = evaluate.encode_texts(encoders, [c["false_caption"] for c in cases])
    pairs = [f"{c['attributes'][0]}_{c['attributes'][1]}" for c in cases]
    metrics = accuracies((image_emb * true_emb).sum(-1), (image_emb * false_emb).sum(-1), pairs, min_pair_count)
    metrics["seconds"] = time.time() - start
    return metrics
