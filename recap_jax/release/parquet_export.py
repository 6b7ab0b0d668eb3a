"""Our caption output -> Parquet in the released Recap-DataComp-1B schema, deduplicated by sha256.

    DEST/train-00000.parquet, train-00001.parquet, ...   `rows_per_file` rows each, row groups of
                                                         `rows_per_group` rows
    DEST/export_summary.json                             counts, duplicates dropped, null columns

The first row of each image (by sha256, in output order) is kept. Scores come from the
`clip_scores*.parquet` files `recap_jax.analyze --clip` writes (same row order, joined by key);
without them the score columns are null, as the GPT-4V ratings always are.
Exporting in `num_shards` jobs partitions rows by sha256, so that each image's duplicates meet in
one job: the jobs' files together are the deduplicated dataset.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from etils import epath
from tqdm import tqdm

from recap_jax.data.storage import check_reachable, is_inside, staged_folder

from recap_jax.data.schema import image_sha256
from recap_jax.errors import ConfigError
from recap_jax.release import schema
from recap_jax.release.rows import OutputRows, Row, parquet_file

SCORES_GLOB = "clip_scores*.parquet"
DUPLICATES_LISTED = 1000


def default_scores(output_dir: str) -> list[str]:
    """Score files `analyze --clip` left in OUTPUT_DIR/analysis, in row order."""
    folder = epath.Path(output_dir) / "analysis"
    return sorted(str(f) for f in folder.glob(SCORES_GLOB)) if folder.exists() else []


def _scores(files: list[str]) -> Iterator[dict[str, Any]]:
    for f in files:
        for batch in parquet_file(f).iter_batches(columns=["key", "re_clip_score", "org_clip_score"]):
            yield from batch.to_pylist()


def _sha_shard(sha256: str, num_shards: int) -> int:
    return int(sha256[:12], 16) % num_shards


class _PartWriter:
    """Writes released-schema rows into numbered files of whole row groups."""

    def __init__(self, dest: str, prefix: str, rows_per_group: int, rows_per_file: int):
        self.dest, self.prefix = dest, prefix
        self.rows_per_group, self.rows_per_file = rows_per_group, rows_per_file
        self.schema = schema.arrow_schema()
        self.files: list[str] = []
        self._writer: pq.ParquetWriter | None = None
        self._in_file = 0
        self._pending: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        self._pending.append(row)
        if len(self._pending) == self.rows_per_group or self._in_file + len(self._pending) == self.rows_per_file:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        if self._writer is None:
            path = os.path.join(self.dest, f"{self.prefix}-{len(self.files):05d}.parquet")
            self._writer = pq.ParquetWriter(path, self.schema, compression="zstd")
            self.files.append(path)
        self._writer.write_table(pa.Table.from_pylist(self._pending, schema=self.schema),
                                 row_group_size=self.rows_per_group)
        self._in_file += len(self._pending)
        self._pending = []
        if self._in_file >= self.rows_per_file:
            self._writer.close()
            self._writer, self._in_file = None, 0

    def close(self) -> None:
        self._flush()
        if self._writer is not None:
            self._writer.close()
        if not self.files:  # an empty dataset is still a readable file with the schema
            path = os.path.join(self.dest, f"{self.prefix}-00000.parquet")
            pq.write_table(self.schema.empty_table(), path)
            self.files.append(path)


def released_row(row: Row, sha256: str, scores: dict[str, Any] | None) -> dict[str, Any]:
    """One row in the released schema (lengths in whitespace words, for both captions)."""
    return {"url": row.url, "re_caption": row.re_caption, "org_caption": row.org_caption, "sha256": sha256,
            "key": row.key,
            "re_clip_score": scores["re_clip_score"] if scores else None,
            "org_clip_score": scores["org_clip_score"] if scores else None,
            "re_length": schema.word_length(row.re_caption), "org_length": schema.word_length(row.org_caption),
            "re_gpt4v_score": None, "org_gpt4v_score": None}


def export_parquet(output_dir: str, dest: str, *, scores: list[str] | None = None, dedup: bool = True,
                   rows_per_group: int = 65_536, rows_per_file: int = 1_048_576, shard_index: int = 0,
                   num_shards: int = 1, overwrite: bool = False, progress: bool = True,
                   gcs_timeout_s: float = 20.0) -> dict[str, Any]:
    """Writes DEST (see the module docstring); returns the summary also written to export_summary.json.

    gs:// paths are probed first (`gcs_timeout_s`); a DEST inside OUTPUT_DIR is refused."""
    if rows_per_group < 1 or rows_per_file < rows_per_group:
        raise ConfigError(f"--rows_per_group={rows_per_group} / --rows_per_file={rows_per_file}: "
                          "need 1 <= rows_per_group <= rows_per_file")
    if not 0 <= shard_index < num_shards:
        raise ConfigError(f"--shard_index={shard_index}: must be in [0, --num_shards={num_shards})")
    check_reachable({"OUTPUT_DIR": output_dir, "DEST": dest}, gcs_timeout_s, writable=("DEST",))
    if is_inside(dest, output_dir):
        raise ConfigError(f"DEST: {dest} is inside OUTPUT_DIR {output_dir} (the export would write into the "
                          "caption output); choose a folder outside it")
    rows = OutputRows(output_dir)
    prefix = "train" if num_shards == 1 else f"train-{shard_index:05d}-of-{num_shards:05d}"
    target = epath.Path(dest)
    old = list(target.glob(f"{prefix}-*.parquet")) if target.exists() else []
    if old and not overwrite:
        raise ConfigError(f"{dest}: already holds {len(old)} exported file(s); choose another DEST or pass --overwrite")
    for f in old:
        f.unlink()
    scores = default_scores(output_dir) if scores is None else scores
    with staged_folder(dest) as local_dest:  # a gs:// DEST: written locally, uploaded at the end
        os.makedirs(local_dest, exist_ok=True)
        return _export(rows, output_dir, dest, local_dest, prefix, scores, dedup, rows_per_group, rows_per_file,
                       shard_index, num_shards, progress)


def _export(rows: OutputRows, output_dir: str, dest: str, local_dest: str, prefix: str, scores: list[str],
            dedup: bool, rows_per_group: int, rows_per_file: int, shard_index: int, num_shards: int,
            progress: bool) -> dict[str, Any]:
    score_rows = _scores(scores) if scores else None
    writer = _PartWriter(local_dest, prefix, rows_per_group, rows_per_file)
    seen: dict[bytes, str] = {}  # sha256 digest -> first key (memory grows with unique images)
    duplicates: list[dict[str, str]] = []
    counts = {"rows_read": 0, "rows_written": 0, "duplicates_dropped": 0, "other_shards": 0,
              "sha256_computed_now": 0}
    for row in tqdm(rows, total=len(rows), desc="export", unit="row", disable=not progress):
        counts["rows_read"] += 1
        row_scores = next(score_rows, None) if score_rows is not None else None
        if score_rows is not None and (row_scores is None or row_scores["key"] != row.key):
            raise ConfigError(f"--scores: {scores} do not match {output_dir} at row {counts['rows_read'] - 1} "
                              f"(key {row.key!r}); rerun `recap_jax.analyze --clip` on this output")
        sha256 = row.sha256
        if not sha256:  # outputs written before records carried it
            sha256 = image_sha256(row.image)
            counts["sha256_computed_now"] += 1
        if num_shards > 1 and _sha_shard(sha256, num_shards) != shard_index:
            counts["other_shards"] += 1
            continue
        if dedup:
            digest = bytes.fromhex(sha256)
            if digest in seen:
                counts["duplicates_dropped"] += 1
                if len(duplicates) < DUPLICATES_LISTED:
                    duplicates.append({"key": row.key, "kept": seen[digest], "sha256": sha256})
                continue
            seen[digest] = row.key
        writer.add(released_row(row, sha256, row_scores))
        counts["rows_written"] += 1
    writer.close()
    null_columns = {c: "never computed by this project" for c in schema.NEVER_COMPUTED}
    if not scores:
        null_columns.update({c: "no CLIP scores: run `python -m recap_jax.analyze OUTPUT_DIR --clip ...` first"
                             for c in ("re_clip_score", "org_clip_score")})
    summary = {"source": output_dir, "dest": dest, **counts, "dedup": dedup,
               "shard": f"{shard_index}/{num_shards}", "files": [os.path.basename(f) for f in writer.files],
               "rows_per_group": rows_per_group, "rows_per_file": rows_per_file, "scores_from": scores,
               "null_columns": null_columns, "lengths": "re_length/org_length: whitespace-separated words",
               "duplicates": duplicates}
    name = "export_summary.json" if num_shards == 1 else f"export_summary-{shard_index:05d}-of-{num_shards:05d}.json"
    with open(os.path.join(local_dest, name), "w") as f:
        json.dump(summary, f, indent=1)
    return summary
