"""Where files live (local or gs://) and reading them through transient I/O errors.

Shared by the input formats, the output writer and the commands' start-up checks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

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
