"""The output lease (recap_jax/data/lease.py): refuse while fresh, take over when stale, and of
several jobs taking over one stale lease at once exactly one wins, locally and on gs://."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

import pytest

import gcs_emulator
from recap_jax.data.lease import LEASE_FILE, Lease, LeaseHeldError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One contender: waits for the start time, tries to take the lease, holds it a moment, prints.
CONTENDER = """
import sys, time
from recap_jax.data.lease import Lease, LeaseHeldError
folder, run_id, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
time.sleep(max(0.0, start - time.time()))
try:
    lease = Lease(folder, run_id, stale_s=30.0).acquire()
    print("won", flush=True)
    time.sleep(3)
except LeaseHeldError:
    print("refused", flush=True)
"""


def _stale_record(run_id="dead", host="gone-host") -> bytes:
    old = time.time() - 3600
    return json.dumps({"run_id": run_id, "host": host, "pid": 1, "started": old, "heartbeat": old}).encode()


def _race(folder: str, env: dict[str, str], n: int = 4) -> list[str]:
    start = time.time() + 8  # all started (imports done) before they contend
    procs = [subprocess.Popen([sys.executable, "-c", CONTENDER, folder, f"run-{i}", str(start)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
             for i in range(n)]
    return [p.communicate(timeout=300)[0].strip() for p in procs]


def test_local_lease_refuses_renews_and_releases(tmp_path):
    first = Lease(tmp_path, "first", heartbeat_s=0.2).acquire()
    (tmp_path / LEASE_FILE).write_text((tmp_path / LEASE_FILE).read_text().replace(
        f'"host": "{first.record.host}"', '"host": "elsewhere"'))  # as if held from another host
    with pytest.raises(LeaseHeldError, match=r"output\.dir: .* another job \(run first on host elsewhere"):
        Lease(tmp_path, "second").acquire()
    time.sleep(0.6)
    assert json.loads((tmp_path / LEASE_FILE).read_text())["heartbeat"] > first.record.started
    first.release()
    assert not (tmp_path / LEASE_FILE).exists()


def test_one_of_several_takes_over_a_stale_local_lease(tmp_path):
    (tmp_path / LEASE_FILE).write_bytes(_stale_record())
    results = _race(str(tmp_path), dict(os.environ, PYTHONPATH=REPO))
    assert sorted(results) == ["refused"] * 3 + ["won"], results


def test_one_of_several_takes_over_a_stale_lease_on_gcs():
    with gcs_emulator.serving_this_process() as client_env:
        env = dict(os.environ, PYTHONPATH=REPO, **client_env)
        import gcsfs
        gcsfs.GCSFileSystem().pipe_file(f"{gcs_emulator.BUCKET}/out/{LEASE_FILE}", _stale_record())
        results = _race(f"gs://{gcs_emulator.BUCKET}/out", env)
    assert sorted(results) == ["refused"] * 3 + ["won"], results


def _replaced_after_read(lease: Lease, replace) -> list:
    """Wraps the lease store's read: right after the heartbeat reads its own record, `replace` runs
    (another job taking the lease over while this one stalled between read and rewrite)."""
    read, calls = lease._store.read, []

    def read_then_replace():
        result = read()
        if not calls:
            calls.append(replace())
        return result

    lease._store.read = read_then_replace
    return calls


def test_local_heartbeat_never_overwrites_a_lease_taken_meanwhile(tmp_path):
    import threading
    mine = Lease(tmp_path, "stalled", heartbeat_s=3600).acquire()
    other = Lease(tmp_path, "taker")
    taken = threading.Event()

    def take_over():  # as acquire() does: under the lock
        def write():
            with other._store.critical():
                other._store.overwrite(_record_of("taker"))
            taken.set()
        thread = threading.Thread(target=write)
        thread.start()
        taken.wait(1.0)  # blocks while the heartbeat holds the lock (without it: writes at once)
        return thread

    calls = _replaced_after_read(mine, take_over)
    mine.renew()
    calls[0].join(10)
    assert json.loads((tmp_path / LEASE_FILE).read_text())["run_id"] == "taker"  # the later write stands
    assert mine.renew() is False  # and the stalled job sees it lost the lease
    mine._stop.set()


def test_gcs_heartbeat_never_overwrites_a_lease_taken_meanwhile():
    with gcs_emulator.serving_this_process():
        import gcsfs
        fs = gcsfs.GCSFileSystem()
        folder = f"gs://{gcs_emulator.BUCKET}/heartbeat"
        mine = Lease(folder, "stalled", heartbeat_s=3600).acquire()
        key = f"{gcs_emulator.BUCKET}/heartbeat/{LEASE_FILE}"
        assert mine.renew() and mine.renew()  # its own lease: the conditional rewrite succeeds, twice
        assert json.loads(fs.cat_file(key))["heartbeat"] == mine.record.heartbeat
        taker = json.dumps(dataclasses.asdict(_record_of("taker"))).encode()
        _replaced_after_read(mine, lambda: fs.pipe_file(key, taker))
        assert mine.renew() is False  # the rewrite's generation precondition failed
        fs.invalidate_cache()
        assert json.loads(fs.cat_file(key))["run_id"] == "taker"
        mine._stop.set()


def _record_of(run_id: str):
    from recap_jax.data.lease import Record
    now = time.time()
    return Record(run_id, "other-host", 1, now, now)
