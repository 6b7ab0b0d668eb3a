r"""Section 4 of the paper as a command: what the recaptions are, next to the originals.

    python -m recap_jax.analyze OUTPUT_DIR_or_PARQUET [--clip CHECKPOINT] [--out DIR]

Length distributions (words, tokens), mean lengths, vocabulary sizes and the recaption share of
the joint vocabulary, top words; caption health flags (truncated, repetition, empty, template);
with --clip (a train_clip workdir or a HF CLIPModel folder) per-sample CLIP scores of both
captions and the pairwise win rate, written to OUT/clip_scores.parquet for `recap_jax.export`.
Writes OUT/analysis.json, PNG plots and OUT/report.html (default OUT: OUTPUT_DIR/analysis).
Pods: run with --num_shards=N --shard_index=i on each host, then once with --merge. See docs/analysis.md.
"""

import json

from absl import flags

from recap_jax import cli
from recap_jax.errors import ConfigError

_OUT = flags.DEFINE_string("out", "", "Output folder (default: OUTPUT_DIR/analysis or <parquet>_analysis).")
_CLIP = flags.DEFINE_string("clip", "", "CLIP for scores: a train_clip workdir or a HF CLIPModel folder.")
_CLIP_BATCH = flags.DEFINE_integer("clip_batch_size", 32, "Images or captions per CLIP encoder call.")
_CLIP_TEXT_LENGTH = flags.DEFINE_integer("clip_text_length", 0, "CLIP text tokens (0 = the model's own).")
_TOKENIZER = flags.DEFINE_string("tokenizer", "", "HF tokenizer folder for token lengths (default: the CLIP's).")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 128, "The caption run's decode.max_new_tokens "
                                       "(a recaption of that many tokens is flagged truncated).")
_MIN_REPEATS = flags.DEFINE_integer("min_repeats", 3, "Back-to-back copies of an n-gram that make a loop.")
_MIN_SPAN = flags.DEFINE_integer("min_span", 8, "Words a loop must cover to be flagged.")
_GALLERY = flags.DEFINE_integer("gallery_size", 48, "Random samples in the report's gallery.")
_PER_FLAG = flags.DEFINE_integer("gallery_per_flag", 8, "Extra gallery samples of each flag.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 1, "Hosts sharing the run (each analyses a contiguous share).")
_SHARD_INDEX = flags.DEFINE_integer("shard_index", 0, "This host's share, in [0, num_shards).")
_MERGE = flags.DEFINE_bool("merge", False, "Merge the shards' results under OUT (after a sharded run).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
_GCS_TIMEOUT = flags.DEFINE_float("gcs_timeout_s", 20.0, "Seconds each gs:// path has to answer at start-up.")


def settings(run, health):
    """The flags as `run.AnalyzeSettings` (the job's modules, imported by `main`)."""
    return run.AnalyzeSettings(
        out=_OUT.value, clip=_CLIP.value, clip_batch_size=_CLIP_BATCH.value,
        clip_text_length=_CLIP_TEXT_LENGTH.value, tokenizer=_TOKENIZER.value,
        health=health.HealthSettings(max_new_tokens=_MAX_NEW_TOKENS.value, min_repeats=_MIN_REPEATS.value,
                                     min_span=_MIN_SPAN.value),
        gallery_size=_GALLERY.value, gallery_per_flag=_PER_FLAG.value, shard_index=_SHARD_INDEX.value,
        num_shards=_NUM_SHARDS.value, progress=_PROGRESS.value)


def main(argv) -> int:
    from recap_jax.analysis import health, run  # deferred past the flags (cli.job_main)
    from recap_jax.data.storage import check_reachable

    if len(argv) != 2:
        raise ConfigError(f"expected one OUTPUT_DIR or Parquet path, got {list(argv[1:])}: "
                          "python -m recap_jax.analyze PATH [--clip CHECKPOINT]")
    s = settings(run, health)
    check_reachable({"PATH": argv[1], "--clip": s.clip, "--tokenizer": s.tokenizer}, _GCS_TIMEOUT.value)
    out = s.out or run.default_out(argv[1])  # which reads PATH
    check_reachable({"--out": out}, _GCS_TIMEOUT.value, writable=("--out",))
    summary = run.merge(out, s) if _MERGE.value else run.analyze(argv[1], s)
    if summary is None:
        print(f"[analyze] shard {s.shard_index}/{s.num_shards} written under {out}/shards; "
              f"run with --merge once every shard is done")
        return 0
    brief = {k: v for k, v in summary.items() if k not in ("flag_keys", "org_top_words", "re_top_words")}
    print(json.dumps(brief, indent=1))
    if summary.get("num_rows") == 0:
        print(f"[analyze] {argv[1]} has no examples (a caption output where every sample failed lists them "
              "in its failures*.jsonl): the analysis is empty")
    print(f"[analyze] report: {out}/report.html")
    return 0


if __name__ == "__main__":
    cli.run_config_command(main, __doc__, __name__)
