"""The one training loop: what every trainer does between its jitted steps.

A trainer (CLIP, captioner fine-tuning, DiT) subclasses `Trainer` and supplies only its own parts:
the train state's shape and first value, the jitted step, the data iterator (with a position
that a checkpoint records), its evaluations and its export. `run(config, make_trainer)` does the
rest, the same way for all:

1. check the loop's `config.train` fields; take the workdir's lease (one job per workdir);
2. build the mesh, then the trainer (its own validation; nothing is written yet);
3. refuse a workdir of another run (WORKDIR/run_identity.json), restore the newest intact
   checkpoint (state, data position, metric accumulator; checksum-verified) or initialise;
4. read the first batch (no usable example: the trainer's one-line error, exit 2), and only then
   record the run's identity and config.json;
5. run steps; fetch metrics at log and save points (a non-finite loss stops the run before that
   state is saved); write metrics.jsonl + TensorBoard; print progress with throughput and ETA;
   evaluate every `eval_every` steps and at the end; save every `checkpoint_every` steps, at
   the end, and on SIGINT/SIGTERM (then exit 130: rerunning the same command continues exactly);
6. the trainer's `finish` (export); returns the summary.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import jax
import ml_collections
import numpy as np
from etils import epath

from recap_jax.data import identity as identity_lib
from recap_jax.data.lease import hold
from recap_jax.errors import ConfigError
from recap_jax.parallel.mesh import make_mesh
from recap_jax.progress import Reporter, format_eta
from recap_jax.training import checkpoints
from recap_jax.training.loop_config import check_loop_fields
from recap_jax.training.metrics import MetricsWriter

IDENTITY_FILE = "run_identity.json"
CONFIG_FILE = "config.json"
REMEDY = "use a new --config.workdir, or the settings it was started with"


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN/inf; the run stops without saving that state."""


class DataIterator(Protocol):
    """Batches ready for the step; `get_state()` is the JSON-able position after the last one."""

    def __next__(self) -> Any: ...

    def get_state(self) -> Any: ...


class Trainer:
    """What a trainer supplies. Set the attributes in __init__ and override the methods."""

    name: str = "train"  # the progress lines' prefix: [name]
    unit: str = "examples"  # what `units(batch)` counts, for the throughput ("images", "tokens")
    num_steps: int = 0  # total optimizer steps
    learning_rate_fn: Callable[[int], Any] | None = None  # logged when the step's metrics lack it
    progress_keys: tuple[str, ...] = ()  # metrics shown in the progress line besides loss and lr

    def identity(self) -> dict[str, Any]:
        """Settings that decide the result (recorded in WORKDIR/run_identity.json, compared on reruns)."""
        return {}

    def abstract_state(self) -> Any:
        """ShapeDtypeStructs (with shardings) of the train state: the restore target."""
        raise NotImplementedError

    def init_state(self) -> Any:
        """The first train state, placed on the mesh (no checkpoint in the workdir)."""
        raise NotImplementedError

    def data(self, position: Any | None) -> DataIterator:
        """Batches from `position` (None: the start); raise ConfigError naming the data field and
        how many examples were unusable if there is no usable example."""
        raise NotImplementedError

    def step(self, state: Any, batch: Any) -> tuple[Any, dict[str, Any]]:
        """The jitted train step (state donated): (new state, device metrics with a "loss")."""
        raise NotImplementedError

    def units(self, batch: Any) -> int:
        """Examples (or tokens) of `batch` over all hosts, for the throughput."""
        return 0

    def row_fields(self) -> dict[str, Any]:
        """Host-side fields added to every metrics row (e.g. data failures so far)."""
        return {}

    def evaluate(self, state: Any, step: int) -> dict[str, float]:
        """Evaluation metrics ("eval/..." keys), every train.eval_every steps and at the end."""
        return {}

    def finish(self, state: Any, step: int) -> dict[str, Any]:
        """After the last step (not after a stop): export; returns fields for the summary."""
        return {}

    def say(self, message: str) -> None:
        Reporter(f"[{self.name}]").say(message)


def absolute_workdir(workdir: str) -> str:
    """A local workdir made absolute (Orbax refuses relative paths); gs:// as given."""
    return workdir if "://" in workdir else os.path.abspath(workdir)


def run(config: ml_collections.ConfigDict, make_trainer: Callable[[ml_collections.ConfigDict, Any], Trainer]
        ) -> dict[str, Any]:
    """Train as `config` says with the trainer `make_trainer(config, mesh)` builds; the summary."""
    check_loop_fields(config)
    workdir = absolute_workdir(config.workdir)
    mesh = make_mesh(dict(config.mesh))
    existed = epath.Path(workdir).exists()
    t = config.train
    try:
        with hold(workdir, field="workdir", stale_s=t.lease_stale_s, heartbeat_s=t.lease_heartbeat_s):
            trainer = make_trainer(config, mesh)
            return _Run(config, trainer, workdir).go()
    except BaseException:
        if not existed:
            _remove_if_only_lease(workdir)
        raise


def _remove_if_only_lease(workdir: str) -> None:
    """A failed first start leaves no folder behind (only the lease was written there)."""
    path = epath.Path(workdir)
    if "://" in workdir or not path.exists():
        return
    names = {p.name for p in path.iterdir()}
    if names <= {".lease.json"}:
        for name in names:
            (path / name).unlink()
        path.rmdir()


@contextlib.contextmanager
def _stop_requests() -> Iterator[list[int]]:
    """SIGINT/SIGTERM set a flag (the loop saves, then exits 130); a second SIGINT stops at once."""
    requested: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def handler(signum, frame):
        if requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        requested.append(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _agree(flag: bool) -> bool:
    """True on every host if any host's flag is set (hosts stop and save at the same step)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils
    return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


class _Run:
    """One run of the loop (state kept between the phases of `go`)."""

    def __init__(self, config: ml_collections.ConfigDict, trainer: Trainer, workdir: str):
        self.config, self.trainer, self.workdir, self.t = config, trainer, workdir, config.train
        self.reporter = Reporter(f"[{trainer.name}]")
        self.pending: list[tuple[int, dict]] = []  # device metrics not yet fetched (fetching syncs)
        self.sums: dict[str, float] = {}  # fetched metrics since the last row (saved in checkpoints)
        self.count = 0
        self.units = self.interval_steps = 0
        self.last: dict[str, Any] = {}

    def go(self) -> dict[str, Any]:
        state, position, start = self._restore_or_init()
        num_steps = self.trainer.num_steps
        stop_at = min(num_steps, start + self.t.stop_after_steps) if self.t.stop_after_steps else num_steps
        batches = self.trainer.data(position) if start < stop_at else None
        first = None
        if batches is not None:
            first = next(batches, None)
            if first is None:
                raise ConfigError(f"data: no usable example for {self.trainer.name} (nothing to learn)")
        self._record_start()
        self.saver = checkpoints.Saver(self.workdir, self.t.keep_checkpoints, self.t.async_checkpointing)
        self.writer = MetricsWriter(self.workdir, start)
        try:
            state, step, stopped = self._steps(state, start, stop_at, first, batches)
        finally:
            self.saver.close()
            self.writer.close()
        if stopped:
            self.reporter.say(f"stopped at step {step} (signal {stopped}); checkpoint saved: rerun the same "
                              "command to continue")
            raise KeyboardInterrupt
        summary = {**self.last, "step": step, "num_steps": num_steps, "workdir": self.workdir}
        if step >= num_steps:
            summary.update(self.trainer.finish(state, step))
        summary["state"] = state
        return summary

    def _restore_or_init(self) -> tuple[Any, Any, int]:
        self.identity = identity = self.trainer.identity()
        if identity:
            identity_lib.check(epath.Path(self.workdir) / IDENTITY_FILE, identity, folder_field="workdir",
                               remedy=REMEDY)
        restored = checkpoints.restore_latest(self.workdir, self.trainer.abstract_state(),
                                              self.t.resume_from_step, self.reporter.say)
        if restored is None:
            if self.t.resume_from_step >= 0:
                raise ConfigError(f"train.resume_from_step: {self.workdir} has no checkpoint")
            return self.trainer.init_state(), None, 0
        state, position, record, step = restored
        accumulated = record.get("accumulated", {})
        self.sums, self.count = dict(accumulated.get("sums", {})), int(accumulated.get("count", 0))
        self.reporter.say(f"resumed at step {step} from {self.workdir}/checkpoints/{step}")
        return state, position, step

    def _record_start(self) -> None:
        """The run's identity and first config, once its first state and batch exist (process 0)."""
        if jax.process_index() != 0:
            return
        path = epath.Path(self.workdir) / IDENTITY_FILE
        if self.identity and not path.exists():
            identity_lib.write_json(path, identity_lib.normalized(self.identity))
        path = epath.Path(self.workdir) / CONFIG_FILE  # what evaluation rebuilds the model from
        if not path.exists():
            identity_lib.write_json(path, json.loads(self.config.to_json_best_effort()))

    def _steps(self, state, start: int, stop_at: int, first, batches) -> tuple[Any, int, int]:
        """Steps start+1 .. stop_at; (state, last step, the stopping signal or 0)."""
        t, step = self.t, start
        with _stop_requests() as requested:
            batch = first
            while step < stop_at:
                if batch is None:
                    batch = next(batches, None)
                    if batch is None:
                        break  # the data ended (e.g. an epoch of a finite dataset)
                state, metrics = self.trainer.step(state, batch)
                step += 1
                self.units += self.trainer.units(batch)
                self.interval_steps += 1
                self.pending.append((step, metrics))
                batch = None
                check = jax.process_count() == 1 or step % t.log_every == 0
                stop = _agree(bool(requested)) if check else False
                if step % t.log_every == 0 or step == self.trainer.num_steps:
                    self._log(step)
                if step % t.checkpoint_every == 0 or step == stop_at or stop:
                    self._save(step, state, batches)
                if (t.eval_every and step % t.eval_every == 0) or step == self.trainer.num_steps:
                    self._evaluate(step, state)
                if stop:
                    return state, step, requested[0] if requested else signal.SIGTERM
            if batches is not None and step < stop_at:  # the data ended first
                self._log(step)
                self._save(step, state, batches)
        return state, step, 0

    def _fetch(self) -> None:
        """Fetch pending metrics into the accumulator; stop on a non-finite loss."""
        fetched = [(s, jax.device_get(m)) for s, m in self.pending]
        self.pending = []
        for s, m in fetched:
            if not np.isfinite(m["loss"]):
                raise NonFiniteLossError(
                    f"non-finite loss ({m['loss']}) at step {s}: stopping. The last checkpoint (step "
                    f"{self.saver.last_saved}) is intact; lower train.learning_rate, set "
                    "train.grad_clip_norm, or compute in float32, then rerun to resume.")
            for k, v in m.items():
                if np.ndim(v) == 0:
                    self.sums[k] = self.sums.get(k, 0.0) + float(v)
            self.count += 1

    def _log(self, step: int) -> None:
        self._fetch()
        if not self.count:
            return
        row = {k: v / self.count for k, v in self.sums.items()}
        if "learning_rate" not in row and self.trainer.learning_rate_fn is not None:
            row["learning_rate"] = float(self.trainer.learning_rate_fn(step - 1))
        elapsed = self.reporter.interval()
        steps_per_s = self.interval_steps / elapsed
        row.update(steps_per_second=steps_per_s, **{f"{self.trainer.unit}_per_second": self.units / elapsed})
        row.update(self.trainer.row_fields())
        self.sums, self.count, self.units, self.interval_steps = {}, 0, 0, 0
        self.writer.write(step, row)
        self.last = row
        shown = " ".join(f"{k} {row[k]:.4g}" for k in self.trainer.progress_keys if k in row)
        eta = format_eta((self.trainer.num_steps - step) / max(steps_per_s, 1e-9))
        self.reporter.say(f"step {step} of {self.trainer.num_steps} loss {row['loss']:.4f} {shown} "
                          f"lr {row.get('learning_rate', 0.0):.2e} | {steps_per_s:.2f} steps/s "
                          f"{row[f'{self.trainer.unit}_per_second']:.0f} {self.trainer.unit}/s | ETA {eta}")

    def _save(self, step: int, state, batches) -> None:
        self._fetch()  # never checkpoint an unchecked state
        record = {"accumulated": {"sums": self.sums, "count": self.count}}
        self.saver.save(step, state, batches.get_state(), record)

    def _evaluate(self, step: int, state) -> None:
        results = self.trainer.evaluate(state, step)
        if results:
            self.writer.write(step, results)
            self.last.update(results)
        self.reporter.restart_interval()
