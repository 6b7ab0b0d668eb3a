"""`input.paths`: folders, files, globs and webdataset brace patterns, local or gs://."""

from __future__ import annotations

import re
from collections.abc import Sequence

from etils import epath

from recap_jax.data.storage import is_local, require_gcs
from recap_jax.errors import ConfigError


def split_paths(paths: str | Sequence[str]) -> list[str]:
    """A list of patterns, or one comma-separated string of them."""
    if isinstance(paths, str):
        # Commas inside braces belong to a brace pattern ("{a,b}.tar"), not to the list.
        paths = re.split(r",(?![^{]*\})", paths)
    return [p.strip() for p in paths if p and p.strip()]


def expand_braces(pattern: str) -> list[str]:
    """Webdataset brace notation: "s-{000..002}.tar" -> s-000.tar, s-001.tar, s-002.tar; "{a,b}" too."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    head, tail, body = pattern[:match.start()], pattern[match.end():], match.group(1)
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        first, last = numeric.groups()
        width = len(first) if first.startswith("0") or len(first) == len(last) else 0
        options = [str(i).zfill(width) for i in range(int(first), int(last) + 1)]
    else:
        options = body.split(",")
    return [expanded for option in options for expanded in expand_braces(head + option + tail)]


def glob(pattern: str) -> list[epath.Path]:
    """The existing paths matching one pattern (wildcards * ? [ ]), sorted."""
    if not any(c in pattern for c in "*?["):
        path = epath.Path(pattern)
        return [path] if path.exists() else []
    # Split at the first wildcard component: the rest is globbed under the fixed prefix.
    parts = pattern.split("/")
    first = next(i for i, part in enumerate(parts) if any(c in part for c in "*?["))
    base = "/".join(parts[:first]) or "/"
    if not is_local(pattern) and first <= 2:
        raise ConfigError(f"input.paths: {pattern!r} has a wildcard in the bucket name")
    base_path = epath.Path(base)
    if not base_path.exists():
        return []
    return sorted(base_path.glob("/".join(parts[first:])))


def resolve_paths(paths: str | Sequence[str]) -> list[epath.Path]:
    """Every path `input.paths` names, in order, each once; ConfigError for a pattern matching nothing."""
    patterns = split_paths(paths)
    if not patterns:
        raise ConfigError("input.paths: empty; give a folder, a glob or a comma-separated list of globs")
    found: dict[str, epath.Path] = {}  # ordered, without duplicates: a file named twice is read once
    for pattern in patterns:
        if pattern.startswith("gs://"):
            require_gcs("input.paths")
        expanded = expand_braces(pattern)
        for one in expanded:
            matches = glob(one)
            if not matches:
                raise ConfigError(f"input.paths: nothing matches {one!r}"
                                  + (f" (from {pattern!r})" if len(expanded) > 1 else ""))
            for match in matches:
                found.setdefault(str(match), match)
    return list(found.values())
