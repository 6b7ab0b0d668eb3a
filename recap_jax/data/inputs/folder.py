"""`input.format=folder`: image files under folders (with optional KEY.txt / KEY.json sidecars).

A unit is a chunk of `input.files_per_unit` files, sorted by path.
"""

from __future__ import annotations

import collections
import dataclasses
import posixpath
from collections.abc import Iterator
from typing import ClassVar

from etils import epath

from recap_jax.data.inputs.base import Failure, InputFormat, Sample, WorkUnit, parse_json, register
from recap_jax.data.storage import retrying
from recap_jax.errors import ConfigError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif")


@dataclasses.dataclass(frozen=True)
class FolderUnit(WorkUnit):
    format: ClassVar[str] = "folder"
    files: tuple[str, ...] = ()  # the image files of this unit
    keys: tuple[str, ...] = ()  # their keys (unique over the whole input)


@register
class FolderInput(InputFormat):
    name = "folder"
    options = ("files_per_unit",)

    def __init__(self, files_per_unit: int = 1000):
        if files_per_unit < 1:
            raise ConfigError(f"input.files_per_unit={files_per_unit}: must be >= 1")
        self.files_per_unit = files_per_unit

    def plan(self, paths: list[epath.Path]) -> list[FolderUnit]:
        roots: list[tuple[epath.Path, list[epath.Path]]] = []
        for root in paths:
            if root.is_dir():
                files = sorted((p for p in walk_files(root) if p.suffix.lower() in IMAGE_EXTENSIONS), key=str)
                if not files:
                    raise ConfigError(f"input.paths: no image files ({', '.join(IMAGE_EXTENSIONS)}) in {root}")
                roots.append((root, files))
            else:
                roots.append((root.parent, [root]))
        keys = _unique_file_keys([(str(root), str(f)) for root, files in roots for f in files])
        units, position = [], 0
        for root, files in roots:
            for start in range(0, len(files), self.files_per_unit):
                chunk = tuple(str(p) for p in files[start:start + self.files_per_unit])
                units.append(FolderUnit(len(units), str(root), files=chunk,
                                        keys=tuple(keys[position:position + len(chunk)])))
                position += len(chunk)
        return units

    @staticmethod
    def read(unit: FolderUnit) -> Iterator[Sample | Failure]:
        keys = unit.keys or tuple(posixpath.splitext(posixpath.basename(f))[0] for f in unit.files)
        for name, key in zip(unit.files, keys):
            path = epath.Path(name)
            try:
                data = retrying(path.read_bytes, name)
            except OSError as e:
                yield Failure(key, name, f"unreadable file: {type(e).__name__}: {e}")
                continue
            meta = parse_json(_read_text(path.with_suffix(".json")))
            caption = _read_text(path.with_suffix(".txt"))
            yield Sample(key, name, data, caption if caption is not None else str(meta.get("caption", "") or ""),
                         str(meta.get("url", "") or ""), meta)


def _unique_file_keys(files: list[tuple[str, str]]) -> list[str]:
    """Key = path relative to its root without the extension ("sub/cat"); where two files would
    share a key ("cat.jpg" and "cat.png", or the same name under two roots), the extension and then
    the full path are kept, so keys stay unique and still say which file."""
    def relative(root: str, file: str) -> str:
        return file[len(root):].lstrip("/") if file.startswith(root.rstrip("/") + "/") else posixpath.basename(file)

    keys = [posixpath.splitext(relative(root, f))[0] for root, f in files]
    for attempt in (lambda root, f: relative(root, f), lambda root, f: f):
        counts = collections.Counter(keys)
        keys = [attempt(root, f) if counts[k] > 1 else k for k, (root, f) in zip(keys, files)]
    return keys


def walk_files(folder: epath.Path) -> Iterator[epath.Path]:
    """All files under `folder` (epath has no recursive glob on gs://); hidden ones skipped."""
    for child in folder.iterdir():
        if child.name.startswith("."):
            continue
        if child.is_dir():
            yield from walk_files(child)
        else:
            yield child


def _read_text(path: epath.Path) -> str | None:
    try:
        return path.read_text().strip() if path.exists() else None
    except (OSError, UnicodeDecodeError):
        return None
