"""Input samples from image folders, img2dataset webdataset tars, and TFDS / ArrayRecord datasets.

The input is split into work units, in a deterministic order: a unit is one tar, a chunk of
`files_per_unit` files, or a range of `records_per_unit` records. A unit is also the unit of
output (one ArrayRecord shard) and of resumption after a crash, so every host must plan the same
units from the same config: planning sorts everything it lists.
Reading never raises for one bad sample: it yields a `Failure` instead and goes on.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import logging
import posixpath
import re
import tarfile
import time
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from etils import epath

from recap_jax.errors import ConfigError

FORMATS = ("folder", "webdataset", "tfds")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
# Webdataset image members, in order of preference when a key has several.
WEBDATASET_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "jfif", "gif", "bmp", "tif", "tiff", "avif")
# How many keys a tar may interleave: a key's members are gathered until this many other keys have
# started after its last member (img2dataset writes them adjacent; this tolerates local reordering
# without holding a whole tar in memory).
TAR_REORDER_WINDOW = 64

# Reads that fail with an I/O error (not a format error) are retried: on gs:// a dropped connection
# must not turn a whole shard into failures (its unit would then count as done).
IO_ATTEMPTS = 3
IO_BACKOFF_S = 1.0

log = logging.getLogger(__name__)


class _TransientIOError(Exception):
    """An I/O error worth retrying (wraps the OSError)."""


def _is_permanent(error: OSError) -> bool:
    return isinstance(error, (FileNotFoundError, IsADirectoryError, PermissionError, NotADirectoryError))


def _retrying(read, what: str):
    """read() with up to IO_ATTEMPTS tries on transient OSErrors; the last error propagates."""
    for attempt in range(IO_ATTEMPTS):
        try:
            return read()
        except OSError as e:
            if _is_permanent(e) or attempt == IO_ATTEMPTS - 1:
                raise
            log.warning("%s: %s; retrying", what, e)
            time.sleep(IO_BACKOFF_S * 2 ** attempt)


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
class TfdsFields:
    """Which record fields hold what (the first present name wins)."""
    image: tuple[str, ...] = ("image", "jpg", "png", "webp")
    key: tuple[str, ...] = ("key",)
    caption: tuple[str, ...] = ("org_caption", "caption", "text", "txt")
    url: tuple[str, ...] = ("url",)


@dataclasses.dataclass(frozen=True)
class WorkUnit:
    index: int  # position in the whole input; also the output shard index
    format: str
    path: str  # the tar, the folder root, the TFDS dataset folder or the ArrayRecord file
    files: tuple[str, ...] = ()  # folder format: image files of this unit
    keys: tuple[str, ...] = ()  # folder format: their keys (unique over the whole input)
    start: int = 0  # tfds format: record range [start, stop)
    stop: int = 0
    split: str = ""  # tfds format: the split of a TFDS folder; "" for a bare ArrayRecord file
    fields: TfdsFields | None = None  # tfds format: field names


# --- planning ----------------------------------------------------------------------------------


def split_paths(paths: str | Sequence[str]) -> list[str]:
    """input.paths as a list: a comma-separated string (commas in braces kept) or a sequence."""
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
    patterns = split_paths(paths)
    if not patterns:
        raise ConfigError("input.paths: empty; give a folder, a glob or a comma-separated list of globs")
    found: dict[str, epath.Path] = {}  # ordered, without duplicates: a file named twice is read once
    for pattern in patterns:
        if pattern.startswith("gs://"):
            require_gcs("input.paths")
        expanded = expand_braces(pattern)
        for one in expanded:
            matches = _glob(one)
            if not matches:
                raise ConfigError(f"input.paths: nothing matches {one!r}"
                                  + (f" (from {pattern!r})" if len(expanded) > 1 else ""))
            for match in matches:
                found.setdefault(str(match), match)
    return list(found.values())


def require_gcs(field: str) -> None:
    """etils.epath reads gs:// through gcsfs: say so at start-up, naming the field."""
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        raise ConfigError(f"{field}: gs:// paths need gcsfs (pip install gcsfs, "
                          "or the project's [gcs] / [tpu] extra)") from None


def plan_work_units(format: str, paths: str | Sequence[str], *, files_per_unit: int = 1000,
                    records_per_unit: int = 1000, split: str | None = None,
                    fields: TfdsFields | None = None) -> list[WorkUnit]:
    """The whole input as work units, in a deterministic order (every host computes the same).

    `paths`: a folder, a file, a glob or brace pattern, or several (a list or comma-separated).
    `split`, `fields`: tfds format only (default: "train" if present, else the first split).
    """
    if format not in FORMATS:
        raise ConfigError(f"input.format={format!r}: expected one of {FORMATS}")
    if files_per_unit < 1:
        raise ConfigError(f"input.files_per_unit={files_per_unit}: must be >= 1")
    if records_per_unit < 1:
        raise ConfigError(f"input.records_per_unit={records_per_unit}: must be >= 1")
    resolved = _resolve(paths)
    if format == "webdataset":
        return _plan_tars(resolved)
    if format == "folder":
        return _plan_folders(resolved, files_per_unit)
    return _plan_tfds(resolved, records_per_unit, split, fields or TfdsFields())


def _plan_tars(resolved: list[epath.Path]) -> list[WorkUnit]:
    tars: dict[str, None] = {}
    for p in resolved:
        if p.is_dir():
            tars.update((str(t), None) for t in sorted(p.iterdir()) if t.name.endswith(TAR_SUFFIXES))
        else:
            tars[str(p)] = None
    if not tars:
        raise ConfigError(f"input.paths: no tar shards ({', '.join(TAR_SUFFIXES)}) in "
                          f"{[str(p) for p in resolved]}")
    return [WorkUnit(i, "webdataset", t) for i, t in enumerate(tars)]


def _plan_folders(resolved: list[epath.Path], files_per_unit: int) -> list[WorkUnit]:
    roots: list[tuple[epath.Path, list[epath.Path]]] = []
    for root in resolved:
        if root.is_dir():
            files = sorted((p for p in _walk_files(root) if p.suffix.lower() in IMAGE_EXTENSIONS), key=str)
            if not files:
                raise ConfigError(f"input.paths: no image files ({', '.join(IMAGE_EXTENSIONS)}) in {root}")
            roots.append((root, files))
        else:
            roots.append((root.parent, [root]))
    keys = _unique_file_keys([(str(root), str(f)) for root, files in roots for f in files])
    units, position = [], 0
    for root, files in roots:
        for start in range(0, len(files), files_per_unit):
            chunk = tuple(str(p) for p in files[start:start + files_per_unit])
            units.append(WorkUnit(len(units), "folder", str(root), files=chunk,
                                  keys=tuple(keys[position:position + len(chunk)])))
            position += len(chunk)
    return units


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


def _walk_files(folder: epath.Path) -> Iterator[epath.Path]:
    """All files under `folder` (epath has no recursive glob on gs://); hidden ones skipped."""
    for child in folder.iterdir():
        if child.name.startswith("."):
            continue
        if child.is_dir():
            yield from _walk_files(child)
        else:
            yield child


def _plan_tfds(resolved: list[epath.Path], records_per_unit: int, split: str | None,
               fields: TfdsFields) -> list[WorkUnit]:
    units = []
    for path in resolved:
        if path.is_dir():
            split_name = _tfds_split(str(path), split)
            size = len(_tfds_source(str(path), split_name))
        else:
            split_name = ""
            size = len(_array_record_source(str(path)))
        for start in range(0, size, records_per_unit):
            units.append(WorkUnit(len(units), "tfds", str(path), start=start,
                                  stop=min(start + records_per_unit, size), split=split_name, fields=fields))
    return units


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
        digest.update(json.dumps(dataclasses.asdict(unit), sort_keys=True).encode())
    return digest.hexdigest()[:16]


def read_unit(unit: WorkUnit) -> Iterator[Sample | Failure]:
    """The unit's samples in a fixed order; a Failure in place of each unreadable one."""
    if unit.format == "folder":
        yield from _read_files(unit)
    elif unit.format == "webdataset":
        yield from _read_tar(unit)
    elif unit.format == "tfds":
        yield from _read_tfds(unit)
    else:
        raise ValueError(f"unknown unit format {unit.format!r}")


# --- folders -----------------------------------------------------------------------------------


def _read_text(path: epath.Path) -> str | None:
    try:
        return path.read_text().strip() if path.exists() else None
    except (OSError, UnicodeDecodeError):
        return None


def _read_files(unit: WorkUnit) -> Iterator[Sample | Failure]:
    keys = unit.keys or tuple(posixpath.splitext(posixpath.basename(f))[0] for f in unit.files)
    for name, key in zip(unit.files, keys):
        path = epath.Path(name)
        try:
            data = _retrying(path.read_bytes, name)
        except OSError as e:
            yield Failure(key, name, f"unreadable file: {type(e).__name__}: {e}")
            continue
        meta = _parse_json(_read_text(path.with_suffix(".json")))
        caption = _read_text(path.with_suffix(".txt"))
        yield Sample(key, name, data, caption if caption is not None else str(meta.get("caption", "") or ""),
                     str(meta.get("url", "") or ""), meta)


def _parse_json(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


# --- webdataset tars ---------------------------------------------------------------------------


def _split_member(name: str) -> tuple[str, str]:
    """"dir/000123.jpg" -> ("dir/000123", "jpg"): webdataset keys end at the first dot of the basename."""
    directory, base = posixpath.split(name)
    key, _, ext = base.partition(".")
    return posixpath.join(directory, key) if directory else key, ext.lower()


def _is_compressed(head: bytes) -> bool:
    return head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00"))


def _ends_with_tar_marker(path: str) -> bool:
    """An uncompressed tar ends with (at least) two zero blocks; a tar cut at a member boundary
    reads as if it ended there, and only their absence tells."""
    with epath.Path(path).open("rb") as f:
        if _is_compressed(f.read(6)):
            return True  # a cut compressed stream fails in the decompressor instead
        f.seek(0, io.SEEK_END)
        size = f.tell()
        if size < 1024:
            return False
        f.seek(size - 1024)
        return not any(f.read(1024))


class _TarGroups:
    """Gathers tar members into samples by key, releasing a key once TAR_REORDER_WINDOW other
    keys have started after it (first-seen order, so the output order is deterministic)."""

    def __init__(self, shard: str, window: int | None = None):
        self.shard, self.window = shard, window or TAR_REORDER_WINDOW
        self.pending: collections.OrderedDict[str, dict[str, bytes]] = collections.OrderedDict()
        self.released: set[str] = set()
        self.last_key: str | None = None  # the key being read: the one a cut would damage

    def add(self, key: str, ext: str, data: bytes) -> Iterator[Sample | Failure]:
        if key in self.released:
            log.warning("%s: member %s.%s comes after its sample was released; ignored", self.shard, key, ext)
            return
        self.pending.setdefault(key, {})[ext] = data  # a key keeps its first-seen place
        while len(self.pending) > self.window:
            yield self._release(*self.pending.popitem(last=False))

    def flush(self, broken_key: str | None = None, broken_reason: str = "") -> Iterator[Sample | Failure]:
        while self.pending:
            key, parts = self.pending.popitem(last=False)
            if key == broken_key:
                self.released.add(key)
                yield Failure(key, f"{self.shard}:{key}", broken_reason)
            else:
                yield self._release(key, parts)

    def _release(self, key: str, parts: dict[str, bytes]) -> Sample | Failure:
        self.released.add(key)
        image_ext = next((e for e in WEBDATASET_IMAGE_EXTS if e in parts), None)
        if image_ext is None:
            return Failure(key, f"{self.shard}:{key}", f"no image member (has {sorted(parts) or 'nothing'})")
        meta = _parse_json(parts.get("json", b"").decode("utf-8", "replace"))
        if "txt" in parts:
            caption = parts["txt"].decode("utf-8", "replace").strip()
        else:
            caption = str(meta.get("caption", "") or "")
        return Sample(key, f"{self.shard}:{key}.{image_ext}", parts[image_ext], caption,
                      str(meta.get("url", "") or ""), meta)


def _open_binary(path: str):
    return epath.Path(path).open("rb")


def _read_tar(unit: WorkUnit) -> Iterator[Sample | Failure]:
    """Reads the tar; after a transient I/O error reads it again from the start, skipping the
    keys already yielded (keys are unique within a tar), up to IO_ATTEMPTS times."""
    yielded: set[str] = set()
    for attempt in range(IO_ATTEMPTS):
        last = attempt == IO_ATTEMPTS - 1
        try:
            for item in _read_tar_once(unit, retry_io=not last):
                if item.key not in yielded:
                    yielded.add(item.key)
                    yield item
            return
        except _TransientIOError as e:
            log.warning("%s: %s; reading it again", unit.path, e)
            time.sleep(IO_BACKOFF_S * 2 ** attempt)


def _read_tar_once(unit: WorkUnit, retry_io: bool) -> Iterator[Sample | Failure]:
    shard = posixpath.basename(unit.path)
    groups = _TarGroups(shard)
    error = None
    try:
        with _open_binary(unit.path) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                key, ext = _split_member(member.name)
                if not member.isfile() or not key or posixpath.basename(key).startswith("."):
                    continue  # folders, links, hidden files (e.g. macOS "._x")
                groups.last_key = key
                data = tar.extractfile(member).read()
                if len(data) != member.size:
                    raise tarfile.ReadError(f"member {member.name} is truncated")
                yield from groups.add(key, ext, data)
        if not _ends_with_tar_marker(unit.path):
            raise tarfile.ReadError("no end-of-archive marker (file truncated)")
    except (tarfile.TarError, EOFError, zlib.error) as e:  # the bytes themselves are bad
        error = f"{type(e).__name__}: {e}"
    except OSError as e:
        if retry_io and not _is_permanent(e):
            raise _TransientIOError(f"{type(e).__name__}: {e}") from e
        error = f"{type(e).__name__}: {e}"
    if error is None:
        yield from groups.flush()
        return
    # The last key read may be missing members (or bytes): it fails rather than being captioned
    # from a partial sample. Whatever came after the cut is unknown: one Failure stands for it.
    yield from groups.flush(groups.last_key, f"tar truncated or corrupt inside this sample: {error}")
    yield Failure(f"{shard}#rest", unit.path,
                  f"tar unreadable after {len(groups.released)} samples, the rest is lost: {error}")


# --- TFDS folders and ArrayRecord files ------------------------------------------------------------

_SOURCES: dict[tuple[str, str], Any] = {}
_READ_CHUNK = 32  # records fetched per random-access call


def _tfds_builder(folder: str):
    import tensorflow_datasets as tfds
    try:
        return tfds.builder_from_directory(folder)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"input.paths: {folder} is not a TFDS dataset folder ({type(e).__name__}: {e})") from None


def _tfds_split(folder: str, split: str | None) -> str:
    splits = list(_tfds_builder(folder).info.splits)
    if split is None:
        return "train" if "train" in splits else splits[0]
    if split not in splits:
        raise ConfigError(f"input.split={split!r}: {folder} has splits {splits}")
    return split


def _tfds_source(folder: str, split: str):
    if (folder, split) not in _SOURCES:
        _SOURCES[(folder, split)] = _tfds_builder(folder).as_data_source(split)
    return _SOURCES[(folder, split)]


def _array_record_source(path: str):
    if (path, "") not in _SOURCES:
        from array_record.python.array_record_data_source import ArrayRecordDataSource
        try:
            _SOURCES[(path, "")] = ArrayRecordDataSource([path])
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"input.paths: {path} is neither a TFDS dataset folder nor an ArrayRecord file "
                              f"({type(e).__name__}: {e})") from None
    return _SOURCES[(path, "")]


def parse_tf_example(data: bytes) -> dict[str, Any]:
    """A serialized tf.train.Example (what TFDS writes) -> {name: bytes | int | float | list}."""
    from tensorflow_datasets.proto import tf_example_pb2
    example = tf_example_pb2.Example.FromString(data)
    record = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        values = list(getattr(feature, kind).value) if kind else []
        record[name] = values[0] if len(values) == 1 else values
    return record


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _first(record: dict[str, Any], names: tuple[str, ...]):
    return next((record[n] for n in names if n in record), None)


def _records(unit: WorkUnit) -> Iterator[tuple[int, dict | None, str]]:
    """(index, record or None, error) for the unit's range, fetched in chunks."""
    source = _tfds_source(unit.path, unit.split) if unit.split else _array_record_source(unit.path)

    def decode(raw):
        return raw if unit.split else parse_tf_example(raw)

    for chunk_start in range(unit.start, unit.stop, _READ_CHUNK):
        indices = list(range(chunk_start, min(chunk_start + _READ_CHUNK, unit.stop)))
        try:
            batch = [decode(r) for r in source.__getitems__(indices)]
        except Exception:  # noqa: BLE001 - one bad record: fall back to one by one to find it
            batch = None
        for offset, index in enumerate(indices):
            if batch is not None:
                yield index, batch[offset], ""
                continue
            try:
                yield index, decode(_retrying(lambda: source[index], f"{unit.path}[{index}]")), ""
            except Exception as e:  # noqa: BLE001
                yield index, None, f"unreadable record: {type(e).__name__}: {e}"


def _read_tfds(unit: WorkUnit) -> Iterator[Sample | Failure]:
    fields = unit.fields or TfdsFields()
    name = posixpath.basename(unit.path.rstrip("/"))
    for index, record, error in _records(unit):
        where = f"{name}[{index}]"
        if record is None:
            yield Failure(str(index), where, error)
            continue
        key = _text(_first(record, fields.key)) or str(index)
        image = _first(record, fields.image)
        if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3:
            image = _encode_png(image)  # a decoded TFDS Image feature: re-encode losslessly
        elif isinstance(image, np.ndarray) and image.ndim == 0:
            image = image.item()
        if not isinstance(image, (bytes, np.bytes_)):  # (empty bytes go on, to fail as an empty file)
            yield Failure(key, where, f"no encoded image in fields {list(fields.image)}")
            continue
        yield Sample(key, where, bytes(image), _text(_first(record, fields.caption)).strip(),
                     _text(_first(record, fields.url)), {})


def _encode_png(pixels: np.ndarray) -> bytes:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).save(buffer, "PNG")
    return buffer.getvalue()
