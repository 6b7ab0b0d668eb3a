"""The captioner's output: a TFDS dataset folder in ArrayRecord format, written unit by unit.

    OUTPUT_DIR/
      recap-train.array_record-00007-of-00100    one shard per work unit (records in input order)
      failures-00007-of-00100.jsonl              samples that could not be captioned (key, source, reason)
      .units/00007.json                          done marker, written last: record/failure counts, bytes
      .hosts/00000.json                          each host's last run summary (optional)
      run_config.json                            what this output was made from (checked on resume)
      dataset_info.json, features.json           TFDS metadata, written once every unit is done
      summary.json                               totals, failure reasons and throughput

Every file is written under a temporary name (".NAME.tmp-XXXXXXXX") and renamed, and a unit counts
as done only once its marker exists, so a run killed at any point leaves no half-unit counted;
started again, it redoes exactly the units without a marker and overwrites what they left.
Units are independent, so hosts write their own units with no coordination; `finalize` needs
only the markers, and may run on any one host once all units are done.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from typing import Any

import tensorflow_datasets as tfds
from array_record.python.array_record_module import ArrayRecordWriter
from etils import epath
from tensorflow_datasets.proto import tf_example_pb2

from recap_jax.data.schema import DATASET_NAME, RECORD_FEATURES, SPLIT
from recap_jax.data.inputs.base import Failure
from recap_jax.data.storage import is_local, require_gcs
from recap_jax.errors import ConfigError

FILENAME_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
TMP_MARK = ".tmp-"


def failure_category(reason: str) -> str:
    """"truncated or corrupt: OSError: ..." -> "truncated or corrupt": the part before details."""
    return reason.split(":", 1)[0].strip()[:80]


class OutputDataset:
    """One output folder (local or gs://) of `num_units` shards; see the module docstring."""

    def __init__(self, output_dir: str, num_units: int, features=RECORD_FEATURES,
                 fingerprint: dict[str, Any] | None = None):
        if num_units < 1:
            raise ConfigError(f"input: no work units (num_units={num_units}); nothing to caption")
        if str(output_dir).startswith("gs://"):
            require_gcs("output.dir")
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
                changed = sorted(k for k in set(previous) | set(config) if previous.get(k) != config.get(k))
                raise ConfigError(f"output.dir: {self.dir} holds the output of a different run "
                                  f"(changed: {', '.join(changed)}; was {previous}, now {config}); "
                                  "use a new output.dir or the original input")
        else:
            # Hosts starting together all write the same content: the rename makes that harmless.
            _atomic_write(path, json.dumps(config, indent=1).encode())

    # --- names ---

    def shard_path(self, index: int) -> epath.Path:
        return self.dir / f"{DATASET_NAME}-{SPLIT}.array_record-{index:05d}-of-{self.num_units:05d}"

    def failures_path(self, index: int) -> epath.Path:
        return self.dir / f"failures-{index:05d}-of-{self.num_units:05d}.jsonl"

    def _marker(self, index: int) -> epath.Path:
        return self.dir / ".units" / f"{index:05d}.json"

    # --- units ---

    def is_done(self, index: int) -> bool:
        return self._marker(index).exists()

    def clean_unit(self, index: int) -> None:
        """Remove temporary files a killed run left for this unit (only its owner may call this)."""
        for final in (self.shard_path(index), self.failures_path(index), self._marker(index)):
            for stale in final.parent.glob(f".{final.name}{TMP_MARK}*"):
                stale.unlink(missing_ok=True)

    def write_unit(self, index: int, records: Sequence[dict[str, Any]], failures: Sequence[Failure]) -> None:
        """Write one unit's shard, failures and done marker, in that order, each atomically.

        Records are written in the order given. Writing a done unit again replaces it.
        """
        if not 0 <= index < self.num_units:
            raise IndexError(f"unit {index} out of range [0, {self.num_units})")
        # Serialize first: a bad record fails here, before anything of this unit is on disk.
        serialized = [canonical_example(self.features.serialize_example(record)) for record in records]
        shard = self.shard_path(index)
        num_bytes = _write_array_record(shard, serialized)
        lines = "".join(json.dumps({"key": f.key, "source": f.source, "reason": f.reason}) + "\n"
                        for f in failures)
        _atomic_write(self.failures_path(index), lines.encode())
        reasons = collections.Counter(failure_category(f.reason) for f in failures)
        marker = {"records": len(records), "failures": len(failures), "num_bytes": num_bytes,
                  "failure_reasons": dict(sorted(reasons.items()))}
        _atomic_write(self._marker(index), json.dumps(marker).encode())

    def counts(self) -> dict[int, dict[str, Any]]:
        """Done markers by unit index."""
        return {i: json.loads(self._marker(i).read_text()) for i in range(self.num_units) if self.is_done(i)}

    def pending_units(self) -> list[int]:
        return [i for i in range(self.num_units) if not self.is_done(i)]

    # --- summaries and metadata ---

    def write_host_summary(self, process_index: int, summary: dict[str, Any]) -> None:
        """Each host may leave its run summary; `finalize` gathers them into summary.json."""
        (self.dir / ".hosts").mkdir(exist_ok=True)
        _atomic_write(self.dir / ".hosts" / f"{process_index:05d}.json", json.dumps(summary).encode())

    def _host_summaries(self) -> list[dict[str, Any]]:
        folder = self.dir / ".hosts"
        if not folder.exists():
            return []
        return [json.loads(p.read_text()) for p in sorted(folder.glob("[0-9]*.json"))]

    def finalize(self, summary: dict[str, Any] | None = None) -> bool:
        """Write the TFDS metadata and summary.json once every unit is done (idempotent).

        Returns False, writing nothing, while some unit is not done. Reads only the done markers.
        """
        counts = self.counts()
        if len(counts) < self.num_units:
            return False
        lengths = [counts[i]["records"] for i in range(self.num_units)]
        num_bytes = sum(c["num_bytes"] if "num_bytes" in c else self.shard_path(i).stat().length
                        for i, c in counts.items())
        template = tfds.core.ShardedFileTemplate(data_dir=self.dir, template=FILENAME_TEMPLATE,
                                                 dataset_name=DATASET_NAME, split=SPLIT,
                                                 filetype_suffix="array_record")
        split = tfds.core.SplitInfo(name=SPLIT, shard_lengths=lengths, num_bytes=num_bytes,
                                    filename_template=template)
        tfds.folder_dataset.write_metadata(data_dir=self.dir, features=self.features, split_infos=[split],
                                           filename_template=FILENAME_TEMPLATE, check_data=False,
                                           description="Images recaptioned by recap_jax (LLaVA + LLaMA-3).")
        reasons: collections.Counter = collections.Counter()
        for c in counts.values():
            reasons.update(c.get("failure_reasons", {}))
        totals = {"records": sum(lengths), "failures": sum(c["failures"] for c in counts.values()),
                  "units": self.num_units, "num_bytes": num_bytes,
                  "failure_reasons": dict(reasons.most_common())}
        _atomic_write(self.dir / "summary.json", json.dumps(
            {**totals, "last_run": summary or {}, "hosts": self._host_summaries()}, indent=1).encode())
        return True


def canonical_example(serialized: bytes) -> bytes:
    """The same tf.train.Example with its features in sorted name order. Protobuf writes a map in
    an order that differs from process to process, so without this the same records give other
    shard bytes in every run; with it a repeated or resumed run writes identical shards."""
    return tf_example_pb2.Example.FromString(serialized).SerializeToString(deterministic=True)


def _tmp_name(path: epath.Path) -> epath.Path:
    return path.parent / f".{path.name}{TMP_MARK}{uuid.uuid4().hex[:8]}"


def _write_array_record(path: epath.Path, serialized: Sequence[bytes]) -> int:
    """Atomically write an ArrayRecord file (also with zero records); returns its size in bytes.

    The ArrayRecord writer only writes local files: for gs:// the file is built in a local
    temporary folder, then copied to a temporary name beside its destination and renamed.
    """
    def write(local_path: str) -> int:
        writer = ArrayRecordWriter(local_path, "group_size:1")
        try:
            for record in serialized:
                writer.write(record)
        finally:
            writer.close()
        return os.path.getsize(local_path)

    tmp = _tmp_name(path)
    if is_local(path):
        size = write(str(tmp))
    else:
        with tempfile.TemporaryDirectory(prefix="recap_shard_") as local_dir:
            local = os.path.join(local_dir, path.name)
            size = write(local)
            # Streamed through the destination's own backend (epath's copy stays within one backend).
            with open(local, "rb") as src, tmp.open("wb") as dst:
                shutil.copyfileobj(src, dst, 16 << 20)
    tmp.replace(path)
    return size


def _atomic_write(path: epath.Path, data: bytes) -> None:
    tmp = _tmp_name(path)
    tmp.write_bytes(data)
    tmp.replace(path)
