"""Training records in a fixed, resumable order: LLaVA JSON conversations or caption pairs.

A reader yields `Record`s of one epoch starting at an offset, so the data position saved with a
checkpoint is just (epoch, offset): rerunning after a crash reads the very same records next.
- `llava_json`: a JSON list or JSONL file of `{"id", "image", "conversations"}` with images under
  `data.image_folder`; shuffled per epoch with a seeded permutation.
- `webdataset` / `tfds`: caption pairs read with `recap_jax.data.inputs` (img2dataset shards, or
  a TFDS/ArrayRecord dataset such as the caption job's output), turned into the one-turn
  conversation the captioner is asked at inference; shards are shuffled per epoch.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

import numpy as np
from etils import epath

from recap_jax.data import inputs
from recap_jax.errors import ConfigError
from recap_jax.finetuning.conversation import ConversationError, caption_turns, llava_turns

FORMATS = ("llava_json", "webdataset", "tfds")


@dataclasses.dataclass(frozen=True)
class Record:
    key: str
    source: str  # where it came from, for the failures file
    turns: list[tuple[str, str]] | None  # (role, text); None when `error` says why not
    image: bytes | str = b""  # encoded bytes, or a path to read them from
    error: str = ""


class LlavaJsonReader:
    """LLaVA's training JSON/JSONL, read into memory once (665K entries are ~1 GB of text)."""

    def __init__(self, path: str, image_folder: str, shuffle: bool, seed: int):
        file = epath.Path(path)
        if not file.exists():
            raise ConfigError(f"data.path: {path} does not exist (a LLaVA JSON or JSONL file)")
        text = file.read_text()
        try:
            entries = json.loads(text) if text.lstrip().startswith("[") else [
                json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise ConfigError(f"data.path: {path} is not JSON or JSONL: {e}") from None
        if not isinstance(entries, list):
            raise ConfigError(f"data.path: {path} must hold a list of conversations")
        if not entries:
            raise ConfigError(f"data.path: no examples in {path} (an empty list of conversations)")
        self.entries, self.name = entries, file.name
        self.image_folder = epath.Path(image_folder) if image_folder else file.parent
        self.shuffle, self.seed = shuffle, seed

    def __len__(self) -> int:
        return len(self.entries)

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.entries))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.entries))

    def records(self, epoch: int, start: int) -> Iterator[Record]:
        for index in self.order(epoch)[start:]:
            yield self.record(int(index))

    def record(self, index: int) -> Record:
        entry = self.entries[index]
        where = f"{self.name}[{index}]"
        if not isinstance(entry, dict):
            return Record(str(index), where, None, error="entry is not an object")
        key = str(entry.get("id", index))
        if not entry.get("image"):
            return Record(key, where, None, error="no image (text-only conversations are not supported)")
        try:
            turns = llava_turns(entry.get("conversations") or [])
        except ConversationError as e:
            return Record(key, where, None, error=str(e))
        return Record(key, where, turns, str(self.image_folder / str(entry["image"])))


class CaptionPairReader:
    """Image + caption samples from webdataset shards or a TFDS/ArrayRecord dataset."""

    def __init__(self, format: str, paths: str, prompt: str, caption_field: str,
                 shuffle: bool, seed: int):
        options = {"fields": {"caption": caption_field}} if caption_field and format == "tfds" else {}
        try:
            self.units = inputs.plan_work_units(format, paths, **options)
        except ConfigError as e:  # the shared input formats name the caption job's fields
            raise ConfigError(finetune_fields(str(e))) from None
        self.prompt, self.shuffle, self.seed = prompt, shuffle, seed

    def __len__(self) -> int:
        raise TypeError("the number of caption pairs is not known before reading them; set train.num_steps")

    def records(self, epoch: int, start: int) -> Iterator[Record]:
        units = list(self.units)
        if self.shuffle:
            units = [units[i] for i in np.random.default_rng([self.seed, epoch]).permutation(len(units))]
        try:
            yield from self._records(units, start)
        except ConfigError as e:
            raise ConfigError(finetune_fields(str(e))) from None

    def _records(self, units: list, start: int) -> Iterator[Record]:
        position = 0
        for unit in units:
            for item in inputs.read_unit(unit):
                position += 1
                if position <= start:
                    continue
                if isinstance(item, inputs.Failure):
                    yield Record(item.key, item.source, None, error=item.reason)
                elif not item.org_caption.strip():
                    yield Record(item.key, item.source, None, error="empty caption")
                else:
                    yield Record(item.key, item.source, caption_turns(self.prompt, item.org_caption.strip()),
                                 item.image_bytes)


# The caption job's input.* fields that the finetune config calls otherwise.
FINETUNE_FIELDS = {"input.paths": "data.path", "input.format": "data.format", "input.fields": "data.caption_field"}


def finetune_fields(message: str) -> str:
    """An input-format error message with the finetune config's field names."""
    for caption_field, field in FINETUNE_FIELDS.items():
        message = message.replace(caption_field, field)
    return message


def make_reader(format: str, path: str, image_folder: str, prompt: str, caption_field: str,
                shuffle: bool, seed: int):
    if format not in FORMATS:
        raise ConfigError(f"data.format={format!r}: expected one of {FORMATS}")
    if not path:
        raise ConfigError("data.path: required (the LLaVA JSON file, or the caption shards)")
    if format == "llava_json":
        return LlavaJsonReader(path, image_folder, shuffle, seed)
    if not prompt.strip():
        raise ConfigError("data.prompt: caption pairs need the instruction they answer")
    return CaptionPairReader(format, path, prompt, caption_field, shuffle, seed)
