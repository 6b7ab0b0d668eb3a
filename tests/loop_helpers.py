"""Shared helpers of the training-loop tests: TensorBoard read-back, comparable metric rows, and
a command run until a progress line, then signalled."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys

from recap_jax.training import metrics

REPO = pathlib.Path(__file__).resolve().parent.parent
# Fields of a metrics row that depend on timing, not on the training.
TIMING = ("time", "steps_per_second", "images_per_second", "tokens_per_second")


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                JAX_PLATFORMS="cpu")


def tensorboard_scalars(workdir, tag: str) -> dict[int, float]:
    """{step: value} of one scalar as TensorBoard shows it (purged events of an earlier life dropped)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(pathlib.Path(workdir) / metrics.TENSORBOARD_DIR), size_guidance={"scalars": 0})
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


def training_rows(workdir) -> list[dict]:
    """metrics.jsonl rows without their timing fields."""
    return [{k: v for k, v in row.items() if k not in TIMING} for row in metrics.read_rows(workdir)]


def run_until_line_then_signal(cmd: list[str], prefix: str, sig: int, timeout: float = 600
                               ) -> tuple[int, str, str]:
    """Starts `cmd`, sends `sig` once a stdout line starts with `prefix`; (exit code, stdout, stderr)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), cwd=REPO)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(prefix):
            proc.send_signal(sig)
            break
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, "".join(seen) + out, err


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


SIGINT = signal.SIGINT
SIGTERM = signal.SIGTERM
