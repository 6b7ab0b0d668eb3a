"""`input.format=tfds`: TFDS dataset folders (ArrayRecord shards) and bare ArrayRecord files of
serialized tf.train.Examples.

A unit is a range of `input.records_per_unit` records of one folder's split or one file.
"""

from __future__ import annotations

import dataclasses
import io
import posixpath
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from etils import epath

from recap_jax.data.inputs.base import Failure, InputFormat, Sample, WorkUnit, register
from recap_jax.data.storage import retrying
from recap_jax.data.tfds_folder import open_tfds_folder, resolve_split
from recap_jax.errors import ConfigError

_READ_CHUNK = 32  # records fetched per random-access call
_SOURCES: dict[tuple[str, str], Any] = {}  # opened once per process, shared by the reading threads


@dataclasses.dataclass(frozen=True)
class TfdsFields:
    """Which record fields hold what (the first present name wins)."""
    image: tuple[str, ...] = ("image", "jpg", "png", "webp")
    key: tuple[str, ...] = ("key",)
    caption: tuple[str, ...] = ("org_caption", "caption", "text", "txt")
    url: tuple[str, ...] = ("url",)

    @classmethod
    def parse(cls, value: TfdsFields | Mapping[str, str | Sequence[str]] | None) -> TfdsFields:
        """From `input.fields`: each entry a comma-separated string or a sequence of names."""
        if value is None or isinstance(value, TfdsFields):
            return value or cls()
        unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"input.fields: unknown entries {sorted(unknown)}; "
                              f"expected {[f.name for f in dataclasses.fields(cls)]}")
        return cls(**{name: tuple(n.strip() for n in (names.split(",") if isinstance(names, str) else names)
                                  if n.strip()) for name, names in value.items()})

    def to_config(self) -> dict[str, str]:
        """The `input.fields` config entries (comma-separated names)."""
        return {name: ",".join(names) for name, names in dataclasses.asdict(self).items()}


@dataclasses.dataclass(frozen=True)
class TfdsUnit(WorkUnit):
    format: ClassVar[str] = "tfds"
    start: int = 0  # record range [start, stop)
    stop: int = 0
    split: str = ""  # the split of a TFDS folder; "" for a bare ArrayRecord file
    fields: TfdsFields = TfdsFields()


@register
class TfdsInput(InputFormat):
    name = "tfds"
    options = ("records_per_unit", "split", "fields")

    def __init__(self, records_per_unit: int = 1000, split: str | None = "",
                 fields: TfdsFields | Mapping[str, Any] | None = None):
        if records_per_unit < 1:
            raise ConfigError(f"input.records_per_unit={records_per_unit}: must be >= 1")
        self.records_per_unit = records_per_unit
        self.split = split or ""  # "" = "train" if the folder has it, else its first split
        self.fields = TfdsFields.parse(fields)

    def plan(self, paths: list[epath.Path]) -> list[TfdsUnit]:
        units = []
        for path in paths:
            if path.is_dir():
                split = resolve_split(str(path), self.split, field="input.paths", split_field="input.split")
            else:
                split = ""
            size = len(_source(str(path), split))
            for start in range(0, size, self.records_per_unit):
                units.append(TfdsUnit(len(units), str(path), start=start,
                                      stop=min(start + self.records_per_unit, size), split=split,
                                      fields=self.fields))
        return units

    @staticmethod
    def read(unit: TfdsUnit) -> Iterator[Sample | Failure]:
        fields = unit.fields
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


def _source(path: str, split: str):
    """The random-access source of a TFDS folder's split, or of an ArrayRecord file (split "")."""
    if (path, split) not in _SOURCES:
        if split:
            _SOURCES[(path, split)] = open_tfds_folder(path, split, field="input.paths", split_field="input.split")
        else:
            from array_record.python.array_record_data_source import ArrayRecordDataSource
            try:
                _SOURCES[(path, split)] = ArrayRecordDataSource([path])
            except Exception as e:  # noqa: BLE001
                raise ConfigError(f"input.paths: {path} is neither a TFDS dataset folder nor an ArrayRecord "
                                  f"file ({type(e).__name__}: {e})") from None
    return _SOURCES[(path, split)]


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


def _records(unit: TfdsUnit) -> Iterator[tuple[int, dict | None, str]]:
    """(index, record or None, error) for the unit's range, fetched in chunks."""
    source = _source(unit.path, unit.split)

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
                yield index, decode(retrying(lambda: source[index], f"{unit.path}[{index}]")), ""
            except Exception as e:  # noqa: BLE001
                yield index, None, f"unreadable record: {type(e).__name__}: {e}"


def _encode_png(pixels: np.ndarray) -> bytes:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).save(buffer, "PNG")
    return buffer.getvalue()
