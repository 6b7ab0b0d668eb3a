"""One metrics writer for every trainer: WORKDIR/metrics.jsonl and TensorBoard event files.

`tensorboard --logdir WORKDIR` shows every scalar written (loss, learning rate, throughput, eval
metrics); metrics.jsonl holds the same rows, one JSON object per line. Only process 0 writes.

A resumed run starts from its checkpoint's step: rows past that step (written by the interrupted
run after its last checkpoint) are dropped from metrics.jsonl and purged from TensorBoard's view
(`purge_step`), so the log equals that of an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import jax
import numpy as np
from etils import epath

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _scalar(value: Any) -> Any:
    return float(value) if np.ndim(value) == 0 else np.asarray(value).tolist()


def read_rows(workdir: epath.PathLike) -> list[dict[str, Any]]:
    """The rows of WORKDIR/metrics.jsonl (none if absent); a torn last line is skipped."""
    path = epath.Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class MetricsWriter:
    """Writes metric rows of one run (process 0) to metrics.jsonl and TensorBoard."""

    def __init__(self, workdir: epath.PathLike, start_step: int):
        self.workdir = epath.Path(workdir)
        self.path = self.workdir / METRICS_FILE
        self.enabled = jax.process_index() == 0
        self._tb = None
        if not self.enabled:
            return
        self._keep_rows_up_to(start_step)
        from tensorboardX import SummaryWriter  # imports torch-free protobuf code; only process 0 needs it

        # purge_step: TensorBoard hides events of this run's earlier life past the restored step.
        self._tb = SummaryWriter(os.fspath(self.workdir / TENSORBOARD_DIR), purge_step=start_step + 1,
                                 flush_secs=30)

    def _keep_rows_up_to(self, step: int) -> None:
        rows = read_rows(self.workdir)
        kept = [row for row in rows if int(row.get("step", 0)) <= step]
        if len(kept) == len(rows) and (not rows or self.path.read_text().endswith("\n")):
            return
        text = "".join(json.dumps(row) + "\n" for row in kept)
        if "://" in os.fspath(self.path):
            self.path.write_text(text)
            return
        tmp = self.path.parent / f".{METRICS_FILE}.tmp-{os.getpid()}"
        tmp.write_text(text)
        tmp.replace(self.path)

    def write(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        """Appends one row {step, time, **metrics}; returns it."""
        row = {"step": int(step), "time": time.time(), **{k: _scalar(v) for k, v in metrics.items()}}
        if not self.enabled:
            return row
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        for key, value in row.items():
            if key not in ("step", "time") and isinstance(value, float) and math.isfinite(value):
                self._tb.add_scalar(key, value, global_step=int(step), walltime=row["time"])
        self._tb.flush()
        return row

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
