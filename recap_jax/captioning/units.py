"""The caption job's bookkeeping: what travels with each image through the decode loop, and the
assembly of captions and failures into whole units written in input order."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any, TypeVar

import numpy as np

from recap_jax.captioning.progress import Progress
from recap_jax.data import images
from recap_jax.data.inputs import Failure, Sample, WorkUnit
from recap_jax.data.schema import image_sha256
from recap_jax.data.writer import OutputDataset
from recap_jax.decoding.sampler import Result
from recap_jax.preprocess.image import ImageSettings, resize_image

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class PreparedImage:
    pixels: np.ndarray  # uint8, resized/cropped for the vision tower (normalised on the device)
    width: int  # of the original image
    height: int


@dataclasses.dataclass(frozen=True)
class ImagePreparer:
    """The worker threads' job for one sample: decode (robustly), resize and crop its image."""
    settings: ImageSettings
    max_pixels: int

    def __call__(self, sample: Sample) -> PreparedImage:
        image = images.decode_image(sample.image_bytes, max_pixels=self.max_pixels)
        return PreparedImage(resize_image(image, self.settings), *images.image_size(image))


@dataclasses.dataclass(frozen=True)
class SampleTag:
    """What a decode request carries back with its result."""
    unit_index: int
    position: int  # within the unit
    sample: Sample
    prepared: PreparedImage


def caption_record(tokenizer, tag: SampleTag, result: Result[SampleTag]) -> dict[str, Any]:
    """The output record of one captioned sample."""
    sample = tag.sample
    caption = tokenizer.decode(result.tokens, skip_special_tokens=True).strip()
    return {"key": sample.key, "url": sample.url, "org_caption": sample.org_caption,
            "re_caption": caption, "image": sample.image_bytes, "width": tag.prepared.width,
            "height": tag.prepared.height, "org_caption_length": len(sample.org_caption.split()),
            "re_caption_length": len(result.tokens), "sha256": image_sha256(sample.image_bytes)}


@dataclasses.dataclass
class InputWait:
    """Seconds the decode loop waited for prepared images: time the host loop (and so the device,
    once its queued work is done) had nothing to feed."""
    total_s: float = 0.0
    first_s: float = 0.0  # the first wait alone: the pipeline's start-up, which nothing can hide

    def timed(self, items: Iterator[T]) -> Iterator[T]:
        """`items`, adding the time each next() blocked."""
        first = True
        while True:
            start = time.perf_counter()
            try:
                item = next(items)
            except StopIteration:
                self.total_s += time.perf_counter() - start
                return
            self.total_s += time.perf_counter() - start
            if first:
                self.first_s, first = self.total_s, False
            yield item


@dataclasses.dataclass
class _UnitState:
    records: dict[int, dict] = dataclasses.field(default_factory=dict)
    failures: list[tuple[int, Failure]] = dataclasses.field(default_factory=list)
    read: int | None = None  # samples read, once reading the unit has finished

    @property
    def complete(self) -> bool:
        return self.read is not None and len(self.records) + len(self.failures) == self.read


class UnitAssembler:
    """Collects each unit's records and failures (arriving in completion order) and writes a unit
    to `output`, in input order, as soon as all of its samples are accounted for."""

    def __init__(self, units: list[WorkUnit], output: OutputDataset, meter: Progress):
        self.output, self.meter = output, meter
        self._units = {u.index: _UnitState() for u in units}

    def add_record(self, unit_index: int, position: int, record: dict) -> None:
        self._units[unit_index].records[position] = record
        self._write_if_complete(unit_index)

    def add_failure(self, unit_index: int, position: int, failure: Failure) -> None:
        self._units[unit_index].failures.append((position, failure))
        self._write_if_complete(unit_index)

    def unit_read(self, unit_index: int, count: int) -> None:
        self._units[unit_index].read = count
        self._write_if_complete(unit_index)

    @property
    def pending_units(self) -> int:
        return len(self._units)

    def _write_if_complete(self, index: int) -> None:
        unit = self._units[index]
        if not unit.complete:
            return
        del self._units[index]
        records = [unit.records[k] for k in sorted(unit.records)]
        failures = [f for _, f in sorted(unit.failures, key=lambda x: x[0])]
        self.output.write_unit(index, records, failures)
        self.meter.unit_done(len(records), len(failures))
