"""An output folder that appears only when complete (the converters' and exporters' DEST)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable

from recap_jax.errors import ConfigError


def write_atomically(dest: str, fill: Callable[[str], None]) -> None:
    """`fill(tmp)` writes the files into a temporary sibling folder that is then renamed to `dest`;
    on any error the temporary folder is removed and `dest` never exists. `dest` must be new."""
    dest = os.path.abspath(dest)
    if os.path.exists(dest):
        raise ConfigError(f"DEST {dest} exists; choose a new folder (nothing was written)")
    parent = os.path.dirname(dest)
    if not os.path.isdir(parent):
        raise ConfigError(f"DEST {dest}: its folder {parent} does not exist")
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.tmp-", dir=parent)
    try:
        fill(tmp)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
