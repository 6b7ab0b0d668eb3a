r"""Export a caption output folder in the released Recap-DataComp-1B Parquet schema.

    python -m recap_jax.export OUTPUT_DIR DEST

DEST gets train-NNNNN.parquet files (columns url, re_caption, org_caption, sha256, key,
re_clip_score, org_clip_score, re_length, org_length, re_gpt4v_score, org_gpt4v_score) and
export_summary.json. Rows are deduplicated by sha256 (the count is printed); CLIP scores are
filled from `python -m recap_jax.analyze OUTPUT_DIR --clip ...`, else null. See docs/analysis.md.
"""

import json

from absl import flags

from recap_jax import cli
from recap_jax.errors import ConfigError

_DEDUP = flags.DEFINE_bool("dedup", True, "Keep only the first row of each sha256.")
_SCORES = flags.DEFINE_list("scores", None, "clip_scores*.parquet files from `analyze --clip` (default: "
                            "OUTPUT_DIR/analysis/clip_scores*.parquet if present).")
_ROWS_PER_GROUP = flags.DEFINE_integer("rows_per_group", 65_536, "Parquet row group size in rows.")
_ROWS_PER_FILE = flags.DEFINE_integer("rows_per_file", 1_048_576, "Rows per Parquet file.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 1, "Split the export into jobs by sha256 (one per host).")
_SHARD_INDEX = flags.DEFINE_integer("shard_index", 0, "This job's share, in [0, num_shards).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace files a previous export left in DEST.")
_GCS_TIMEOUT = flags.DEFINE_float("gcs_timeout_s", 20.0, "Seconds each gs:// path has to answer at start-up.")


def main(argv) -> int:
    from recap_jax.release.parquet_export import export_parquet  # deferred past the flags (cli.job_main)

    if len(argv) != 3:
        raise ConfigError(f"expected OUTPUT_DIR and DEST, got {list(argv[1:])}: "
                          "python -m recap_jax.export OUTPUT_DIR DEST")
    summary = export_parquet(argv[1], argv[2], scores=_SCORES.value, dedup=_DEDUP.value,
                             rows_per_group=_ROWS_PER_GROUP.value, rows_per_file=_ROWS_PER_FILE.value,
                             shard_index=_SHARD_INDEX.value, num_shards=_NUM_SHARDS.value,
                             overwrite=_OVERWRITE.value, gcs_timeout_s=_GCS_TIMEOUT.value)
    brief = {k: v for k, v in summary.items() if k != "duplicates"}
    if summary["rows_read"] == 0:
        print(f"[export] {argv[1]} has no examples (a caption output where every sample failed lists them "
              "in its failures*.jsonl): the export is empty")
    print(json.dumps(brief, indent=1))
    print(f"[export] {summary['rows_written']} rows -> {argv[2]} ({summary['duplicates_dropped']} duplicate "
          f"sha256 dropped; null columns: {', '.join(summary['null_columns'])})")
    return 0


if __name__ == "__main__":
    cli.run_config_command(main, __doc__, __name__)
