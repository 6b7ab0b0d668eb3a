"""The Recap-DiT half's report: a Table 7-shaped table (rows = p, columns per prompt set), the
GenEval-mini tasks, the judge's accuracy, findings lines, a plot against p and a sample grid.

The findings compare measured numbers with the paper's direction; nothing here decides them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recap_jax.mini_paper.geneval import TASKS

SETS = (("raw", "Raw"), ("recap", "Recap"))
COLUMNS = tuple(f"{label} {metric}" for _, label in SETS for metric in ("FID", "CLIP", "GenEval"))
BAR = 0.95  # the judge's per-attribute accuracy on real held-out scenes below which scores are unreliable


def row_numbers(scores: dict[str, Any]) -> dict[str, float]:
    """One row: FID-analogue, CLIP score and GenEval-mini overall (%) per prompt set."""
    out = {}
    for key, label in SETS:
        s = scores[key]
        out[f"{label} FID"] = s.get("fid", float("nan"))
        out[f"{label} CLIP"] = s["clip_score"]
        out[f"{label} GenEval"] = 100 * s["overall"]
    return out


def used_attributes() -> set[str]:
    """The judge attributes GenEval-mini's clauses read (`small_shape` only through alt-text's
    "some object" clauses, as a second chance; see geneval.py)."""
    return {"colour", "shape", "position", "background", "small_count", "small_colour"}


def reliability(accuracy: dict[str, float]) -> str:
    weak = [k for k in sorted(used_attributes()) if not accuracy[k] >= BAR]
    reads = ", ".join(f"{k} {100 * v:.1f}%" for k, v in accuracy.items())
    verdict = ("scores RELIABLE (every attribute the clauses read >= 95%)" if not weak
               else f"scores UNRELIABLE: {', '.join(weak)} below 95%")
    return f"Judge accuracy on the real held-out scenes: {reads}; {verdict}."


def markdown_table(rows: dict[str, dict[str, float]]) -> str:
    lines = ["| p (original caption) | " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
    for name, numbers in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{numbers[c]:.1f}" for c in COLUMNS) + " |")
    return "\n".join(lines)


def task_table(results: dict[str, Any]) -> str:
    """GenEval-mini per task (%) with the Recap prompts, each row's and the real images'."""
    lines = ["| Recap prompts | " + " | ".join(TASKS) + " | overall |", "|---|" + "---:|" * (len(TASKS) + 1)]
    entries = [(name, s["recap"]) for name, s in results["rows"].items()] + [("real images", results["real"]["recap"])]
    for name, s in entries:
        cells = [f"{100 * s['tasks'][t]['score']:.1f}" if t in s["tasks"] else "-" for t in TASKS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {100 * s['overall']:.1f} |")
    return "\n".join(lines)


def findings(rows: dict[str, dict[str, float]], num_prompts: int) -> list[str]:
    """Table 7's direction: prompt following and CLIP score rise as p falls; with raw prompts the
    FID gains are small (the paper: Recap FID 36.2 -> 27.8, Raw 32.5 -> 37.6 from p = 1 to 0).
    Prompt following must rise by more than two binomial standard errors (of `num_prompts` images)."""
    if "1.0" not in rows or "0.0" not in rows:
        return []
    one, zero, out = rows["1.0"], rows["0.0"], []
    key = "Recap GenEval"
    m = min(max(one[key] / 100, 0.0), 1.0)
    margin = 200 * (m * (1 - m) / max(num_prompts, 1)) ** 0.5
    out.append(f"prompt following (GenEval-mini) with Recap prompts rises from p = 1.0 to p = 0.0 (paper: yes): "
               f"{'REPRODUCED' if zero[key] - one[key] > margin else 'NOT reproduced'}: "
               f"{one[key]:.1f} -> {zero[key]:.1f} (two standard errors: {margin:.1f})")
    key = "Recap CLIP"
    out.append(f"CLIP score with Recap prompts rises from p = 1.0 to p = 0.0 (paper: 29.3 -> 32.5): "
               f"{'REPRODUCED' if zero[key] > one[key] else 'NOT reproduced'}: {one[key]:.1f} -> {zero[key]:.1f}")
    recap_gain, raw_gain = one["Recap FID"] - zero["Recap FID"], one["Raw FID"] - zero["Raw FID"]
    out.append(f"With Raw prompts the FID gain from p = 1.0 to 0.0 is smaller than with Recap prompts "
               f"(paper: -5.1 vs 8.4): {'REPRODUCED' if raw_gain < recap_gain else 'NOT reproduced'}: "
               f"Raw {raw_gain:+.1f}, Recap {recap_gain:+.1f} (lower FID is better; gain = FID(1.0) - FID(0.0))")
    return out


def plot(rows: dict[str, dict[str, float]], path: str) -> None:
    """GenEval-mini and CLIP score (left axis) and the FID-analogue (right) against p."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ps = sorted((float(k), k) for k in rows)
    x = [p for p, _ in ps]
    fig, ax = plt.subplots(figsize=(6, 4))
    right = ax.twinx()
    for column in COLUMNS:
        target, style = (right, "--") if column.endswith("FID") else (ax, "-")
        target.plot(x, [rows[k][column] for _, k in ps], style, marker="o", label=column)
    ax.set_xlabel("p (probability of the original alt-text)")
    ax.set_ylabel("GenEval-mini overall (%), CLIP score")
    right.set_ylabel("FID-analogue (dashed; judge features)")
    ax.set_title("Recap-DiT in miniature")
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def grid(images: dict[str, np.ndarray], path: str, zoom: int = 2) -> None:
    """One row of samples per p (same prompts and seeds), real images of the prompts' scenes first."""
    from PIL import Image

    order = ["real"] + sorted((k for k in images if k != "real"), key=float, reverse=True)
    rows = [np.concatenate(list(images[k]), axis=1) for k in order]
    picture = Image.fromarray(np.concatenate(rows, axis=0))
    picture.resize((picture.width * zoom, picture.height * zoom), Image.NEAREST).save(path)
