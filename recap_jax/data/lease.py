"""A lease on an output folder: one job writes there at a time.

The lease is a small JSON record, FOLDER/.lease.json: the run id, host, pid, start time and a
heartbeat renewed every `heartbeat_s` by a background thread. A job that finds a fresh lease of
another run refuses to start; one whose heartbeat is older than `stale_s`, or whose holder was a
process of this host that no longer runs (a killed job restarted on the same machine), is taken
over. The workers of one pod run share one run id (process 0's, sent to all), so they share
the lease; process 0 takes it and renews it.

Taking a lease never relies on a rename (on gs:// a rename is a copy and a delete):
- gs://: the record is created with the precondition "no live object" (ifGenerationMatch=0), and
  a stale one is first deleted at the generation that was read, so of two jobs taking over the
  same stale lease one deletes and creates it and the other's delete or create fails;
- local: the same check-and-write under an exclusive `flock` of FOLDER itself.
The heartbeat's rewrite is conditional the same way (the generation it read on gs://, the lock
locally): a job that stalled past `stale_s` never overwrites the lease of the job that took over.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from etils import epath

from recap_jax.errors import UserError

LEASE_FILE = ".lease.json"
log = logging.getLogger(__name__)


class LeaseHeldError(UserError):
    """Another job holds a fresh lease on the folder."""


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclasses.dataclass
class Record:
    run_id: str
    host: str
    pid: int
    started: float
    heartbeat: float

    def age(self, now: float | None = None) -> float:
        return (now or time.time()) - self.heartbeat

    def describe(self) -> str:
        return (f"run {self.run_id} on host {self.host}, pid {self.pid}, started "
                f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(self.started))}, "
                f"last heartbeat {self.age():.0f}s ago")


def _process_gone(record: Record) -> bool:
    """The holder ran on this host and its process is gone (a killed job restarted here)."""
    if record.host != socket.gethostname():
        return False
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return record.pid == os.getpid()  # our own pid: a stale record of an earlier life of this process


class _Store:
    """Create-if-absent, read with version, delete-at-version, overwrite: local or gs://."""

    def __init__(self, folder: epath.Path):
        self.folder = folder
        self.path = folder / LEASE_FILE
        self.remote = "://" in os.fspath(folder)
        if self.remote:
            import gcsfs
            self.fs = gcsfs.GCSFileSystem(version_aware=True)
            self.key = os.fspath(self.path).split("://", 1)[1]

    @contextlib.contextmanager
    def critical(self):
        if self.remote:  # preconditions on each call make it safe without a lock
            yield
            return
        # The folder itself is locked: a lock file would be left behind in a folder the job refused.
        fd = os.open(os.fspath(self.folder), os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def read(self) -> tuple[Record | None, Any]:
        """(record, version) or (None, None)."""
        try:
            if self.remote:
                self.fs.invalidate_cache(self.key)
                info = self.fs.info(self.key)
                data, version = self.fs.cat_file(f"{self.key}#{info['generation']}"), info["generation"]
            else:
                data = self.path.read_bytes()
                version = None
        except FileNotFoundError:
            return None, None
        try:
            return Record(**json.loads(data)), version
        except (ValueError, TypeError):  # damaged: treat as stale
            return Record("?", "?", -1, 0.0, 0.0), version

    def create(self, record: Record) -> bool:
        """Write the record if no lease exists; False if one does."""
        data = json.dumps(dataclasses.asdict(record)).encode()
        if self.remote:
            try:
                self.fs.pipe_file(self.key, data, mode="create")
                return True
            except FileExistsError:
                return False
        try:
            fd = os.open(os.fspath(self.path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True

    def delete(self, version: Any) -> bool:
        """Delete the lease as read (at `version` on gs://); False if it changed meanwhile."""
        try:
            if self.remote:
                self.fs.rm_file(f"{self.key}#{version}")
                self.fs.invalidate_cache(self.key)
            else:
                self.path.unlink()
            return True
        except FileNotFoundError:
            return False

    def overwrite(self, record: Record, version: Any = None) -> bool:
        """Replace the record; on gs:// only if it is still at `version` (the generation read),
        else False. Locally the caller holds `critical()`, which makes read-compare-write atomic."""
        data = json.dumps(dataclasses.asdict(record)).encode()
        if self.remote:
            if version is None:
                self.fs.pipe_file(self.key, data)
                return True
            bucket, name = self.key.split("/", 1)
            # A multipart upload (the JSON API's, as gcsfs writes small files) with ifGenerationMatch:
            # gcsfs's pipe_file only offers the precondition "= 0".
            body = (b'--==0==\nContent-Type: application/json; charset=UTF-8\n\n' + json.dumps({"name": name}).encode()
                    + b"\n--==0==\nContent-Type: application/json\n\n" + data + b"\n--==0==--")
            try:
                self.fs.call("POST", f"{self.fs._location}/upload/storage/v1/b/{bucket}/o", uploadType="multipart",
                             ifGenerationMatch=str(version), data=body, json_out=True,
                             headers={"Content-Type": 'multipart/related; boundary="==0=="'})
            except FileExistsError:  # 412: another job rewrote or replaced the lease since we read it
                return False
            finally:
                self.fs.invalidate_cache(self.key)
            return True
        tmp = self.folder / f".{LEASE_FILE}.tmp-{os.getpid()}"
        tmp.write_bytes(data)
        tmp.replace(self.path)
        return True


class Lease:
    """Hold the lease on `folder` for `run_id` (see the module docstring). Use as a context manager
    or call acquire() / release()."""

    def __init__(self, folder: epath.PathLike, run_id: str, *, stale_s: float = 600.0,
                 heartbeat_s: float = 60.0, field: str = "output.dir"):
        self.folder = epath.Path(folder)
        self.run_id, self.stale_s, self.heartbeat_s, self.field = run_id, stale_s, heartbeat_s, field
        self._store = _Store(self.folder)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.record: Record | None = None
        self.took_over: Record | None = None  # the stale lease replaced, if any

    def acquire(self) -> Lease:
        now = time.time()
        mine = Record(self.run_id, socket.gethostname(), os.getpid(), now, now)
        for _ in range(5):
            with self._store.critical():
                if self._store.create(mine):
                    break
                held, version = self._store.read()
                if held is None:
                    continue  # released meanwhile: try to create it again
                if held.run_id == self.run_id:  # ours (a pod worker of this run, or a restart)
                    mine.started = held.started
                    self._store.overwrite(mine)
                    break
                if held.age() < self.stale_s and not _process_gone(held):
                    raise LeaseHeldError(
                        f"{self.field}: {self.folder} is being written by another job ({held.describe()}); "
                        f"wait for it, use another {self.field}, or, if that job is dead, retry after "
                        f"its lease goes stale ({self.stale_s:.0f}s without heartbeat)")
                if self._store.delete(version):
                    log.warning("%s: taking over a stale lease (%s)", self.folder, held.describe())
                    self.took_over = held
        else:
            raise LeaseHeldError(f"{self.field}: {self.folder}: another job took the lease while this one "
                                 "tried to; run again later")
        self.record = mine
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.renew()
            except Exception as e:  # noqa: BLE001 - a missed heartbeat must not stop the job
                log.warning("%s: lease heartbeat failed: %s", self.folder, e)

    def renew(self) -> bool:
        """Refresh the heartbeat; False (and no write) if another run has taken the lease.

        The rewrite is conditional: a job that stalled past `stale_s` and wakes up after another
        took the lease over must not overwrite that job's record (gs://: the generation read must
        still be the live one; local: read and write under the lock that acquire() takes)."""
        with self._store.critical():
            held, version = self._store.read()
            if held is not None and held.run_id == self.run_id:
                self.record.heartbeat = time.time()
                if self._store.overwrite(self.record, version):
                    return True
                held, _ = self._store.read()
        log.warning("%s: the lease was taken over by %s", self.folder, held.describe() if held else "nobody")
        return False

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._store.critical():
            held, version = self._store.read()
            if held is not None and held.run_id == self.run_id:
                self._store.delete(version)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def hold(folder: epath.PathLike, *, field: str, stale_s: float = 600.0, heartbeat_s: float = 60.0):
    """Hold the lease on `folder` for one run of every host while the body runs: process 0 takes
    it with a run id of its own and tells the others whether it got it, so a second launch on a
    pod refuses on every host. Yields the Lease on process 0, None elsewhere."""
    import jax  # the caller runs JAX anyway; this module itself stays importable without it
    import numpy as np

    lease, error = None, None
    if jax.process_index() == 0:
        epath.Path(folder).mkdir(parents=True, exist_ok=True)
        lease = Lease(folder, new_run_id(), stale_s=stale_s, heartbeat_s=heartbeat_s, field=field)
        try:
            lease.acquire()
        except LeaseHeldError as e:
            lease, error = None, e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        got = multihost_utils.broadcast_one_to_all(np.int32(error is None))
        if not int(got) and error is None:
            error = LeaseHeldError(f"{field}: {folder} is being written by another job (see host 0's message)")
    if error is not None:
        raise error
    try:
        yield lease
    finally:
        if lease is not None:
            lease.release()
