"""The input-format interface: what a sample, a failure and a work unit are, and the registry.

A format plans the whole input as work units (in a deterministic order: every host must plan the
same units from the same config) and reads one unit into samples. A unit is also the unit of
output (one ArrayRecord shard) and of resumption after a crash. Reading never raises for one bad
sample: it yields a `Failure` instead and goes on.
"""

from __future__ import annotations

import abc
import dataclasses
import json
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from etils import epath


@dataclasses.dataclass(frozen=True)
class Sample:
    key: str  # unique id: webdataset KEY, relative file path without extension, or TFDS key/index
    source: str  # where it came from: "shard.tar:KEY.jpg", "/abs/file.png", "dataset[123]"
    image_bytes: bytes  # encoded, as stored
    org_caption: str = ""
    url: str = ""
    meta: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Failure:
    key: str
    source: str
    reason: str


@dataclasses.dataclass(frozen=True)
class WorkUnit:
    """One unit of input; each format subclasses it with the fields its reader needs."""
    format: ClassVar[str]  # the registered name of the format that reads it
    index: int  # position in the whole input; also the output shard index
    path: str  # the file or folder the unit is read from


class InputFormat(abc.ABC):
    """A registered input format. Instances hold the planning options (the format's config fields)."""
    name: ClassVar[str]  # the `input.format` value
    # The input.* config fields this format reads: its constructor's keyword arguments.
    options: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> InputFormat:
        """The format with its own fields taken from `options` (all input.* fields; others ignored)."""
        return cls(**{name: options[name] for name in cls.options if name in options})

    @abc.abstractmethod
    def plan(self, paths: list[epath.Path]) -> list[WorkUnit]:
        """The input named by `paths` (resolved, existing) as units numbered 0, 1, ... in a fixed order."""

    @staticmethod
    @abc.abstractmethod
    def read(unit: Any) -> Iterator[Sample | Failure]:
        """The unit's samples in a fixed order; a Failure in place of each unreadable one."""


FORMATS: dict[str, type[InputFormat]] = {}


def register(cls: type[InputFormat]) -> type[InputFormat]:
    """Class decorator: makes the format available as `input.format=<cls.name>`."""
    if cls.name in FORMATS:
        raise ValueError(f"input format {cls.name!r} is registered twice")
    FORMATS[cls.name] = cls
    return cls


def parse_json(text: str | None) -> dict[str, Any]:
    """A JSON object from a sidecar file, or {} for anything else (missing, malformed, not an object)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
