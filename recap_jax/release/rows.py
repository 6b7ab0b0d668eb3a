"""Reading a recaptioned dataset row by row, whatever holds it: our output or released Parquet.

`open_rows(path)` accepts
- a caption-job output folder (TFDS ArrayRecord, `recap_jax.caption`'s `output.dir`), and
- a Parquet file, or a folder of them, in the released schema (`recap_jax.release.schema`).
Rows come in the dataset's order, in batches, so memory does not grow with the dataset;
`shard_index`/`num_shards` give each host a contiguous share.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
from etils import epath

from recap_jax.data.storage import is_local, local_file, require_gcs
from recap_jax.data.tfds_folder import open_tfds_folder, tfds_builder
from recap_jax.errors import ConfigError
from recap_jax.release.image_join import JoinedRecords, has_images

BATCH = 256


@dataclasses.dataclass
class Row:
    """One sample. `image` is None for Parquet (the released data carries URLs, not images);
    `re_tokens` (generated tokens) is known only for our own output."""
    key: str
    url: str
    org_caption: str
    re_caption: str
    sha256: str | None = None
    image: bytes | None = None
    re_tokens: int | None = None
    re_clip_score: float | None = None
    org_clip_score: float | None = None


def _text(value) -> str:
    if value is None:
        return ""
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def _share(total: int, shard_index: int, num_shards: int) -> range:
    if not 0 <= shard_index < num_shards:
        raise ConfigError(f"--shard_index={shard_index}: must be in [0, --num_shards={num_shards})")
    bounds = np.linspace(0, total, num_shards + 1).astype(int)
    return range(bounds[shard_index], bounds[shard_index + 1])


class RemoteOutputSource:
    """Random access to a gs:// caption output: ArrayRecord reads only local files, so each shard
    is copied to a local temporary file when first needed (one at a time: rows are read in order)."""

    def __init__(self, folder: str):
        builder = tfds_builder(folder, "OUTPUT_DIR")  # the metadata reads fine through gcsfs
        split = builder.info.splits["train"]
        self.features = builder.info.features
        self.files = [epath.Path(folder) / name for name in split.filenames]
        self.starts = np.cumsum([0] + list(split.shard_lengths))
        self._open: tuple[int, Any, Any] | None = None  # (shard, reader, temporary file context)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _reader(self, shard: int):
        from array_record.python.array_record_module import ArrayRecordReader

        if self._open is None or self._open[0] != shard:
            self.close()
            context = local_file(str(self.files[shard]))
            self._open = (shard, ArrayRecordReader(context.__enter__()), context)
        return self._open[1]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        out = []
        for index in indices:
            shard = int(np.searchsorted(self.starts, index, side="right") - 1)
            serialized = self._reader(shard).read([index - int(self.starts[shard])])[0]
            out.append(self.features.deserialize_example_np(serialized))
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def close(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open[2].__exit__(None, None, None)
            self._open = None


class OutputRows:
    """Rows of a caption-job output folder (random access: any host reads any share).

    A captions-only output (`output.store_images=false`) gives rows without images, or with
    `images=True` rows whose images are joined from the caption job's input (image_join).
    """

    def __init__(self, folder: str, shard_index: int = 0, num_shards: int = 1, images: bool = False,
                 images_field: str = "OUTPUT_DIR"):
        self._source = (open_tfds_folder(folder, "train", field="OUTPUT_DIR", allow_empty=True) if is_local(folder)
                        else RemoteOutputSource(folder))
        self.has_images = has_images(self._source)
        if images and not self.has_images:
            self._source = JoinedRecords(self._source, folder, field=images_field)
            self.has_images = True
        self.folder = folder
        self.indices = _share(len(self._source), shard_index, num_shards)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[Row]:
        for start in range(0, len(self.indices), BATCH):
            batch = self._source.__getitems__(list(self.indices[start:start + BATCH]))
            for r in batch:
                image = bytes(r["image"]) if "image" in r else None
                yield Row(key=_text(r["key"]), url=_text(r["url"]), org_caption=_text(r["org_caption"]),
                          re_caption=_text(r["re_caption"]),
                          sha256=_text(r["sha256"]) if "sha256" in r else None,
                          image=image, re_tokens=int(r["re_caption_length"]))
        if isinstance(self._source, RemoteOutputSource):
            self._source.close()  # its last shard's local copy


class ParquetRows:
    """Rows of released-schema Parquet files (shares are whole row groups)."""

    def __init__(self, path: str, shard_index: int = 0, num_shards: int = 1):
        folder = epath.Path(path)
        files = (sorted(str(f) for f in folder.glob("*.parquet")) if folder.is_dir() else [path])
        if not files:
            raise ConfigError(f"{path}: no *.parquet files in this folder")
        self._groups = []  # (file, row group index, rows)
        for f in files:
            meta = parquet_file(f).metadata
            missing = {"key", "org_caption", "re_caption"} - set(meta.schema.names)
            if missing:
                raise ConfigError(f"{f}: not in the released schema (no column {sorted(missing)})")
            self._groups += [(f, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
        self._groups = [self._groups[i] for i in _share(len(self._groups), shard_index, num_shards)]
        self.folder = path
        self.has_images = False

    def __len__(self) -> int:
        return sum(n for _, _, n in self._groups)

    def __iter__(self) -> Iterator[Row]:
        for f, group, _ in self._groups:
            table = parquet_file(f).read_row_group(group)
            names = set(table.column_names)
            for r in table.to_pylist():
                yield Row(key=_text(r["key"]), url=_text(r.get("url")), org_caption=_text(r["org_caption"]),
                          re_caption=_text(r["re_caption"]), sha256=r.get("sha256"),
                          re_clip_score=r.get("re_clip_score") if "re_clip_score" in names else None,
                          org_clip_score=r.get("org_clip_score") if "org_clip_score" in names else None)


def parquet_file(path: str):
    """A pyarrow ParquetFile, local or gs:// (read through the same file objects as everything else)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path if is_local(path) else epath.Path(path).open("rb"))


def open_rows(path: str, shard_index: int = 0, num_shards: int = 1, images: bool = False,
              images_field: str = "OUTPUT_DIR") -> OutputRows | ParquetRows:
    """Our output folder or released Parquet (file or folder), by what is there. `images`: rows of
    a captions-only output get their images from the caption job's input (errors name `images_field`)."""
    path = os.fspath(path)
    if not is_local(path):
        require_gcs(path)
    where = epath.Path(path)
    if not where.exists():
        raise ConfigError(f"{path}: does not exist (give a caption output folder or a Parquet file/folder)")
    finished = (where / "dataset_info.json").exists()
    if path.endswith(".parquet") or (where.is_dir() and not finished and any(where.glob("*.parquet"))):
        return ParquetRows(path, shard_index, num_shards)
    if not finished:
        raise ConfigError(f"{path}: neither a finished caption output folder (no dataset_info.json: "
                          "is the caption job done?) nor Parquet")
    return OutputRows(path, shard_index, num_shards, images, images_field)
