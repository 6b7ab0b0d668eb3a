"""Records -> fixed-shape training batches, with bad data counted and skipped.

Every host encodes the text of every record of a global batch (cheap), so all hosts agree on
which records make the batch and on its padded length; each host then decodes the images of its
own rows only. A record whose text cannot be used (no gpt turn, too long, ...) is skipped before
it takes a row; an image that cannot be read or decoded leaves its row in place with no loss
weight. Both are written to `failures-<host>.jsonl` with a reason.

Batch arrays (rows of this host):
  tokens  int32 [B, L]   right-padded ids, image placeholder expanded
  targets int32 [B, L]   tokens shifted left: the id each position predicts
  weights f32   [B, L]   1 where the target is an assistant token, else 0
  pixels  f32   [B, H, W, 3]
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import queue
import threading
from collections.abc import Iterator

import numpy as np
from etils import epath

from recap_jax.data.images import decode_image
from recap_jax.errors import ConfigError, ImageError
from recap_jax.preprocess.image import ImageSettings, preprocess_image
from recap_jax.finetuning.conversation import ConversationEncoder, ConversationError, Encoded
from recap_jax.finetuning.records import Record


@dataclasses.dataclass(frozen=True)
class Position:
    """Where the next batch starts: records [0, offset) of epoch `epoch` are consumed, then
    `skip` batches of the length group that starts there (length-grouped batching)."""
    epoch: int = 0
    offset: int = 0
    skip: int = 0


@dataclasses.dataclass
class Batch:
    arrays: dict[str, np.ndarray]
    next_position: Position
    num_examples: int  # this host's rows with an image (rows that carry a loss)
    num_tokens: int = 0  # this host's tokens before padding (padding share = 1 - num_tokens / tokens.size)


class FailureLog:
    """Append-only JSON lines; a failure already listed (a rerun after a crash) is not repeated."""

    def __init__(self, workdir: epath.Path, process_index: int):
        self.path = epath.Path(workdir) / f"failures-{process_index:05d}.jsonl"
        self.seen: set[tuple[str, str, str]] = set()
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    d = json.loads(line)
                    self.seen.add((d["key"], d["source"], d["reason"]))
        self.count = len(self.seen)
        self._lock = threading.Lock()

    def add(self, key: str, source: str, reason: str) -> None:
        with self._lock:
            if (key, source, reason) in self.seen:
                return
            self.seen.add((key, source, reason))
            self.count += 1
            with self.path.open("a") as f:
                f.write(json.dumps({"key": key, "source": source, "reason": reason}) + "\n")


def bucket_length(length: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket that holds `length` (fewer compiled shapes than padding to each batch)."""
    return next(b for b in sorted(buckets) if b >= length)


def load_pixels(image: bytes | str, settings: ImageSettings, max_pixels: int) -> np.ndarray:
    """Encoded bytes or a path -> normalised pixels; ImageError with a reason on any problem."""
    if isinstance(image, str):
        path = epath.Path(image)
        if not path.exists():
            raise ImageError(f"missing image file {image}")
        try:
            image = path.read_bytes()
        except OSError as e:
            raise ImageError(f"unreadable image file: {e}") from None
    return preprocess_image(decode_image(image, max_pixels=max_pixels), settings)


class BatchMaker:
    """Turns a reader's records into `Batch`es of `global_batch_size` rows, this host's share."""

    def __init__(self, reader, encoder: ConversationEncoder, image: ImageSettings, *,
                 global_batch_size: int, max_length: int, length_buckets: tuple[int, ...],
                 failures: FailureLog, process_index: int = 0, process_count: int = 1,
                 num_workers: int = 4, max_pixels: int = 64_000_000, group_batches: int = 1,
                 seed: int = 0):
        if global_batch_size % process_count:
            raise ConfigError(f"train.global_batch_size={global_batch_size} must divide among "
                              f"{process_count} hosts")
        self.reader, self.encoder, self.image = reader, encoder, image
        self.batch, self.max_length = global_batch_size, max_length
        self.buckets = tuple(b for b in length_buckets if b < max_length) + (max_length,)
        self.failures, self.max_pixels = failures, max_pixels
        rows = global_batch_size // process_count
        self.rows = slice(process_index * rows, (process_index + 1) * rows)
        self.log_text_failures = process_index == 0
        if group_batches < 1:
            raise ConfigError(f"data.length_group_batches={group_batches}: must be >= 1 (1 = off)")
        self.group_batches, self.seed = group_batches, seed
        self.pool = concurrent.futures.ThreadPoolExecutor(num_workers)

    def _encoded(self, start: Position) -> Iterator[tuple[Position, Record, Encoded]]:
        """(position after it, record, encoding) of each usable record, across epochs."""
        epoch, offset = start.epoch, start.offset
        while True:
            usable, began_at = 0, offset
            for record in self.reader.records(epoch, offset):
                offset += 1
                error = record.error
                if not error:
                    try:
                        encoded = self.encoder.encode(record.turns)
                        if len(encoded.token_ids) > self.max_length:
                            error = f"too long: {len(encoded.token_ids)} tokens > data.max_length={self.max_length}"
                    except ConversationError as e:
                        error = str(e)
                if error:
                    if self.log_text_failures:
                        self.failures.add(record.key, record.source, error)
                    continue
                usable += 1
                yield Position(epoch, offset), record, encoded
            if usable == 0 and began_at == 0:
                listed = f" (see {self.failures.path})" if self.failures.path.exists() else ""
                raise ConfigError(f"data.path: none of the {offset} examples of epoch {epoch} is usable{listed}"
                                  if offset else "data.path: no examples (the data is empty)")
            epoch, offset = epoch + 1, 0

    def batches(self, start: Position) -> Iterator[Batch]:
        """Batches from `start` on. With `group_batches` > 1, each run of group_batches x batch
        usable records is sorted by length and cut into batches, taken in a seeded random order
        (LLaVA's group_by_modality_length does this with its mega-batches): similar lengths share
        a batch, so less padding. A group is a pure function of where it starts, so a resumed run
        rebuilds it and skips the batches already trained on."""
        group_start, skip = Position(start.epoch, start.offset), start.skip
        pending: list[tuple[Record, Encoded]] = []
        for position, record, encoded in self._encoded(group_start):
            pending.append((record, encoded))
            if len(pending) < self.batch * self.group_batches:
                continue
            groups = self._length_groups(pending, group_start)
            for k in range(skip, len(groups)):
                last = k == len(groups) - 1
                after = position if last else Position(group_start.epoch, group_start.offset, k + 1)
                yield self._assemble(groups[k], after)
            group_start, skip, pending = position, 0, []

    def _length_groups(self, rows: list[tuple[Record, Encoded]], where: Position
                       ) -> list[list[tuple[Record, Encoded]]]:
        if self.group_batches == 1:
            return [rows]  # records in reader order, as without grouping
        ordered = sorted(rows, key=lambda row: len(row[1].token_ids))  # stable: ties keep reader order
        groups = [ordered[i:i + self.batch] for i in range(0, len(ordered), self.batch)]
        order = np.random.default_rng([self.seed, where.epoch, where.offset]).permutation(len(groups))
        return [groups[i] for i in order]

    def _pixels(self, record: Record) -> np.ndarray | None:
        try:
            return load_pixels(record.image, self.image, self.max_pixels)
        except ImageError as e:
            self.failures.add(record.key, record.source, e.reason)
            return None

    def _assemble(self, rows: list[tuple[Record, Encoded]], position: Position) -> Batch:
        length = bucket_length(max(len(e.token_ids) for _, e in rows), self.buckets)
        mine = rows[self.rows]
        pixels = list(self.pool.map(self._pixels, [r for r, _ in mine]))
        side = self.image.size
        out = {"tokens": np.zeros((len(mine), length), np.int32),
               "targets": np.zeros((len(mine), length), np.int32),
               "weights": np.zeros((len(mine), length), np.float32),
               "pixels": np.zeros((len(mine), side, side, 3), np.float32)}
        for row, ((_, encoded), image) in enumerate(zip(mine, pixels)):
            n = len(encoded.token_ids)
            out["tokens"][row, :n] = encoded.token_ids
            out["targets"][row, :n - 1] = encoded.token_ids[1:]
            if image is not None:
                out["weights"][row, :n - 1] = encoded.is_target[1:]
                out["pixels"][row] = image
        return Batch(out, position, sum(p is not None for p in pixels),
                     sum(len(encoded.token_ids) for _, encoded in mine))


def prefetch(iterator: Iterator[Batch], size: int = 2) -> Iterator[Batch]:
    """Build the next batches in a thread while the device trains on this one."""
    q: queue.Queue = queue.Queue(maxsize=size)
    done = object()

    def work():
        try:
            for item in iterator:
                q.put(item)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            q.put(e)
        q.put(done)

    threading.Thread(target=work, daemon=True).start()
    while (item := q.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item
