"""The evaluation command's work (`python -m recap_jax.eval_retrieval`): the model of an eval
config (model_loading) scored on its retrieval and zero-shot datasets (evaluate)."""

from __future__ import annotations

import json
from typing import Any

import jax
import ml_collections

from recap_jax.clip import model_loading
from recap_jax.clip.evaluate import evaluate_retrieval, evaluate_zero_shot, format_recalls
from recap_jax.errors import ConfigError


def evaluate_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Evaluates every dataset of an eval config (configs/clip_eval.py); returns {dataset: metrics}."""
    encoders = model_loading.build_encoders(config)
    results: dict[str, Any] = {}
    for name, d in config.datasets.items():
        if not d.folder:
            continue
        metrics = evaluate_retrieval(
            encoders, d.folder, split=d.split, caption_fields=[f for f in d.caption_fields.split(",") if f],
            image_field=d.image_field, max_images=d.max_images, field_prefix=f"datasets.{name}")
        results[name] = metrics
        print(f"{name} [{d.folder}:{d.split}] {metrics['num_images']} images, {metrics['num_texts']} texts: "
              f"{format_recalls(metrics)}", flush=True)
    z = config.zeroshot
    if z.folder:
        metrics = evaluate_zero_shot(
            encoders, z.folder, split=z.split, label_field=z.label_field,
            classnames=[c.strip() for c in z.classnames.split(",") if c.strip()] or None,
            templates=[t for t in z.templates.split("|") if t], image_field=z.image_field,
            max_images=z.max_images)
        results["zeroshot"] = metrics
        print(f"zero-shot [{z.folder}:{z.split}] {metrics['num_images']} images: "
              f"top1 {100 * metrics['top1']:.1f} top5 {100 * metrics['top5']:.1f}", flush=True)
    if not results:
        raise ConfigError("datasets.*.folder / zeroshot.folder: nothing to evaluate; set a folder")
    if config.output and jax.process_index() == 0:
        with open(config.output, "w") as f:
            json.dump(results, f, indent=2)
    return results
