"""The miniature paper's report: a Table 3-shaped Markdown table, a plot against p, the findings.

The findings compare measured numbers with the paper's claims; nothing here decides what the
numbers should be.
"""

from __future__ import annotations

from typing import Any

from recap_jax.analysis.plots import pyplot

RETRIEVAL = (("true", "image_to_text/R@1"), ("true", "text_to_image/R@1"),
             ("alt", "image_to_text/R@1"), ("alt", "text_to_image/R@1"))
HEADERS = ("true I->T R@1", "true T->I R@1", "alt I->T R@1", "alt T->I R@1")


def row_numbers(metrics: dict[str, Any]) -> dict[str, float]:
    """Percentages of one row: zero-shot top-1, the four retrieval R@1, their mean, R@5s."""
    out = {"zero-shot top1": 100 * metrics["zeroshot"]["top1"]}
    for (name, key), header in zip(RETRIEVAL, HEADERS):
        out[header] = 100 * metrics[name][key]
        out[header.replace("R@1", "R@5")] = 100 * metrics[name][key.replace("R@1", "R@5")]
    out["retrieval mean R@1"] = sum(out[h] for h in HEADERS) / len(HEADERS)
    return out


def markdown_table(rows: dict[str, dict[str, float]]) -> str:
    columns = ("zero-shot top1",) + HEADERS + ("retrieval mean R@1",)
    lines = ["| p (original caption) | " + " | ".join(columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for name, numbers in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{numbers[c]:.1f}" for c in columns) + " |")
    return "\n".join(lines)


def noise_note(rows: dict[str, dict[str, float]], num_images: int, num_classes: int) -> str:
    """Chance levels and the binomial standard error of an R@1 near p = 1.0's, for reading the table."""
    base = rows.get("1.0") or next(iter(rows.values()))
    m = base["retrieval mean R@1"] / 100
    se = 100 * (m * (1 - m) / max(num_images, 1)) ** 0.5
    return (f"Chance: R@1 = {100 / num_images:.1f}% with the true descriptions (alt-text-style queries are shared by "
            f"several images), zero-shot top-1 = {100 / num_classes:.1f}%. Binomial standard error of one R@1 "
            f"near p = 1.0's mean: {se:.1f} points; differences below ~2 standard errors are noise.")


def findings(rows: dict[str, dict[str, float]]) -> list[str]:
    """The paper's findings (Table 3 / Section 5), each with what the miniature measured."""
    base = rows.get("1.0")
    out = []
    if base is None:
        return out
    mixes = {k: v for k, v in rows.items() if k in ("0.8", "0.5", "0.2")}
    mean = "retrieval mean R@1"
    better = [k for k, v in mixes.items() if v[mean] > base[mean]]
    if mixes:
        out.append(f"Recaption mixes beat p = 1.0 on retrieval (paper: yes): "
                   f"{'REPRODUCED' if better else 'NOT reproduced'}: p=1.0 mean R@1 {base[mean]:.1f}; "
                   + ", ".join(f"p={k} {v[mean]:.1f}" for k, v in mixes.items()))
    if "0.0" in rows:
        zero, top = rows["0.0"], "zero-shot top1"
        out.append(f"Recaptions only (p = 0.0) lose zero-shot classification vs p = 1.0 (paper: 69.7 -> 36.0): "
                   f"{'REPRODUCED' if zero[top] < base[top] else 'NOT reproduced'}: "
                   f"{base[top]:.1f} -> {zero[top]:.1f}")
    if "concat" in rows and mixes:
        best = max(mixes.values(), key=lambda v: v[mean])
        out.append(f"Concatenating both captions is worse than sampling a mix (paper: yes): "
                   f"{'REPRODUCED' if rows['concat'][mean] < best[mean] else 'NOT reproduced'}: "
                   f"concat {rows['concat'][mean]:.1f} vs best mix {best[mean]:.1f}")
    return out


def plot(rows: dict[str, dict[str, float]], path: str) -> None:
    """Retrieval and zero-shot classification against p (concat as a dashed line)."""
    plt = pyplot("reproduce")
    ps = sorted((float(k), k) for k in rows if k != "concat")
    fig, ax = plt.subplots(figsize=(6, 4))
    for column in HEADERS + ("zero-shot top1",):
        line = ax.plot([p for p, _ in ps], [rows[k][column] for _, k in ps], marker="o", label=column)
        if "concat" in rows:
            ax.axhline(rows["concat"][column], linestyle="--", color=line[0].get_color(), alpha=0.5)
    ax.set_xlabel("p (probability of the original alt-text); dashed: concat")
    ax.set_ylabel("%")
    ax.set_title("Recap-CLIP in miniature")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
