"""The caption job's input: registered formats that plan work units and read them into samples.

    units = plan_from_config(config.input)       # every host plans the same units
    mine = units_for_host(units, process_index, process_count)
    for item in read_unit(mine[0]): ...          # Sample or Failure, in a fixed order

A format is one module here (see docs/data.md, "Adding an input format").
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

import ml_collections

# Importing a format module registers it.
from recap_jax.data.inputs import folder, tfds, webdataset  # noqa: F401
from recap_jax.data.inputs.base import FORMATS, Failure, InputFormat, Sample, WorkUnit
from recap_jax.data.inputs.paths import expand_braces, resolve_paths
from recap_jax.errors import ConfigError

__all__ = ["FORMATS", "Failure", "InputFormat", "Sample", "WorkUnit", "expand_braces", "get_format",
           "plan_from_config", "plan_work_units", "read_unit", "units_fingerprint", "units_for_host"]


def get_format(name: str, options: dict[str, Any] | None = None) -> InputFormat:
    """The registered format `name`, with its own fields taken from `options` (the input.* fields)."""
    if name not in FORMATS:
        raise ConfigError(f"input.format={name!r}: expected one of {tuple(FORMATS)}")
    return FORMATS[name].from_options(options or {})


def plan_work_units(format: str, paths: str | Sequence[str], **options: Any) -> list[WorkUnit]:
    """The whole input as work units, in a deterministic order (every host computes the same).

    `paths`: a folder, a file, a glob or brace pattern, or several (a list or comma-separated).
    `options`: input.* config fields; each format reads its own (e.g. folder: files_per_unit;
    tfds: records_per_unit, split, fields) and ignores the others.
    """
    return get_format(format, options).plan(resolve_paths(paths))


def plan_from_config(input_config: ml_collections.ConfigDict) -> list[WorkUnit]:
    """`plan_work_units` from the caption config's `input` section."""
    options = input_config.to_dict()
    return plan_work_units(options.pop("format"), options.pop("paths"), **options)


def read_unit(unit: WorkUnit) -> Iterator[Sample | Failure]:
    """The unit's samples in a fixed order; a Failure in place of each unreadable one."""
    return FORMATS[unit.format].read(unit)


def units_for_host(units: Sequence[WorkUnit], process_index: int, process_count: int) -> list[WorkUnit]:
    """This host's share: round-robin, so neighbouring (similar-sized) units spread over hosts.

    Shares are disjoint and cover all units for any process_count; a resumed run may use another
    process_count, since done units are recorded per unit, not per host.
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    return [u for u in units if u.index % process_count == process_index]


def units_fingerprint(units: Sequence[WorkUnit]) -> str:
    """A short hash of the whole plan: changes if any input file, range or key changes."""
    digest = hashlib.sha256()
    for unit in units:
        digest.update(json.dumps({"format": unit.format, **dataclasses.asdict(unit)}, sort_keys=True).encode())
    return digest.hexdigest()[:16]
