"""Input samples from image folders, img2dataset webdataset tars, and TFDS datasets.

The input is split into work units, in a deterministic order: a unit is one tar, a chunk of
`files_per_unit` files, or a range of `records_per_unit` records. A unit is also the unit of
output (one ArrayRecord shard) and of resumption after a crash.
Reading never raises for one bad sample: it yields a `Failure` instead and goes on.
"""

from __future__ import annotations

import dataclasses
import io
import json
import posixpath
import tarfile
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from etils import epath

FORMATS = ("folder", "webdataset", "tfds")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


class ConfigError(ValueError):
    """A bad config field or input path; the message names the field."""


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
    index: int  # position in the whole input; also the output shard index
    format: str
    path: str  # the tar, the TFDS dataset folder, or the folder root
    files: tuple[str, ...] = ()  # folder format: image files of this unit
    start: int = 0  # tfds format: record range [start, stop)
    stop: int = 0


def _split_paths(paths: str | Sequence[str]) -> list[str]:
    if isinstance(paths, str):
        paths = paths.split(",")
    return [p.strip() for p in paths if p and p.strip()]


def _glob(pattern: str) -> list[epath.Path]:
    if not any(c in pattern for c in "*?["):
        path = epath.Path(pattern)
        return [path] if path.exists() else []
    # Split at the first wildcard component: the rest is globbed under the fixed prefix.
    parts = pattern.split("/")
    first = next(i for i, part in enumerate(parts) if any(c in part for c in "*?["))
    base = "/".join(parts[:first]) or "/"
    if "://" in pattern and first <= 2:
        raise ConfigError(f"input.paths: {pattern!r} has a wildcard in the bucket name")
    base_path = epath.Path(base)
    if not base_path.exists():
        return []
    return sorted(base_path.glob("/".join(parts[first:])))


def _resolve(paths: str | Sequence[str]) -> list[epath.Path]:
    patterns = _split_paths(paths)
    if not patterns:
        raise ConfigError("input.paths: empty; give a folder, a glob or a comma-separated list of globs")
    found = []
    for pattern in patterns:
        matches = _glob(pattern)
        if not matches:
            raise ConfigError(f"input.paths: nothing matches {pattern!r}")
        found += matches
    return found


def plan_work_units(format: str, paths: str | Sequence[str], *, files_per_unit: int = 1000,
                    records_per_unit: int = 1000) -> list[WorkUnit]:
    """The whole input as work units, in a deterministic order (every host computes the same)."""
    if format not in FORMATS:
        raise ConfigError(f"input.format={format!r}: expected one of {FORMATS}")
    if files_per_unit < 1 or records_per_unit < 1:
        raise ConfigError("input.files_per_unit and input.records_per_unit must be >= 1")
    resolved = _resolve(paths)
    if format == "webdataset":
        tars = []
        for p in resolved:
            tars += sorted(p.glob("*.tar")) if p.is_dir() else [p]
        if not tars:
            raise ConfigError(f"input.paths: no .tar shards in {[str(p) for p in resolved]}")
        return [WorkUnit(i, format, str(t)) for i, t in enumerate(tars)]
    if format == "folder":
        units = []
        for root in resolved:
            if root.is_dir():
                files = sorted((p for p in _walk_files(root) if p.suffix.lower() in IMAGE_EXTENSIONS),
                               key=str)
                base = root
            else:
                files, base = [root], root.parent
            if not files:
                raise ConfigError(f"input.paths: no image files ({', '.join(IMAGE_EXTENSIONS)}) in {root}")
            for start in range(0, len(files), files_per_unit):
                chunk = tuple(str(p) for p in files[start:start + files_per_unit])
                units.append(WorkUnit(len(units), format, str(base), files=chunk))
        return units
    units = []
    for folder in resolved:
        size = len(_tfds_source(str(folder)))
        for start in range(0, size, records_per_unit):
            units.append(WorkUnit(len(units), format, str(folder), start=start,
                                  stop=min(start + records_per_unit, size)))
    return units


def _walk_files(folder: epath.Path) -> Iterator[epath.Path]:
    """All files under `folder` (epath has no recursive glob on gs://)."""
    for child in folder.iterdir():
        if child.is_dir():
            yield from _walk_files(child)
        else:
            yield child


def units_for_host(units: Sequence[WorkUnit], process_index: int, process_count: int) -> list[WorkUnit]:
    """This host's share: round-robin, so neighbouring (similar-sized) units spread over hosts."""
    return [u for u in units if u.index % process_count == process_index]


def read_unit(unit: WorkUnit) -> Iterator[Sample | Failure]:
    if unit.format == "folder":
        yield from _read_files(unit)
    elif unit.format == "webdataset":
        yield from _read_tar(unit)
    else:
        yield from _read_tfds(unit)


# --- folders --------------------------------------------------------------------------------


def _read_text(path: epath.Path) -> str | None:
    try:
        return path.read_text().strip() if path.exists() else None
    except (OSError, UnicodeDecodeError):
        return None


def _read_files(unit: WorkUnit) -> Iterator[Sample | Failure]:
    root = epath.Path(unit.path)
    for name in unit.files:
        path = epath.Path(name)
        relative = posixpath.splitext(str(path.relative_to(root)) if str(path).startswith(str(root)) else path.name)[0]
        try:
            data = path.read_bytes()
        except OSError as e:
            yield Failure(relative, str(path), f"unreadable: {e}")
            continue
        meta = _parse_json(_read_text(path.with_suffix(".json")))
        caption = _read_text(path.with_suffix(".txt"))
        yield Sample(relative, str(path), data, caption if caption is not None else meta.get("caption", ""),
                     str(meta.get("url", "")), meta)


def _parse_json(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


# --- webdataset tars ------------------------------------------------------------------------


def _split_member(name: str) -> tuple[str, str]:
    """"dir/000123.jpg" -> ("dir/000123", "jpg"): webdataset keys end at the first dot of the basename."""
    directory, base = posixpath.split(name)
    key, _, ext = base.partition(".")
    return posixpath.join(directory, key) if directory else key, ext.lower()


def _ends_with_tar_marker(path: str) -> bool:
    with epath.Path(path).open("rb") as f:
        f.seek(0, io.SEEK_END)
        size = f.tell()
        if size < 1024:
            return False
        f.seek(size - 1024)
        return not any(f.read(1024))


def _read_tar(unit: WorkUnit) -> Iterator[Sample | Failure]:
    shard = posixpath.basename(unit.path)
    groups: dict[str, dict[str, bytes]] = {}
    error = None
    try:
        with epath.Path(unit.path).open("rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = _split_member(member.name)
                data = tar.extractfile(member).read()
                if len(data) != member.size:
                    raise tarfile.ReadError(f"member {member.name} is truncated")
                groups.setdefault(key, {})[ext] = data
        if not _ends_with_tar_marker(unit.path):
            # Cut at a header boundary, a tar reads as if it ended there: only the missing
            # end-of-archive blocks tell.
            raise tarfile.ReadError("no end-of-archive marker (file truncated)")
    except (tarfile.TarError, OSError, EOFError) as e:
        error = f"{type(e).__name__}: {e}"
    for key, parts in groups.items():
        image_ext = next((e for e in ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff") if e in parts), None)
        if image_ext is None:
            yield Failure(key, f"{shard}:{key}", f"no image member (has {sorted(parts)})")
            continue
        meta = _parse_json(parts.get("json", b"").decode("utf-8", "replace"))
        caption = parts["txt"].decode("utf-8", "replace").strip() if "txt" in parts else meta.get("caption", "")
        yield Sample(key, f"{shard}:{key}.{image_ext}", parts[image_ext], caption or "",
                     str(meta.get("url", "") or ""), meta)
    if error is not None:
        yield Failure(f"{shard}#rest", unit.path, f"tar unreadable after {len(groups)} samples: {error}")


# --- TFDS / ArrayRecord ------------------------------------------------------------------------

_SOURCES: dict[str, Any] = {}


def _tfds_source(folder: str):
    if folder not in _SOURCES:
        import tensorflow_datasets as tfds
        try:
            builder = tfds.builder_from_directory(folder)
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"input.paths: {folder} is not a TFDS dataset folder ({e})") from None
        split = "train" if "train" in builder.info.splits else next(iter(builder.info.splits))
        _SOURCES[folder] = builder.as_data_source(split)
    return _SOURCES[folder]


def _text(value) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _read_tfds(unit: WorkUnit) -> Iterator[Sample | Failure]:
    source = _tfds_source(unit.path)
    name = posixpath.basename(unit.path.rstrip("/"))
    for index in range(unit.start, unit.stop):
        where = f"{name}[{index}]"
        try:
            record = source[index]
        except Exception as e:  # noqa: BLE001
            yield Failure(str(index), where, f"unreadable record: {e}")
            continue
        key = _text(record.get("key")) or str(index)
        image = record.get("image", record.get("jpg"))
        if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3:
            buffer = io.BytesIO()  # a decoded tfds Image feature: re-encode losslessly
            from PIL import Image
            Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buffer, "PNG")
            image = buffer.getvalue()
        if not isinstance(image, (bytes, np.bytes_)):
            yield Failure(key, where, "no encoded image in field 'image' or 'jpg'")
            continue
        caption = next((_text(record[f]) for f in ("org_caption", "caption", "text", "txt") if f in record), "")
        yield Sample(key, where, bytes(image), caption, _text(record.get("url")), {})
