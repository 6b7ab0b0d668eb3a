"""The captioner's output: a TFDS dataset folder in ArrayRecord format, written unit by unit.

    OUTPUT_DIR/
      recap-train.array_record-00007-of-00100    one shard per work unit (records in input order)
      failures-00007-of-00100.jsonl              samples that could not be captioned (key, source, reason)
      .units/00007.json                          done marker: written last, after the shard
      run_config.json                            what this output was made from (checked on resume)
      dataset_info.json, features.json           TFDS metadata, written once every unit is done
      summary.json                               counts and throughput

Every file is written under a temporary name and renamed, and a unit counts as done only once
its marker exists, so a run killed at any point leaves no half-unit behind; started again, it
redoes exactly the units without a marker.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

import tensorflow_datasets as tfds
from array_record.python.array_record_module import ArrayRecordWriter
from etils import epath

from recap_jax.data.schema import DATASET_NAME, RECORD_FEATURES, SPLIT
from recap_jax.data.sources import ConfigError, Failure

FILENAME_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"


class OutputDataset:
    def __init__(self, output_dir: str, num_units: int, features=RECORD_FEATURES,
                 fingerprint: dict[str, Any] | None = None):
        self.dir = epath.Path(output_dir)
        self.num_units = num_units
        self.features = features
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / ".units").mkdir(exist_ok=True)
        # Through JSON so that tuples and lists compare equal.
        self._check_run_config(json.loads(json.dumps({"num_units": num_units, **(fingerprint or {})})))

    def _check_run_config(self, config: dict[str, Any]) -> None:
        path = self.dir / "run_config.json"
        if path.exists():
            previous = json.loads(path.read_text())
            if previous != config:
                raise ConfigError(f"output.dir: {self.dir} holds the output of a different run "
                                  f"({previous} != {config}); use a new output.dir")
        else:
            _atomic_write(path, json.dumps(config, indent=1).encode())

    def shard_path(self, index: int) -> epath.Path:
        return self.dir / f"{DATASET_NAME}-{SPLIT}.array_record-{index:05d}-of-{self.num_units:05d}"

    def failures_path(self, index: int) -> epath.Path:
        return self.dir / f"failures-{index:05d}-of-{self.num_units:05d}.jsonl"

    def _marker(self, index: int) -> epath.Path:
        return self.dir / ".units" / f"{index:05d}.json"

    def is_done(self, index: int) -> bool:
        return self._marker(index).exists()

    def clean_unit(self, index: int) -> None:
        """Remove temporary files a killed run left for this unit (only its owner may call this)."""
        for final in (self.shard_path(index), self.failures_path(index), self._marker(index)):
            for stale in final.parent.glob(f".{final.name}.tmp-*"):
                stale.unlink()

    def write_unit(self, index: int, records: Sequence[dict[str, Any]], failures: Sequence[Failure]) -> None:
        """Write one unit's shard, failures and marker (in that order, each atomically)."""
        if not 0 <= index < self.num_units:
            raise IndexError(f"unit {index} out of range [0, {self.num_units})")
        shard = self.shard_path(index)
        tmp = shard.parent / f".{shard.name}.tmp-{uuid.uuid4().hex[:8]}"
        writer = ArrayRecordWriter(str(tmp), "group_size:1")
        try:
            for record in records:
                writer.write(self.features.serialize_example(record))
        finally:
            writer.close()
        tmp.replace(shard)
        lines = "".join(json.dumps({"key": f.key, "source": f.source, "reason": f.reason}) + "\n"
                        for f in failures)
        _atomic_write(self.failures_path(index), lines.encode())
        _atomic_write(self._marker(index), json.dumps({"records": len(records), "failures": len(failures)}).encode())

    def counts(self) -> dict[int, dict[str, int]]:
        return {i: json.loads(self._marker(i).read_text()) for i in range(self.num_units) if self.is_done(i)}

    def finalize(self, summary: dict[str, Any] | None = None) -> bool:
        """Write the TFDS metadata once every unit is done (idempotent); False if some are missing."""
        counts = self.counts()
        if len(counts) < self.num_units:
            return False
        lengths = [counts[i]["records"] for i in range(self.num_units)]
        template = tfds.core.ShardedFileTemplate(data_dir=self.dir, template=FILENAME_TEMPLATE,
                                                 dataset_name=DATASET_NAME, split=SPLIT,
                                                 filetype_suffix="array_record")
        split = tfds.core.SplitInfo(name=SPLIT, shard_lengths=lengths,
                                    num_bytes=sum(self.shard_path(i).stat().length for i in range(self.num_units)),
                                    filename_template=template)
        tfds.folder_dataset.write_metadata(data_dir=self.dir, features=self.features, split_infos=[split],
                                           filename_template=FILENAME_TEMPLATE, check_data=False)
        totals = {"records": sum(lengths), "failures": sum(c["failures"] for c in counts.values()),
                  "units": self.num_units}
        _atomic_write(self.dir / "summary.json", json.dumps({**totals, "last_run": summary or {}}, indent=1).encode())
        return True


def _atomic_write(path: epath.Path, data: bytes) -> None:
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.write_bytes(data)
    tmp.replace(path)
