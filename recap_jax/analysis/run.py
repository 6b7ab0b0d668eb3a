"""`analyze`: one streaming pass over a recaptioned dataset -> statistics, scores, plots, report.

    OUT/analysis.json           statistics (analysis.Accumulator.summary) and the settings used
    OUT/*.png                   plots (analysis.plots)
    OUT/report.html, images/    the report with its gallery thumbnails (analysis.report)
    OUT/clip_scores.parquet     per-sample CLIP scores in row order (with --clip; read by export)
    OUT/shards/                 each shard's accumulator (sharded runs; merged by `--merge`)

A sharded run (`num_shards` > 1) analyses one contiguous share per host and leaves its shard
files; `merge` (any host, once all are there) writes the rest. A single run is shard 0 of 1
followed by the merge.
"""

from __future__ import annotations

import dataclasses
import glob
import io
import json
import os
from typing import Any

from etils import epath
from tqdm import tqdm

from recap_jax.analysis import health, plots, report
from recap_jax.analysis.clip_scores import ClipScorer, ScoresWriter
from recap_jax.analysis.stats import Accumulator, BottomK, key_priority
from recap_jax.clip.data import Tokenizer
from recap_jax.data.storage import is_local, staged_folder
from recap_jax.errors import ConfigError
from recap_jax.release.rows import OutputRows, Row, open_rows

CHUNK = 256


@dataclasses.dataclass
class AnalyzeSettings:
    out: str = ""  # default: OUTPUT_DIR/analysis, or <parquet>_analysis
    clip: str = ""  # a train_clip workdir or a HF CLIPModel folder; empty = no scores
    clip_batch_size: int = 32
    clip_text_length: int = 0  # 0 = the model's training length / context
    tokenizer: str = ""  # HF tokenizer folder for token lengths; default: the CLIP's, if any
    health: health.HealthSettings = dataclasses.field(default_factory=health.HealthSettings)
    gallery_size: int = 48  # random samples shown
    gallery_per_flag: int = 8  # extra samples of each flag shown
    listed_per_flag: int = 1000  # keys listed per flag in analysis.json
    top_words: int = 25
    shard_index: int = 0
    num_shards: int = 1
    progress: bool = True


def default_out(path: str) -> str:
    path = os.path.normpath(path) if is_local(path) else path.rstrip("/")
    if (epath.Path(path) / "dataset_info.json").exists():
        return f"{path}/analysis"
    return path.removesuffix(".parquet") + "_analysis"


def _thumbnail(data: bytes, folder: str, name: str) -> str | None:
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        image.thumbnail((256, 256))
        image.save(os.path.join(folder, name), format="JPEG", quality=85)
        return f"images/{name}"
    except Exception:  # noqa: BLE001 - an undecodable image shows as missing, its captions still do
        return None


def _gallery_item(row: Row, flags: list[str], scores, re_tokens) -> dict[str, Any]:
    return {"key": row.key, "url": row.url, "org_caption": row.org_caption, "re_caption": row.re_caption,
            "org_words": len(row.org_caption.split()), "re_words": len(row.re_caption.split()),
            "re_tokens": re_tokens, "re_clip_score": scores[0] if scores else row.re_clip_score,
            "org_clip_score": scores[1] if scores else row.org_clip_score, "flags": flags,
            "image_bytes": row.image}


def _shard_name(settings: AnalyzeSettings) -> str:
    return f"{settings.shard_index:05d}-of-{settings.num_shards:05d}"


def analyze_shard(path: str, settings: AnalyzeSettings) -> str:
    """Analyses this shard's rows; returns the shard file written under OUT/shards."""
    out = settings.out or default_out(path)
    # CLIP scores need the images: a captions-only output gets them from the caption job's input.
    rows = open_rows(path, settings.shard_index, settings.num_shards, images=bool(settings.clip),
                     images_field="--clip (a captions-only output, output.store_images=false: its images "
                                  "are read from the caption job's input.paths)")
    os.makedirs(os.path.join(out, "shards"), exist_ok=True)
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    scorer = writer = None
    if settings.clip:
        if not isinstance(rows, OutputRows):
            raise ConfigError(f"--clip: {path} carries no images (released Parquet); score a caption output folder")
        scorer = ClipScorer(settings.clip, tokenizer=settings.tokenizer, text_length=settings.clip_text_length,
                            batch_size=settings.clip_batch_size)
        name = "clip_scores.parquet" if settings.num_shards == 1 else f"clip_scores-{_shard_name(settings)}.parquet"
        writer = ScoresWriter(os.path.join(out, name))
    tokenizer = _tokenizer(settings, scorer)
    templates = health.compile_templates(settings.health)
    acc = Accumulator()
    gallery = BottomK(settings.gallery_size)
    flagged = {f: BottomK(settings.gallery_per_flag) for f in health.FLAGS}
    bar = tqdm(total=len(rows), desc=f"analyze {_shard_name(settings)}", unit="row", disable=not settings.progress)
    chunk: list[Row] = []

    def process(chunk: list[Row]) -> None:
        tokens = _token_lengths(tokenizer, chunk)
        scores = scorer.score(chunk) if scorer else [None] * len(chunk)
        for row, (org_tokens, re_tokens), row_scores in zip(chunk, tokens, scores):
            acc.num_rows += 1
            acc.add_lengths("org", len(row.org_caption.split()), org_tokens)
            acc.add_lengths("re", len(row.re_caption.split()), re_tokens)
            acc.vocab["org"].update(health.words(row.org_caption))
            acc.vocab["re"].update(health.words(row.re_caption))
            acc.org_empty += not row.org_caption.strip()
            generated = row.re_tokens if row.re_tokens is not None else re_tokens
            flags = health.caption_flags(row.re_caption, generated, settings.health, templates)
            acc.add_flags(row.key, flags, settings.listed_per_flag)
            if scorer:
                writer.add(row.key, row_scores)
                if row_scores is None:
                    acc.clip["failed"] += 1
                else:
                    acc.add_scores(row.key, *row_scores)
            priority = key_priority(row.key)
            for sample in [gallery] + [flagged[f] for f in flags]:
                if sample.would_keep(priority):
                    sample.add(priority, _gallery_item(row, flags, row_scores, generated), row.key)
        bar.update(len(chunk))

    for row in rows:
        chunk.append(row)
        if len(chunk) == CHUNK:
            process(chunk)
            chunk = []
    process(chunk)
    bar.close()
    if writer:
        writer.close()
    items = {}
    for sample in [gallery, *flagged.values()]:
        for priority, item in sample.items():
            image = item.pop("image_bytes", None)
            if item["key"] not in items:
                item["priority"] = priority
                item["image"] = _thumbnail(image, os.path.join(out, "images"), f"{priority:016x}.jpg") if image else None
                items[item["key"]] = item
    shard = {"source": path, "shard": _shard_name(settings), "accumulator": acc.to_json(),
             "gallery": sorted(items.values(), key=lambda i: i["priority"]),
             "token_lengths_from": _tokens_from(settings, tokenizer), "clip": settings.clip or None,
             "clip_text_length": scorer.text_length if scorer else None}
    shard_path = os.path.join(out, "shards", f"{_shard_name(settings)}.json")
    with open(shard_path, "w") as f:
        json.dump(shard, f)
    return shard_path


def _tokenizer(settings: AnalyzeSettings, scorer):
    if settings.tokenizer:
        try:
            return Tokenizer(settings.tokenizer).hf
        except ValueError as e:
            raise ConfigError(f"--tokenizer: {e}") from None
    return scorer.tokenizer.hf if scorer else None


def _tokens_from(settings: AnalyzeSettings, tokenizer) -> str:
    if tokenizer is None:
        return "recaption: generated tokens stored by the caption job; original: not counted (no --tokenizer)"
    return f"tokenizer {settings.tokenizer or settings.clip} (no special tokens)"


def _token_lengths(tokenizer, chunk: list[Row]) -> list[tuple[int | None, int | None]]:
    if not chunk:
        return []
    if tokenizer is None:
        return [(None, row.re_tokens) for row in chunk]
    org = tokenizer([r.org_caption for r in chunk], add_special_tokens=False)["input_ids"]
    re = tokenizer([r.re_caption for r in chunk], add_special_tokens=False)["input_ids"]
    return [(len(o), len(r)) for o, r in zip(org, re)]


def merge(out: str, settings: AnalyzeSettings) -> dict[str, Any]:
    """Merges every shard under OUT/shards into analysis.json, the plots and report.html (a gs://
    OUT is read into a local folder, merged there and written back)."""
    plots.pyplot("analyze --merge")
    with staged_folder(out, download=True) as local:
        return _merge_local(local, dataclasses.replace(settings, out=local))


def _merge_local(out: str, settings: AnalyzeSettings) -> dict[str, Any]:
    files = sorted(glob.glob(os.path.join(out, "shards", "*.json")))
    if not files:
        raise ConfigError(f"--merge: no shard files under {out}/shards; run the shards first")
    shards = [json.load(open(f)) for f in files]
    expected = int(shards[0]["shard"].split("-of-")[1])
    if len(shards) != expected:
        raise ConfigError(f"--merge: {len(shards)} of {expected} shards are in {out}/shards; wait for the rest")
    acc = Accumulator()
    gallery = BottomK(settings.gallery_size)
    flagged = {f: BottomK(settings.gallery_per_flag) for f in health.FLAGS}
    for shard in shards:
        acc.merge(Accumulator.from_json(shard["accumulator"]), settings.listed_per_flag)
        for item in shard["gallery"]:
            for sample in [gallery] + [flagged[f] for f in item["flags"]]:
                sample.add(item["priority"], item, item["key"])
    chosen = {}
    for sample in [gallery, *flagged.values()]:
        for _, item in sample.items():
            chosen.setdefault(item["key"], item)
    keep = {os.path.basename(i["image"]) for i in chosen.values() if i["image"]}
    for f in glob.glob(os.path.join(out, "images", "*.jpg")):
        if os.path.basename(f) not in keep:
            os.remove(f)
    summary = acc.summary(settings.top_words)
    first = shards[0]
    summary.update({"source": first["source"], "shards": len(shards), "token_lengths_from": first["token_lengths_from"],
                    "clip_model": first["clip"], "clip_text_length": first["clip_text_length"],
                    "health_settings": dataclasses.asdict(settings.health)})
    summary["plots"] = plots.write_plots(acc, out)
    with open(os.path.join(out, "analysis.json"), "w") as f:
        json.dump(summary, f, indent=1)
    gallery_items = sorted(chosen.values(), key=lambda i: i["priority"])
    report.write_report(os.path.join(out, "report.html"), summary, gallery_items)
    return summary


def analyze(path: str, settings: AnalyzeSettings) -> dict[str, Any] | None:
    """Runs this shard; merges too when the run is not sharded. Returns the summary when merged."""
    out = settings.out or default_out(path)
    if settings.num_shards == 1:
        plots.pyplot("analyze")  # a missing extra is said now, not after the pass
    with staged_folder(out) as local:  # a gs:// OUT: written locally, uploaded at the end
        local_settings = dataclasses.replace(settings, out=local)
        if settings.num_shards == 1:  # a previous sharded run's files would not merge with this one
            for f in glob.glob(os.path.join(local, "shards", "*.json")):
                os.remove(f)
        analyze_shard(path, local_settings)
        return _merge_local(local, local_settings) if settings.num_shards == 1 else None
