"""A captions-only caption output (`output.store_images=false`) joined back with its images.

Such an output keeps every record's `key` and `sha256` but not the image bytes; the images stay in
the shards the caption job read (`input.format` webdataset tars or an image folder). The job's
`run_config.json` records those (`input.format`, `input.paths`), so by default the join needs no
more configuration. `JoinedRecords` is a random-access source like an output with images: record
i is output record i, in the output's order, with its image read from the input by key and its
sha256 checked. So the CLIP trainer sees exactly the records a full output would give it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from etils import epath

from recap_jax.data import inputs
from recap_jax.data.inputs.paths import split_paths
from recap_jax.data.inputs.webdataset import WEBDATASET_IMAGE_EXTS, split_member
from recap_jax.data.schema import image_sha256
from recap_jax.data.writer import RUN_CONFIG
from recap_jax.errors import ConfigError, UserError
from recap_jax.release.webdataset_records import index_tar

JOINABLE_FORMATS = ("webdataset", "folder")
FIELD = "data.image_paths"  # the CLIP trainer's field; other callers name their own


class ImageMismatchError(UserError):
    """An input image's bytes are not the ones the caption job hashed (the input changed since)."""


def recorded_input(output_dir: str, field: str = FIELD) -> tuple[str, str]:
    """(input.format, input.paths) the caption job recorded in OUTPUT_DIR/run_config.json."""
    path = epath.Path(output_dir) / RUN_CONFIG
    recorded = json.loads(path.read_text()) if path.exists() else {}
    if not recorded.get("input.paths"):
        raise ConfigError(f"{field}: {output_dir} holds no images (output.store_images=false) and its "
                          f"{RUN_CONFIG} names no input; give the caption job's input shards")
    return recorded.get("input.format", ""), recorded["input.paths"]


def image_locations(paths: str | Sequence[str], format: str, field: str = FIELD) -> dict[str, tuple[str, int, int]]:
    """key -> (file, offset, size) of every image in the caption job's input (size -1: whole file)."""
    if format not in JOINABLE_FORMATS:
        raise ConfigError(f"data.image_format={format!r}: images can be joined from {JOINABLE_FORMATS} input "
                          "(a tfds input keeps them: caption it with output.store_images=true)")
    try:
        units = inputs.plan_work_units(format, paths)
    except ConfigError as e:
        raise ConfigError(f"{field}: {e}") from None
    out: dict[str, tuple[str, int, int]] = {}
    for unit in units:
        if format == "folder":
            out.update((key, (name, 0, -1)) for key, name in zip(unit.keys, unit.files))
            continue
        for key, members in index_tar(unit.path, split_member, field=field):
            ext = next((e for e in WEBDATASET_IMAGE_EXTS if e in members), None)
            if ext is not None:
                out.setdefault(key, (unit.path, *members[ext]))
    return out


def read_image(location: tuple[str, int, int]) -> bytes:
    path, offset, size = location
    with epath.Path(path).open("rb") as f:
        if size < 0:
            return f.read()
        f.seek(offset)
        return f.read(size)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class JoinedRecords:
    """`len()` and `[i]`: the captions-only records of `source` with `image` read from the input."""

    def __init__(self, source: Any, output_dir: str, image_paths: str = "", image_format: str = "",
                 field: str = FIELD):
        recorded_format, recorded_paths = (("", "") if image_paths and image_format
                                           else recorded_input(output_dir, field))
        self.field = field
        self.format = image_format or recorded_format
        paths = split_paths(image_paths or recorded_paths)
        self._source = source
        self._locations = image_locations(paths, self.format, field)
        self._keys = [_text(source[i]["key"]) for i in range(len(source))]
        absent = [k for k in self._keys if k not in self._locations]
        if absent:
            raise ConfigError(f"{field}: {len(absent)} of {len(self._keys)} records of {output_dir} have no image in "
                              f"{', '.join(paths)} (first: {absent[:3]}); name the input the caption job read")

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = dict(self._source[index])
        data = read_image(self._locations[self._keys[index]])
        if image_sha256(data) != _text(record["sha256"]):
            raise ImageMismatchError(f"{self.field}: the image of key {self._keys[index]!r} differs from the one "
                                     "captioned (sha256 mismatch); the input changed since the caption job")
        record["image"] = data
        return record

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return [self[i] for i in indices]


def has_images(source: Any) -> bool:
    """Whether a TFDS data source's records carry the image bytes."""
    return len(source) == 0 or "image" in source[0]
