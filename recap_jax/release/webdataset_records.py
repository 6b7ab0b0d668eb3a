"""The released data as users hold it, as random-access records for the CLIP trainer.

img2dataset webdataset tars (KEY.jpg, KEY.txt, KEY.json), captions taken as a `captions_map`
names them (`recap_jax.data.captions_map`), optionally from Parquet joined by `key`. The tars
are indexed once (member offsets), then each record is read by seeking, so grain can shuffle and
read them like our ArrayRecord output: the same samples in the same order give the same records.
Samples whose mapped caption is missing are left out and listed in `missing` (key, tar, reason).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import posixpath
import tarfile
import threading
from collections.abc import Callable, Sequence
from typing import Any

from etils import epath

from recap_jax.data.captions_map import CaptionSource, caption_from, parse_captions_map, parse_meta
from recap_jax.data.inputs.webdataset import WEBDATASET_IMAGE_EXTS
from recap_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class _Entry:
    tar: int  # index into the tar list
    key: str
    members: dict[str, tuple[int, int]]  # extension -> (data offset, size)
    image_ext: str


def _split_member(name: str) -> tuple[str, str]:
    base = posixpath.basename(name)
    key, _, ext = base.partition(".")
    return key, ext.lower()


def index_tar(path: str, split_member: Callable[[str], tuple[str, str]] = _split_member,
              field: str = "data.folders") -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """[(key, {ext: (offset, size)})] in member order (uncompressed tars only: they are seekable).

    `split_member`: member name -> (key, extension); `field` names the config field in errors."""
    groups: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with epath.Path(path).open("rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for member in tar:
                key, ext = split_member(member.name)
                if member.isfile() and key and not key.startswith("."):
                    groups.setdefault(key, {})[ext] = (member.offset_data, member.size)
    except tarfile.ReadError as e:
        raise ConfigError(f"{field}: {path} is not an uncompressed tar ({e}); the CLIP trainer reads "
                          "img2dataset's plain .tar shards") from None
    return list(groups.items())


def _read_parquet_captions(files: Sequence[str], columns: set[str]) -> dict[str, dict[str, Any]]:
    import pyarrow.parquet as pq

    out: dict[str, dict[str, Any]] = {}
    for f in files:
        table = pq.read_table(f, columns=["key", *sorted(columns)])
        for row in table.to_pylist():
            out[str(row["key"])] = row
    return out


class WebdatasetRecords:
    """`len()` and `[i]` -> {key, url, org_caption, re_caption, image} over indexed tars."""

    def __init__(self, tars: Sequence[str], captions_map: str, parquet: Sequence[str] = ()):
        self.tars = [os.fspath(t) for t in tars]
        if not self.tars:
            raise ConfigError("data.folders: no .tar shards given")
        self.mapping: dict[str, CaptionSource] = parse_captions_map(captions_map, "data.captions_map")
        columns = {s.field for s in self.mapping.values() if s.kind == "parquet"}
        if columns and not parquet:
            raise ConfigError("data.captions_parquet: data.captions_map reads parquet: columns; name the Parquet files")
        self._parquet = _read_parquet_captions(parquet, columns) if columns else {}
        self.missing: list[dict[str, str]] = []
        self._entries: list[_Entry] = []
        self._local = threading.local()
        for t, path in enumerate(self.tars):
            for key, members in index_tar(path):
                self._add(t, path, key, members)
        if not self._entries:
            raise ConfigError(f"data.captions_map: no sample of {len(self.tars)} tar(s) has every mapped caption "
                              f"({captions_map}); first problems: {self.missing[:3]}")

    def _add(self, t: int, path: str, key: str, members: dict[str, tuple[int, int]]) -> None:
        image_ext = next((e for e in WEBDATASET_IMAGE_EXTS if e in members), None)
        if image_ext is None:
            self.missing.append({"key": key, "tar": path, "reason": f"no image member (has {sorted(members)})"})
            return
        entry = _Entry(t, key, members, image_ext)
        record = self._captions(entry)
        lacking = [f"{target} ({source})" for target, source in self.mapping.items() if record[target] is None]
        if lacking:
            self.missing.append({"key": key, "tar": path, "reason": f"mapped caption missing: {', '.join(lacking)}"})
            return
        self._entries.append(entry)

    def _file(self, t: int):
        files = self._local.__dict__.setdefault("files", {})  # one handle per thread and tar
        if t not in files:
            files[t] = open(self.tars[t], "rb")
        return files[t]

    def _read(self, entry: _Entry, ext: str) -> bytes | None:
        if ext not in entry.members:
            return None
        offset, size = entry.members[ext]
        f = self._file(entry.tar)
        f.seek(offset)
        return f.read(size)

    def _captions(self, entry: _Entry) -> dict[str, Any]:
        members = {ext: self._read(entry, ext) for ext in ("txt",) if ext in entry.members}
        meta = parse_meta(self._read(entry, "json"))
        row = self._parquet.get(entry.key) if self._parquet else None
        out = {target: caption_from(source, members, meta, row) for target, source in self.mapping.items()}
        out["url"] = str((meta or {}).get("url", "") or "")
        return out

    def __getstate__(self) -> dict[str, Any]:  # grain worker processes get a copy without open files
        state = dict(self.__dict__)
        state.pop("_local")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self._entries[index]
        captions = self._captions(entry)
        return {"key": entry.key, "url": captions["url"], "org_caption": captions["org_caption"],
                "re_caption": captions["re_caption"], "image": self._read(entry, entry.image_ext)}


def tar_paths(paths: Sequence[str]) -> list[str]:
    """Tar files named by files, folders (their *.tar) or globs, in a fixed (sorted) order per entry."""
    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            out += sorted(os.path.join(p, f) for f in os.listdir(p) if f.endswith(".tar"))
        else:
            matches = sorted(glob.glob(p))
            if not matches:
                raise ConfigError(f"data.folders: {p} matches no tar file")
            out += matches
    return out


def open_webdataset_records(paths: Sequence[str], captions_map: str, captions_parquet: Sequence[str] = (),
                            report_path: str | None = None) -> WebdatasetRecords:
    """The training records of img2dataset tars; samples left out are listed in `report_path` (JSON lines)."""
    records = WebdatasetRecords(tar_paths(paths), captions_map, captions_parquet)
    if records.missing:
        print(f"[data] {len(records.missing)} samples left out (mapped caption or image missing)"
              + (f"; listed in {report_path}" if report_path else f"; first: {records.missing[:3]}"), flush=True)
    if report_path:  # the workdir may be gs://
        epath.Path(report_path).write_text("".join(json.dumps(m) + "\n" for m in records.missing))
    return records
