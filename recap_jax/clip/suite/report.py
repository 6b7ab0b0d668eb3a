"""The suite's results as one JSON and one Markdown table with the paper's Table 3 / 6 columns."""

from __future__ import annotations

import json
import math
import os
from typing import Any

# (column, dataset, metric): R@1 for retrieval, top-1 for ImageNet, macro accuracy for VG-Attribution.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("IN-1K", "imagenet", "top1"),
    ("COCO I->T", "coco", "image_to_text/R@1"),
    ("COCO T->I", "coco", "text_to_image/R@1"),
    ("Flickr I->T", "flickr", "image_to_text/R@1"),
    ("Flickr T->I", "flickr", "text_to_image/R@1"),
    ("Urban-1K I->T", "urban1k", "image_to_text/R@1"),
    ("Urban-1K T->I", "urban1k", "text_to_image/R@1"),
    ("VG-Attr", "vg_attribute", "macro_accuracy"),
)


def table_row(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """{column: percent or None (dataset skipped)}."""
    row = {}
    for column, dataset, metric in COLUMNS:
        value = results.get(dataset, {}).get(metric)
        row[column] = None if value is None or (isinstance(value, float) and math.isnan(value)) else 100 * value
    return row


def markdown(name: str, row: dict[str, float | None], notes: list[str]) -> str:
    header = "| model | " + " | ".join(c for c, _, _ in COLUMNS) + " |"
    rule = "|---|" + "---|" * len(COLUMNS)
    cells = " | ".join("-" if row[c] is None else f"{row[c]:.1f}" for c, _, _ in COLUMNS)
    lines = [header, rule, f"| {name} | {cells} |"]
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write(output_dir: str, name: str, results: dict[str, dict[str, Any]], skipped: dict[str, str],
          notes: list[str]) -> dict[str, str]:
    """eval_suite.json (every metric) and eval_suite.md (the table) under output_dir."""
    os.makedirs(output_dir, exist_ok=True)
    row = table_row(results)
    paths = {"json": os.path.join(output_dir, "eval_suite.json"), "markdown": os.path.join(output_dir, "eval_suite.md")}
    with open(paths["json"], "w") as f:
        json.dump({"model": name, "table": row, "datasets": results, "skipped": skipped, "notes": notes}, f, indent=2)
    with open(paths["markdown"], "w") as f:
        f.write(markdown(name, row, notes + [f"skipped {k}: {v}" for k, v in skipped.items()]))
    return paths
