"""Runs every configured dataset of the suite on one model's encoders; a dataset whose paths the
user left unset is skipped with a line; a path that is set but not there is a ConfigError."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections

from recap_jax.clip import evaluate, model_loading
from recap_jax.clip.suite import imagenet, report, retrieval_sets, vg_attribute
from recap_jax.errors import ConfigError

DATASETS = ("imagenet", "coco", "flickr", "urban1k", "vg_attribute")


# The path fields of each dataset (all of them set: it runs; none: it is skipped).
PATH_FIELDS = {"imagenet": ("folder",), "coco": ("annotations", "images"), "flickr": ("annotations", "images"),
               "urban1k": ("folder",), "vg_attribute": ("folder",)}


def unset_reason(config: ml_collections.ConfigDict, name: str) -> str | None:
    """Why dataset `name` is skipped (the user set none of its paths), or None if it runs.

    ConfigError naming the field for a path that is set but not there, or a dataset set in part:
    a typo must not turn into a silently skipped row.
    """
    fields = PATH_FIELDS[name]
    values = {field: config[name].get(field, "") for field in fields}
    if not any(values.values()):
        return f"{'/'.join(f'{name}.{field}' for field in fields)} not set"
    for field, value in values.items():
        if not value:
            others = ", ".join(f"{name}.{f}" for f, v in values.items() if v)
            raise ConfigError(f"{name}.{field}: not set, but {others} is; set both or neither")
        if not os.path.exists(value):
            raise ConfigError(f"{name}.{field}={value}: does not exist")
    return None


def check_paths(config: ml_collections.ConfigDict) -> dict[str, str]:
    """{dataset: why skipped} of the datasets left unset; ConfigError for a wrong path (see
    `unset_reason`). Run before loading the model."""
    reasons = {name: unset_reason(config, name) for name in DATASETS}
    return {name: reason for name, reason in reasons.items() if reason}


def _runners(config: ml_collections.ConfigDict, encoders: evaluate.Encoders) -> dict[str, Callable]:
    c = config
    return {
        "imagenet": lambda: imagenet.evaluate_zero_shot(
            encoders, c.imagenet.folder, templates=c.imagenet.templates, split=c.imagenet.split,
            max_images=c.imagenet.max_images),
        "coco": lambda: retrieval_sets.evaluate_sets(
            encoders, *retrieval_sets.read_karpathy(c.coco.annotations, c.coco.images, c.coco.split, "coco"),
            field="coco"),
        "flickr": lambda: retrieval_sets.evaluate_sets(
            encoders, *retrieval_sets.read_karpathy(c.flickr.annotations, c.flickr.images, c.flickr.split, "flickr"),
            field="flickr"),
        "urban1k": lambda: retrieval_sets.evaluate_sets(
            encoders, *retrieval_sets.read_urban1k(c.urban1k.folder), field="urban1k", count_truncated=True),
        "vg_attribute": lambda: vg_attribute.evaluate_attribution(
            encoders, c.vg_attribute.folder, min_pair_count=c.vg_attribute.min_pair_count),
    }


def describe(name: str, m: dict[str, Any]) -> str:
    """One progress line per dataset."""
    if name == "imagenet":
        return (f"imagenet: {m['num_images']} images, {m['num_classes']} classes x {m['num_templates']} templates: "
                f"top1 {100 * m['top1']:.1f} top5 {100 * m['top5']:.1f}")
    if name == "vg_attribute":
        return (f"vg_attribute: {m['num_cases']} cases, {m['num_pairs']} attribute pairs: macro accuracy "
                f"{100 * m['macro_accuracy']:.1f}, accuracy {100 * m['accuracy']:.1f}")
    line = f"{name}: {m['num_images']} images, {m['num_texts']} captions: {evaluate.format_recalls(m)}"
    if "num_truncated" in m:
        line += (f" | {m['num_truncated']} of {m['num_texts']} captions cut to {m['text_length']} tokens "
                 f"(longest {m['max_caption_tokens']}, mean {m['mean_caption_tokens']:.0f})")
    return line


def run_suite(config: ml_collections.ConfigDict, encoders: evaluate.Encoders,
              log: Callable[[str], None] = print) -> tuple[dict[str, dict], dict[str, str], list[str]]:
    """(results per dataset, skipped {dataset: reason}, notes for the report)."""
    results, skipped, notes = {}, {}, []
    for name, runner in _runners(config, encoders).items():
        reason = unset_reason(config, name)
        if reason:
            skipped[name] = reason
            log(f"skipped {name}: {reason}")
            continue
        results[name] = runner()
        log(describe(name, results[name]))
    if "urban1k" in results and results["urban1k"]["num_truncated"]:
        m = results["urban1k"]
        notes.append(f"Urban-1K: {m['num_truncated']} of {m['num_texts']} captions were cut to the model's "
                     f"{m['text_length']}-token text length")
    if "vg_attribute" in results and not results["vg_attribute"]["num_pairs"]:
        notes.append("VG-Attr: no attribute pair has vg_attribute.min_pair_count cases; no macro accuracy")
    return results, skipped, notes


def evaluate_model(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The eval_suite command: the model of `config.model` on every configured dataset; writes the
    report under `config.output_dir` (process 0). Returns {"results", "skipped", "notes", "paths"}."""
    check_paths(config)  # a wrong path is named before the model loads
    encoders = model_loading.build_encoders(config)
    first = jax.process_index() == 0
    results, skipped, notes = run_suite(config, encoders, log=lambda line: print(line, flush=True) if first else None)
    paths = {}
    if config.output_dir and first:
        name = config.name or config.model.checkpoint or config.model.hf_dir
        paths = report.write(config.output_dir, name, results, skipped, notes)
        with open(paths["markdown"]) as f:
            print(f.read(), flush=True)
    return {"results": results, "skipped": skipped, "notes": notes, "paths": paths}
