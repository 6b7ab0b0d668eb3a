"""The captioner's output: a TFDS dataset folder in ArrayRecord format, written unit by unit.

    OUTPUT_DIR/
      recap-train.array_record-00007-of-00100    one shard per work unit (records in input order)
      failures-00007-of-00100.jsonl              samples that could not be captioned (key, source, reason)
      .units/00007.json                          done marker, written last: record/failure counts, bytes
      .hosts/00000.json                          each host's last run summary (optional)
      run_config.json                            the run's identity: what changes a caption (checked on resume)
      .lease.json                                which job writes here now (data/lease.py)
      dataset_info.json, features.json           TFDS metadata, written once every unit is done
      summary.json                               totals, failure reasons and throughput

Every local file is written under a temporary name (".NAME.tmp-XXXXXXXX") and renamed (on gs://,
where a rename is a copy and a delete, straight to its name: an object appears only once its
upload completes), and a unit counts as done only once its marker exists, so a run killed at any
point leaves no half-unit counted; started again, it redoes exactly the units without a marker
and overwrites what they left.
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

from recap_jax.data import identity
from recap_jax.data.schema import DATASET_NAME, RECORD_FEATURES, SPLIT, with_sha256
from recap_jax.data.inputs.base import Failure
from recap_jax.data.storage import is_local, require_gcs
from recap_jax.errors import ConfigError

FILENAME_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
RUN_CONFIG = "run_config.json"
REMEDY = ("to keep it, run with the settings it was made with; otherwise use a new output.dir, "
          "or --config.output.overwrite=true to delete it and start anew")
# What a run writes into its output folder (start_clean removes exactly these).
OWN_FILES = (f"{DATASET_NAME}-{SPLIT}.array_record-*", f".{DATASET_NAME}-{SPLIT}.array_record-*", "failures-*",
             ".failures-*", ".units", ".hosts", RUN_CONFIG, "dataset_info.json", "features.json",
             "summary.json", ".summary.json*", ".dataset_info.json*", ".features.json*", f".{RUN_CONFIG}*")
TMP_MARK = ".tmp-"


def failure_category(reason: str) -> str:
    """"truncated or corrupt: OSError: ..." -> "truncated or corrupt": the part before details."""
    return reason.split(":", 1)[0].strip()[:80]


class OutputDataset:
    """One output folder (local or gs://) of `num_units` shards; see the module docstring."""

    def __init__(self, output_dir: str, num_units: int, features=RECORD_FEATURES,
                 fingerprint: dict[str, Any] | None = None, overwrite: bool = False):
        if num_units < 1:
            raise ConfigError(f"input: no work units (num_units={num_units}); nothing to caption")
        if str(output_dir).startswith("gs://"):
            require_gcs("output.dir")
        self.dir = epath.Path(output_dir)
        self.num_units = num_units
        self.features = features
        self.dir.mkdir(parents=True, exist_ok=True)
        if overwrite:
            self.start_clean()
        (self.dir / ".units").mkdir(exist_ok=True)
        identity.check_or_record(self.dir / RUN_CONFIG, {"num_units": num_units, **(fingerprint or {})},
                                 folder_field="output.dir", remedy=REMEDY)

    def start_clean(self) -> None:
        """Remove everything a previous run wrote here (output.overwrite=true), the lease excepted."""
        for pattern in OWN_FILES:
            for path in self.dir.glob(pattern):
                path.rmtree() if path.is_dir() else path.unlink(missing_ok=True)

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
        if "sha256" in self.features:
            records = [with_sha256(record) for record in records]
        if "image" not in self.features:  # captions only: the bytes were needed for sha256 alone
            records = [{k: v for k, v in record.items() if k != "image"} for record in records]
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

    def _previous_summary(self) -> dict[str, Any]:
        path = self.dir / "summary.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def _host_summaries(self) -> list[dict[str, Any]]:
        folder = self.dir / ".hosts"
        if not folder.exists():
            return []
        return [json.loads(p.read_text()) for p in sorted(folder.glob("[0-9]*.json"))]

    def finalize(self, summary: dict[str, Any] | None = None) -> bool:
        """Write the TFDS metadata and summary.json once every unit is done (idempotent).

        Returns False, writing nothing, while some unit is not done. Reads only the done markers.
        `summary`: this run's; None keeps the last one recorded.
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
        if summary is None:  # a run that captioned nothing keeps the summary of the one that did
            summary = self._previous_summary().get("last_run", {})
        _atomic_write(self.dir / "summary.json", json.dumps(
            {**totals, "last_run": summary, "hosts": self._host_summaries()}, indent=1).encode())
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

    if is_local(path):
        tmp = _tmp_name(path)
        size = write(str(tmp))
        tmp.replace(path)
        return size
    with tempfile.TemporaryDirectory(prefix="recap_shard_") as local_dir:
        local = os.path.join(local_dir, path.name)
        size = write(local)
        # Straight to its name: a GCS object appears only once its upload completes (a rename there
        # would be a copy and a delete). Streamed through the destination's own backend.
        with open(local, "rb") as src, path.open("wb") as dst:
            shutil.copyfileobj(src, dst, 16 << 20)
    return size


def _atomic_write(path: epath.Path, data: bytes) -> None:
    if not is_local(path):
        path.write_bytes(data)  # an object appears whole or not at all
        return
    tmp = _tmp_name(path)
    tmp.write_bytes(data)
    tmp.replace(path)
