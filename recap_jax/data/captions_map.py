"""Which member or column of the released data is which caption: `org_caption=txt,re_caption=json:re_caption`.

img2dataset writes KEY.jpg, KEY.txt (its `caption_col`) and KEY.json (url, key, sha256 and every
`save_additional_columns` column); which of them holds the recaption depends on how the user ran
it, so it is named, never guessed. A source is
- `txt`: the KEY.txt member,
- `json:FIELD`: FIELD of the KEY.json member,
- `parquet:COLUMN`: COLUMN of released-schema Parquet joined by `key` (images from the tars).
A sample whose mapped source is missing is reported with its key, never filled in.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from recap_jax.errors import ConfigError

TARGETS = ("org_caption", "re_caption")


@dataclasses.dataclass(frozen=True)
class CaptionSource:
    kind: str  # "txt", "json" or "parquet"
    field: str = ""  # the JSON field or Parquet column

    def __str__(self) -> str:
        return self.kind if self.kind == "txt" else f"{self.kind}:{self.field}"


def parse_caption_source(source: str, field: str, kinds: tuple[str, ...] = ("txt", "json", "parquet")) -> CaptionSource:
    """`txt`, `json:FIELD` or `parquet:COLUMN` (those of `kinds`) -> CaptionSource."""
    kind, _, name = source.strip().partition(":")
    if kind in kinds and kind == "txt" and not name:
        return CaptionSource("txt")
    if kind in kinds and kind in ("json", "parquet") and name:
        return CaptionSource(kind, name)
    forms = {"txt": "txt", "json": "json:FIELD", "parquet": "parquet:COLUMN"}
    raise ConfigError(f"{field}: source {source!r} must be {' or '.join(forms[k] for k in kinds)}")


def parse_captions_map(spec: str, field: str = "captions_map") -> dict[str, CaptionSource]:
    """`"org_caption=txt,re_caption=json:re_caption"` -> {target: source}; both targets required."""
    out: dict[str, CaptionSource] = {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        target, sep, source = part.partition("=")
        target, source = target.strip(), source.strip()
        if not sep or target not in TARGETS:
            raise ConfigError(f"{field}: {part!r} is not TARGET=SOURCE with TARGET in {TARGETS}")
        out[target] = parse_caption_source(source, f"{field} ({target})")
    missing = [t for t in TARGETS if t not in out]
    if missing:
        raise ConfigError(f"{field}: {spec!r} names no source for {missing} (e.g. "
                          "org_caption=json:org_caption,re_caption=txt)")
    return out


def caption_from(source: CaptionSource, members: Mapping[str, bytes], meta: dict[str, Any] | None,
                 parquet_row: Mapping[str, Any] | None) -> str | None:
    """The caption `source` names in one sample, or None when the sample lacks it."""
    if source.kind == "txt":
        data = members.get("txt")
        return None if data is None else data.decode("utf-8", "replace").strip()
    if source.kind == "json":
        if meta is None or source.field not in meta or meta[source.field] is None:
            return None
        return str(meta[source.field])
    if parquet_row is None or parquet_row.get(source.field) is None:
        return None
    return str(parquet_row[source.field])


def parse_meta(data: bytes | None) -> dict[str, Any] | None:
    """A KEY.json member as a dict; None if absent or not a JSON object."""
    if data is None:
        return None
    try:
        value = json.loads(data.decode("utf-8", "replace"))
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
