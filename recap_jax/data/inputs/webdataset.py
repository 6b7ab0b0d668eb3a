"""`input.format=webdataset`: img2dataset-style tar shards (KEY.jpg + KEY.txt + KEY.json members).

A unit is one tar. Members are grouped into samples by key; a truncated or corrupt tar yields the
samples read before the damage, then Failures, and is read again after a transient I/O error.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import logging
import posixpath
import tarfile
import zlib
from collections.abc import Iterator
from typing import ClassVar

from etils import epath

from recap_jax.data import storage
from recap_jax.data.captions_map import caption_from, parse_caption_source
from recap_jax.data.inputs.base import Failure, InputFormat, Sample, WorkUnit, parse_json, register
from recap_jax.errors import ConfigError

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
# Image members, in order of preference when a key has several.
WEBDATASET_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "jfif", "gif", "bmp", "tif", "tiff", "avif")
# How many keys a tar may interleave: a key's members are gathered until this many other keys have
# started after its last member (img2dataset writes them adjacent; this tolerates local reordering
# without holding a whole tar in memory).
TAR_REORDER_WINDOW = 64

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TarUnit(WorkUnit):
    format: ClassVar[str] = "webdataset"
    org_caption: str = ""  # input.org_caption: where the alt-text is ("" = KEY.txt, else json "caption")


@register
class WebdatasetInput(InputFormat):
    name = "webdataset"
    options = ("org_caption",)

    def __init__(self, org_caption: str = ""):
        if org_caption:  # fails at planning, naming the field
            parse_caption_source(org_caption, "input.org_caption", kinds=("txt", "json"))
        self.org_caption = org_caption

    def plan(self, paths: list[epath.Path]) -> list[TarUnit]:
        tars: dict[str, None] = {}
        for p in paths:
            if p.is_dir():
                tars.update((str(t), None) for t in sorted(p.iterdir()) if t.name.endswith(TAR_SUFFIXES))
            else:
                tars[str(p)] = None
        if not tars:
            raise ConfigError(f"input.paths: no tar shards ({', '.join(TAR_SUFFIXES)}) in "
                              f"{[str(p) for p in paths]}")
        return [TarUnit(i, t, self.org_caption) for i, t in enumerate(tars)]

    @staticmethod
    def read(unit: TarUnit) -> Iterator[Sample | Failure]:
        """Reads the tar; after a transient I/O error reads it again from the start, skipping the
        keys already yielded (keys are unique within a tar), up to IO_ATTEMPTS times."""
        yielded: set[str] = set()
        for attempt in range(storage.IO_ATTEMPTS):
            last = attempt == storage.IO_ATTEMPTS - 1
            try:
                for item in _read_tar_once(unit, retry_io=not last):
                    if item.key not in yielded:
                        yielded.add(item.key)
                        yield item
                return
            except storage.TransientIOError as e:
                log.warning("%s: %s; reading it again", unit.path, e)
                storage.backoff(attempt)


def split_member(name: str) -> tuple[str, str]:
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

    def __init__(self, shard: str, window: int | None = None, org_caption: str = ""):
        self.shard, self.window = shard, window or TAR_REORDER_WINDOW
        self.org_caption = parse_caption_source(org_caption, "input.org_caption", ("txt", "json")) if org_caption else None
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
        meta = parse_json(parts.get("json", b"").decode("utf-8", "replace"))
        if self.org_caption is not None:  # named by the config: a sample without it is a failure
            caption = caption_from(self.org_caption, parts, meta, None)
            if caption is None:
                return Failure(key, f"{self.shard}:{key}", f"mapped caption missing: org_caption ({self.org_caption})")
        elif "txt" in parts:
            caption = parts["txt"].decode("utf-8", "replace").strip()
        else:
            caption = str(meta.get("caption", "") or "")
        return Sample(key, f"{self.shard}:{key}.{image_ext}", parts[image_ext], caption,
                      str(meta.get("url", "") or ""), meta)


def _open_binary(path: str):
    return epath.Path(path).open("rb")


def _read_tar_once(unit: TarUnit, retry_io: bool) -> Iterator[Sample | Failure]:
    shard = posixpath.basename(unit.path)
    groups = _TarGroups(shard, org_caption=unit.org_caption)
    error = None
    try:
        with _open_binary(unit.path) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                key, ext = split_member(member.name)
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
        if retry_io and not storage.is_permanent(e):
            raise storage.TransientIOError(f"{type(e).__name__}: {e}") from e
        error = f"{type(e).__name__}: {e}"
    if error is None:
        yield from groups.flush()
        return
    # The last key read may be missing members (or bytes): it fails rather than being captioned
    # from a partial sample. Whatever came after the cut is unknown: one Failure stands for it.
    yield from groups.flush(groups.last_key, f"tar truncated or corrupt inside this sample: {error}")
    yield Failure(f"{shard}#rest", unit.path,
                  f"tar unreadable after {len(groups.released)} samples, the rest is lost: {error}")
