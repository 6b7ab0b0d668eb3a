"""Section 4 statistics as mergeable accumulators: lengths, vocabularies, flags, CLIP wins, samples.

Memory is constant in the number of rows: lengths are histograms (one count per length), the
vocabularies grow with distinct words only, samples are bottom-k by a hash of the key (the same
sample whatever the order or the sharding). Shards' accumulators merge exactly.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import heapq
import math
from typing import Any

import numpy as np

from recap_jax.analysis.health import FLAGS

SIDES = ("org", "re")
SCATTER_POINTS = 5000


def key_priority(key: str) -> int:
    """A stable pseudo-random rank of a sample (sampling must not depend on order or hosts)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


class BottomK:
    """The k items with the smallest priority seen so far."""

    def __init__(self, k: int, items: list[tuple[int, Any]] | None = None):
        self.k = k
        self._heap: list[tuple[int, str, Any]] = []  # max-heap via negated priority
        for priority, item in items or []:
            self.add(priority, item, str(item))

    def add(self, priority: int, item: Any, tiebreak: str = "") -> None:
        entry = (-priority, tiebreak, item)
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, entry)
        elif -self._heap[0][0] > priority:
            heapq.heapreplace(self._heap, entry)

    def would_keep(self, priority: int) -> bool:
        return len(self._heap) < self.k or -self._heap[0][0] > priority

    def items(self) -> list[tuple[int, Any]]:
        return sorted((-p, item) for p, _, item in self._heap)


def _hist_mean(hist: collections.Counter) -> float | None:
    n = sum(hist.values())
    return sum(k * v for k, v in hist.items()) / n if n else None


def _percentile(hist: collections.Counter, q: float) -> int | None:
    """Nearest-rank percentile: the smallest length that at least a share q of captions do not exceed."""
    n = sum(hist.values())
    if not n:
        return None
    cumulative, rank = 0, max(1, math.ceil(q * n))
    for length in sorted(hist):
        cumulative += hist[length]
        if cumulative >= rank:
            return length
    return max(hist)


@dataclasses.dataclass
class Accumulator:
    """Everything `analyze` gathers from rows; `to_json`/`from_json`/`merge` for sharded runs."""
    num_rows: int = 0
    word_lengths: dict[str, collections.Counter] = dataclasses.field(
        default_factory=lambda: {s: collections.Counter() for s in SIDES})
    token_lengths: dict[str, collections.Counter] = dataclasses.field(
        default_factory=lambda: {s: collections.Counter() for s in SIDES})
    vocab: dict[str, collections.Counter] = dataclasses.field(
        default_factory=lambda: {s: collections.Counter() for s in SIDES})
    flag_counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    flag_keys: dict[str, list[str]] = dataclasses.field(default_factory=lambda: {f: [] for f in FLAGS})
    org_empty: int = 0
    clip: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"scored": 0, "re_wins": 0.0, "org_wins": 0.0, "re_sum": 0.0, "org_sum": 0.0,
                                 "failed": 0})
    score_pairs: BottomK = dataclasses.field(default_factory=lambda: BottomK(SCATTER_POINTS))

    def add_lengths(self, side: str, words: int, tokens: int | None) -> None:
        self.word_lengths[side][words] += 1
        if tokens is not None:
            self.token_lengths[side][tokens] += 1

    def add_flags(self, key: str, flags: list[str], listed: int) -> None:
        for flag in flags:
            self.flag_counts[flag] += 1
            if len(self.flag_keys[flag]) < listed:
                self.flag_keys[flag].append(key)

    def add_scores(self, key: str, re_score: float, org_score: float) -> None:
        c = self.clip
        c["scored"] += 1
        c["re_sum"] += re_score
        c["org_sum"] += org_score
        if re_score > org_score:
            c["re_wins"] += 1
        elif org_score > re_score:
            c["org_wins"] += 1
        else:  # a tie counts half to each
            c["re_wins"] += 0.5
            c["org_wins"] += 0.5
        self.score_pairs.add(key_priority(key), [re_score, org_score], key)

    def merge(self, other: "Accumulator", listed: int) -> None:
        self.num_rows += other.num_rows
        for side in SIDES:
            self.word_lengths[side].update(other.word_lengths[side])
            self.token_lengths[side].update(other.token_lengths[side])
            self.vocab[side].update(other.vocab[side])
        self.flag_counts.update(other.flag_counts)
        for flag in FLAGS:
            self.flag_keys[flag] = (self.flag_keys[flag] + other.flag_keys[flag])[:listed]
        self.org_empty += other.org_empty
        for k, v in other.clip.items():
            self.clip[k] += v
        for priority, pair in other.score_pairs.items():
            self.score_pairs.add(priority, pair, str(pair))

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for field in ("word_lengths", "token_lengths", "vocab"):
            d[field] = {s: {str(k): v for k, v in c.items()} for s, c in getattr(self, field).items()}
        d["score_pairs"] = self.score_pairs.items()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Accumulator":
        out = cls(**{k: v for k, v in d.items() if k not in ("word_lengths", "token_lengths", "vocab",
                                                              "flag_counts", "score_pairs")})
        out.flag_counts = collections.Counter(d["flag_counts"])
        for priority, pair in d["score_pairs"]:
            out.score_pairs.add(priority, pair, str(pair))
        for field in ("word_lengths", "token_lengths"):
            setattr(out, field, {s: collections.Counter({int(k): v for k, v in c.items()})
                                 for s, c in d[field].items()})
        out.vocab = {s: collections.Counter(c) for s, c in d["vocab"].items()}
        return out

    def summary(self, top_words: int = 25) -> dict[str, Any]:
        """The statistics a person reads (analysis.json)."""
        out: dict[str, Any] = {"num_rows": self.num_rows, "org_empty": self.org_empty}
        for side in SIDES:
            words, tokens = self.word_lengths[side], self.token_lengths[side]
            out[f"{side}_words"] = {"mean": _hist_mean(words), "median": _percentile(words, 0.5),
                                    "p95": _percentile(words, 0.95), "max": max(words) if words else None}
            out[f"{side}_tokens"] = ({"mean": _hist_mean(tokens), "median": _percentile(tokens, 0.5),
                                      "p95": _percentile(tokens, 0.95), "max": max(tokens), "counted": sum(tokens.values())}
                                     if tokens else None)
            out[f"{side}_vocab_size"] = len(self.vocab[side])
            out[f"{side}_top_words"] = self.vocab[side].most_common(top_words)
        joint = set(self.vocab["org"]) | set(self.vocab["re"])
        out["joint_vocab_size"] = len(joint)
        out["re_share_of_joint_vocab"] = len(self.vocab["re"]) / len(joint) if joint else None
        out["org_share_of_joint_vocab"] = len(self.vocab["org"]) / len(joint) if joint else None
        out["flags"] = {f: self.flag_counts.get(f, 0) for f in FLAGS}
        out["flag_keys"] = self.flag_keys
        c = self.clip
        if c["scored"]:
            out["clip"] = {"scored": c["scored"], "failed": c["failed"],
                           "re_win_rate": c["re_wins"] / c["scored"], "org_win_rate": c["org_wins"] / c["scored"],
                           "re_mean_score": c["re_sum"] / c["scored"], "org_mean_score": c["org_sum"] / c["scored"]}
        return out


def histogram_arrays(hist: collections.Counter) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, counts) sorted by length, for plotting."""
    lengths = np.array(sorted(hist), dtype=np.int64)
    return lengths, np.array([hist[int(k)] for k in lengths], dtype=np.int64)
