"""The analysis plots (PNG, matplotlib): length histograms, word-rank curves, score scatter.

matplotlib is the `plots` extra: `pyplot(command)` imports it, or says which extra to install."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from recap_jax.analysis.stats import Accumulator, histogram_arrays
from recap_jax.errors import UserError

PLOTS_EXTRA = "pip install 'recap_jax[plots]'"

LABELS = {"org": "original (alt-text)", "re": "recaption"}
COLOURS = {"org": "#888888", "re": "#1f77b4"}


def pyplot(command: str) -> Any:
    """matplotlib.pyplot drawing to files (Agg); a UserError naming the extra when it is missing."""
    try:
        import matplotlib  # the [plots] extra: only the figures need it
    except ImportError:
        raise UserError(f"{command} draws its plots with matplotlib, which is not installed: {PLOTS_EXTRA}") from None
    matplotlib.use("Agg")  # files only; no display on pods or in CI
    import matplotlib.pyplot
    return matplotlib.pyplot


def _finish(fig, ax, xlabel: str, ylabel: str, path: str) -> str:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ax.get_legend_handles_labels()[0]:  # an empty dataset draws no line to label
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot("analyze").close(fig)
    return path


def _lengths(hists, unit: str, path: str) -> str:
    fig, ax = pyplot("analyze").subplots(figsize=(7, 4))
    for side in ("org", "re"):
        lengths, counts = histogram_arrays(hists[side])
        if len(lengths):
            mean = float(np.sum(lengths * counts) / counts.sum())
            ax.bar(lengths, counts / counts.sum(), width=1.0, alpha=0.55, color=COLOURS[side],
                   label=f"{LABELS[side]} (mean {mean:.2f})")
    return _finish(fig, ax, f"caption length ({unit})", "share of captions", path)


def _word_rank(acc: Accumulator, path: str) -> str:
    fig, ax = pyplot("analyze").subplots(figsize=(7, 4))
    for side in ("org", "re"):
        counts = np.array(sorted(acc.vocab[side].values(), reverse=True), dtype=np.float64)
        if len(counts):
            ax.loglog(np.arange(1, len(counts) + 1), counts / counts.sum(), color=COLOURS[side],
                      label=f"{LABELS[side]} ({len(counts)} distinct words)")
    return _finish(fig, ax, "word rank", "word frequency", path)


def _scatter(acc: Accumulator, path: str) -> str:
    pairs = np.array([pair for _, pair in acc.score_pairs.items()], dtype=np.float64)
    fig, ax = pyplot("analyze").subplots(figsize=(5, 5))
    ax.scatter(pairs[:, 1], pairs[:, 0], s=6, alpha=0.5, color=COLOURS["re"])
    lo, hi = float(pairs.min()), float(pairs.max())
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.8, label="equal scores")
    return _finish(fig, ax, "CLIP score of the original caption", "CLIP score of the recaption", path)


def write_plots(acc: Accumulator, folder: str) -> dict[str, str]:
    """PNG files under `folder`; returns {name: file name} of those that had data."""
    out = {"word_lengths": os.path.basename(_lengths(acc.word_lengths, "words", os.path.join(folder, "word_lengths.png"))),
           "word_rank": os.path.basename(_word_rank(acc, os.path.join(folder, "word_rank.png")))}
    if any(acc.token_lengths[s] for s in ("org", "re")):
        out["token_lengths"] = os.path.basename(
            _lengths(acc.token_lengths, "tokens", os.path.join(folder, "token_lengths.png")))
    if acc.score_pairs.items():
        out["clip_scores"] = os.path.basename(_scatter(acc, os.path.join(folder, "clip_scores.png")))
    return out
