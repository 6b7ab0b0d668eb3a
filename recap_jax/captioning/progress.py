"""The caption job's progress: images/s, tokens/s, failures and ETA, every `every_s` seconds,
printed through the one progress reporter of every long command (recap_jax/progress.py).

Rates count from the start of captioning (after the model is loaded; compiles included); the
run summary's `images_per_s` counts from the start of the command, and its `captioning_s` is the
progress lines' time base.
"""

from __future__ import annotations

import time

from recap_jax.progress import Reporter, format_eta


class Progress:
    def __init__(self, total_units: int, every_s: float = 30.0, prefix: str = "[caption]"):
        self.total_units, self.every_s, self.prefix = total_units, every_s, prefix
        self.reporter = Reporter(prefix)
        self.start = self._last = time.time()
        self.units = self.captioned = self.failed = self.generated_tokens = self.prefill_tokens = 0

    def update(self, captioned: int = 0, generated_tokens: int = 0, prefill_tokens: int = 0) -> None:
        self.captioned += captioned
        self.generated_tokens += generated_tokens
        self.prefill_tokens += prefill_tokens
        if time.time() - self._last >= self.every_s:
            self.report()

    def unit_done(self, records: int, failures: int) -> None:
        self.units += 1
        self.failed += failures
        self.report() if time.time() - self._last >= self.every_s else None

    def elapsed(self) -> float:
        """Seconds since captioning started (model loading and start-up excluded)."""
        return time.time() - self.start

    def line(self) -> str:
        elapsed = max(time.time() - self.start, 1e-9)
        eta = ""
        if self.units:
            remaining = elapsed / self.units * (self.total_units - self.units)
            eta = f" | ETA {format_eta(remaining)}"
        return (f"units {self.units}/{self.total_units} | images {self.captioned} "
                f"({self.captioned / elapsed:.2f}/s) | generated {self.generated_tokens / elapsed:.1f} tok/s "
                f"| prefill {self.prefill_tokens / elapsed:.0f} tok/s | failures {self.failed} "
                f"| {elapsed:.0f}s{eta}")

    def report(self) -> None:
        self._last = time.time()
        self.reporter.say(self.line())

    def close(self) -> None:
        self.report()
