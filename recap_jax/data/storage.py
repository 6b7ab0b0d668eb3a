"""Where files live (local or gs://) and reading them through transient I/O errors.

Shared by the input formats, the output writer and the commands' start-up checks.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import TypeVar

from etils import epath

from recap_jax.errors import ConfigError

# Reads that fail with an I/O error (not a format error) are retried: on gs:// a dropped connection
# must not turn a whole shard into failures (its unit would then count as done).
IO_ATTEMPTS = 3
IO_BACKOFF_S = 1.0

log = logging.getLogger(__name__)
T = TypeVar("T")


def is_local(path: object) -> bool:
    """False for remote paths (gs://...): those are checked when opened, local ones at start-up."""
    return "://" not in str(path)


def require_gcs(field: str) -> None:
    """etils.epath reads gs:// through gcsfs: say so at start-up, naming the config field."""
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        raise ConfigError(f"{field}: gs:// paths need gcsfs (pip install gcsfs, "
                          "or the project's [gcs] / [tpu] extra)") from None


def is_inside(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies under it, symlinks resolved (a link to the input is the
    input); remote paths compare by name, and a local path is never inside a remote one."""
    if is_local(path) != is_local(folder):
        return False
    if not is_local(path):
        a, b = str(path).rstrip("/"), str(folder).rstrip("/")
        return a == b or a.startswith(b + "/")
    real = os.path.realpath(os.path.expanduser(path))  # resolves the existing part of a new path too
    root = os.path.realpath(os.path.expanduser(folder))
    return real == root or real.startswith(root.rstrip("/") + "/")


def _probe(path: str, write: bool) -> None:
    import gcsfs
    fs = gcsfs.GCSFileSystem()
    bucket = path.split("://", 1)[1].split("/", 1)[0]
    if write:
        probe = f"{path.rstrip('/')}/.probe-{uuid.uuid4().hex[:8]}".split("://", 1)[1]
        fs.pipe_file(probe, b"recap_jax write probe")
        fs.rm_file(probe)
    elif not fs.exists(bucket):
        raise FileNotFoundError(f"bucket {bucket} not found")


def check_reachable(paths: Mapping[str, str], timeout_s: float, writable: Collection[str] = ()) -> None:
    """Each gs:// path of {field: path} reachable (a write accepted for the fields in `writable`)
    within `timeout_s` seconds, all probed at once; ConfigError naming the first field that is not.

    Without this, no network or no credentials shows as a minute of gcsfs retries, then a traceback.
    """
    found = {field: path for field, path in paths.items() if str(path).startswith("gs://")}
    if not found:
        return
    require_gcs(next(iter(found)))
    # gcsfs logs every retry with a traceback: the one-line error below says it all.
    logging.getLogger("gcsfs").setLevel(logging.CRITICAL)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(found), thread_name_prefix="gcs-probe")
    futures = {field: pool.submit(_probe, path, field in writable) for field, path in found.items()}
    try:
        for field, future in futures.items():
            what = "write to" if field in writable else "reach"
            try:
                future.result(timeout=timeout_s)
            except concurrent.futures.TimeoutError:
                raise ConfigError(f"{field}: could not {what} {found[field]} within {timeout_s:.0f}s "
                                  "(network? credentials: gcloud auth application-default login)") from None
            except Exception as e:  # noqa: BLE001 - any failure of the probe is the user's to fix
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                raise ConfigError(f"{field}: could not {what} {found[field]} ({type(e).__name__}: "
                                  f"{first[:200]})") from None
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


class TransientIOError(Exception):
    """An I/O error worth retrying (wraps the OSError)."""


def is_permanent(error: OSError) -> bool:
    """Errors that another try cannot fix (the file is missing or forbidden)."""
    return isinstance(error, (FileNotFoundError, IsADirectoryError, PermissionError, NotADirectoryError))


def backoff(attempt: int) -> None:
    """Waits before try `attempt + 1` (exponential backoff)."""
    time.sleep(IO_BACKOFF_S * 2 ** attempt)


def retrying(read: Callable[[], T], what: str) -> T:
    """read() with up to IO_ATTEMPTS tries on transient OSErrors; the last error propagates."""
    for attempt in range(IO_ATTEMPTS):
        try:
            return read()
        except OSError as e:
            if is_permanent(e) or attempt == IO_ATTEMPTS - 1:
                raise
            log.warning("%s: %s; retrying", what, e)
            backoff(attempt)
    raise AssertionError("unreachable")


def copy_tree(src: epath.Path, dst: epath.Path) -> None:
    """Every file under `src` to the same relative path under `dst` (either may be gs://)."""
    for f in src.iterdir():
        if f.is_dir():
            copy_tree(f, dst / f.name)
            continue
        dst.mkdir(parents=True, exist_ok=True)
        with f.open("rb") as source, (dst / f.name).open("wb") as target:
            shutil.copyfileobj(source, target, 16 << 20)


@contextlib.contextmanager
def staged_folder(dest: str, download: bool = False) -> Iterator[str]:
    """A local folder standing in for `dest`: `dest` itself when local; for gs:// a temporary
    folder (holding dest's files first when `download`) whose files are uploaded to dest when the
    block succeeds. For writers that need local files (matplotlib, pyarrow's ParquetWriter)."""
    if is_local(dest):
        yield dest
        return
    require_gcs(str(dest))
    remote = epath.Path(dest)
    with tempfile.TemporaryDirectory(prefix="recap_staged_") as local:
        if download and remote.exists():
            copy_tree(remote, epath.Path(local))
        yield local
        copy_tree(epath.Path(local), remote)


@contextlib.contextmanager
def local_file(path: str) -> Iterator[str]:
    """A local path with the file's bytes: `path` itself, or a temporary copy of a gs:// object."""
    if is_local(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="recap_file_") as local:
        copy = epath.Path(local) / epath.Path(path).name
        with epath.Path(path).open("rb") as source, copy.open("wb") as target:
            shutil.copyfileobj(source, target, 16 << 20)
        yield str(copy)
