"""A run's identity: the settings that decide its result, recorded beside the result.

A folder written by one run (caption output, CLIP workdir) must not be continued by another:
its identity (a flat JSON dict of field -> value) is recorded when the folder is first used and
compared on every later start. A mismatch is refused with every differing field named.
"""

from __future__ import annotations

import json
import os
from typing import Any

from etils import epath

from recap_jax.errors import ConfigError


class DifferentRunError(ConfigError):
    """The folder holds the result of a run with another identity."""


def normalized(identity: dict[str, Any]) -> dict[str, Any]:
    """Through JSON, so that tuples and lists (and int keys) compare equal."""
    return json.loads(json.dumps(identity, sort_keys=True))


def differences(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'field: old -> new' for every field that differs (missing on one side included)."""
    def short(value: Any) -> str:
        text = "(not recorded)" if value is _MISSING else json.dumps(value)
        return text if len(text) <= 60 else text[:57] + "..."
    out = []
    for key in sorted(set(previous) | set(current)):
        old, new = previous.get(key, _MISSING), current.get(key, _MISSING)
        if old != new:
            out.append(f"{key}: {short(old)} -> {short(new)}")
    return out


_MISSING = object()


def check_or_record(path: epath.Path, identity: dict[str, Any], *, folder_field: str, remedy: str) -> None:
    """Record `identity` at `path` if absent; else raise DifferentRunError unless equal.

    `folder_field` names the config field of the folder ("output.dir"); `remedy` says how to
    proceed otherwise ("use a new output.dir or ...").
    """
    if not check(path, identity, folder_field=folder_field, remedy=remedy):
        write_json(path, normalized(identity))


def check(path: epath.Path, identity: dict[str, Any], *, folder_field: str, remedy: str) -> bool:
    """Whether `path` records an identity (DifferentRunError if it is another one); writes nothing.
    A job checks before it reads the folder and records (`write_json`) once its start succeeded."""
    identity = normalized(identity)
    if not path.exists():
        return False
    changed = differences(json.loads(path.read_text()), identity)
    if changed:
        raise DifferentRunError(
            f"{folder_field}: {path.parent} holds the result of a different run "
            f"({len(changed)} field(s) differ: {'; '.join(changed)}); {remedy}")
    return True


def write_json(path: epath.Path, value: Any) -> None:
    """Write a small JSON file whole: on gs:// an object appears only once fully uploaded; locally
    through a temporary name and a rename."""
    data = json.dumps(value, indent=1, sort_keys=True).encode()
    if "://" in os.fspath(path):
        path.write_bytes(data)
        return
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_bytes(data)
    tmp.replace(path)


def absolute(path: str) -> str:
    """A local path made absolute and normalized (remote paths as given, without a trailing /)."""
    if "://" in path:
        return path.rstrip("/")
    return os.path.normpath(os.path.abspath(os.path.expanduser(path)))
