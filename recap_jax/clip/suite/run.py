"""Runs every configured dataset of the suite on one model's encoders; a dataset whose paths are
not set or not there is skipped with a line, never a crash."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax
import ml_collections

from recap_jax.clip import evaluate, model_loading
from recap_jax.clip.suite import imagenet, report, retrieval_sets, vg_attribute

def _missing(cfg: ml_collections.ConfigDict, name: str, fields: tuple[str, ...]) -> str | None:
    """Why `name` cannot run (a field unset or a path absent), or None."""
    for field in fields:
        value = cfg[field]
        if not value:
            return f"{name}.{field} is not set"
        if not os.path.exists(value):
            return f"{name}.{field}={value} does not exist"
    return None


def _runners(config: ml_collections.ConfigDict, encoders: evaluate.Encoders) -> dict[str, tuple[tuple[str, ...], Callable]]:
    c = config
    return {
        "imagenet": (("folder",), lambda: imagenet.evaluate_zero_shot(
            encoders, c.imagenet.folder, templates=c.imagenet.templates, split=c.imagenet.split,
            max_images=c.imagenet.max_images)),
        "coco": (("annotations", "images"), lambda: retrieval_sets.evaluate_sets(
            encoders, *retrieval_sets.read_karpathy(c.coco.annotations, c.coco.images, c.coco.split, "coco"),
            field="coco")),
        "flickr": (("annotations", "images"), lambda: retrieval_sets.evaluate_sets(
            encoders, *retrieval_sets.read_karpathy(c.flickr.annotations, c.flickr.images, c.flickr.split, "flickr"),
            field="flickr")),
        "urban1k": (("folder",), lambda: retrieval_sets.evaluate_sets(
            encoders, *retrieval_sets.read_urban1k(c.urban1k.folder), field="urban1k", count_truncated=True)),
        "vg_attribute": (("folder",), lambda: vg_attribute.evaluate_attribution(
            encoders, c.vg_attribute.folder, min_pair_count=c.vg_attribute.min_pair_count)),
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
    for name, (fields, runner) in _runners(config, encoders).items():
        reason = _missing(config[name], name, fields)
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
