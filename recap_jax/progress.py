"""The one progress reporter of the long-running commands (caption job and trainers).

A line is `[command] what happened | rates | ETA 1h02m03s`, printed by process 0 only (the other
hosts of a pod do the same work and would print the same line).
"""

from __future__ import annotations

import time


def format_eta(seconds: float) -> str:
    """'1h02m03s' for a remaining time in seconds."""
    seconds = max(int(seconds), 0)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def is_reporting_process() -> bool:
    import jax  # loaded by every caller already; kept out of this module's import for light tools

    return jax.process_index() == 0


class Reporter:
    """Prints `[prefix] message` lines (process 0) and measures rates between them."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.start = self._mark = time.time()

    def say(self, message: str) -> None:
        if is_reporting_process():
            print(f"{self.prefix} {message}", flush=True)

    def interval(self) -> float:
        """Seconds since the last call (or the start), and starts a new interval."""
        now = time.time()
        elapsed, self._mark = max(now - self._mark, 1e-9), now
        return elapsed

    def restart_interval(self) -> None:
        """Excludes what happened since the last mark (evaluation, checkpointing) from the next rate."""
        self._mark = time.time()

    def elapsed(self) -> float:
        return time.time() - self.start
