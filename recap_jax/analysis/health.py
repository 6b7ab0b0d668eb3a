"""Caption health flags: what a look at recaptions finds wrong, as tests on one caption.

- `empty`: nothing but whitespace.
- `truncated`: the decoder hit `max_new_tokens` (the caption was cut, not finished).
- `repetition`: a loop, a word n-gram repeated back to back (`min_repeats` copies covering at
  least `min_span` words: "a dog a dog a dog a dog", a sentence said three times).
- `template`: phrases the paper's HQ-Edit tuning leaves behind ("The first image shows ...",
  "the edited image"), which describe an image pair rather than this image.
"""

from __future__ import annotations

import dataclasses
import re

FLAGS = ("empty", "truncated", "repetition", "template")

TEMPLATE_PATTERNS = (
    r"\b(the|in the) (first|second|left|right|top|bottom) (image|picture|photo)\b",
    r"\b(the )?(original|edited|source|target|modified) (image|picture|photo)\b",
    r"^\s*(image|picture) ?[12]\b",
    r"\bboth images\b",
)

_WORD = re.compile(r"[\w']+")


@dataclasses.dataclass(frozen=True)
class HealthSettings:
    max_new_tokens: int = 128
    min_repeats: int = 3
    min_span: int = 8
    max_ngram: int = 16
    template_patterns: tuple[str, ...] = TEMPLATE_PATTERNS


def words(text: str) -> list[str]:
    """Lower-cased word tokens (punctuation dropped): the unit of repetition and vocabulary."""
    return _WORD.findall(text.lower())


def longest_loop(tokens: list[str], max_ngram: int = 16) -> tuple[int, int]:
    """(n, copies) of the tandem repeat covering the most words; (0, 1) if none.

    For each period n, a run of m consecutive positions j with tokens[j] == tokens[j + n] is
    1 + m // n back-to-back copies of one n-gram.
    """
    best = (0, 1, 0)  # n, copies, span
    for n in range(1, min(max_ngram, len(tokens) // 2) + 1):
        run = 0
        for j in range(len(tokens) - n + 1):
            if j + n < len(tokens) and tokens[j] == tokens[j + n]:
                run += 1
                continue
            copies = 1 + run // n
            if copies > 1 and run + n > best[2]:
                best = (n, copies, run + n)
            run = 0
    return best[0], best[1]


def is_repetition(text: str, settings: HealthSettings) -> bool:
    n, copies = longest_loop(words(text), settings.max_ngram)
    return copies >= settings.min_repeats and n * copies >= settings.min_span


def caption_flags(text: str, generated_tokens: int | None, settings: HealthSettings,
                  templates: list[re.Pattern] | None = None) -> list[str]:
    """The flags (in `FLAGS` order) that one recaption raises. `generated_tokens` None = unknown,
    so `truncated` is not tested."""
    templates = templates if templates is not None else compile_templates(settings)
    flags = []
    if not text.strip():
        flags.append("empty")
    if generated_tokens is not None and generated_tokens >= settings.max_new_tokens:
        flags.append("truncated")
    if is_repetition(text, settings):
        flags.append("repetition")
    if any(p.search(text) for p in templates):
        flags.append("template")
    return flags


def compile_templates(settings: HealthSettings) -> list[re.Pattern]:
    return [re.compile(p, re.IGNORECASE) for p in settings.template_patterns]
