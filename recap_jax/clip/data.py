"""Input pipelines for CLIP: grain over the captioner's TFDS ArrayRecord output folders.

Training pipeline, per host (all steps are lazy, random-access `grain.MapDataset` operations):

    concatenate(folders) -> shuffle(seed) -> repeat (reshuffled every epoch)
      -> map_with_index(pick caption, tokenize, decode + random-resized-crop)
      -> keep this host's elements (index % process_count == process_index) -> batch

Randomness is a pure function of (seed, global element index): whether the example uses
`org_caption` (probability `org_caption_prob`, the paper's p) or `re_caption`, and its crop. So the order and
the content are the same on every run, and the iterator state is one number (the next batch
index) that is identical on every host: it goes into the checkpoint as JSON.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
from PIL import Image

from recap_jax.data.images import decode_image
from recap_jax.data.inputs.paths import split_paths
from recap_jax.data.tfds_folder import open_tfds_folder
from recap_jax.errors import ConfigError
from recap_jax.preprocess.image import CLIP_MEAN, CLIP_STD


# ---------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------


class Tokenizer:
    """A HF tokenizer folder, used as BOS + text + EOS, truncated and padded to a fixed length."""

    def __init__(self, folder: str):
        from transformers import AutoTokenizer

        if not folder or not os.path.isdir(folder):
            raise ValueError(f"data.tokenizer: {folder!r} is not a local tokenizer folder")
        self.folder = folder
        self.hf = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.eos_id = self.hf.eos_token_id
        if self.eos_id is None:
            raise ValueError(f"data.tokenizer: {folder} defines no eos_token (CLIP pools at EOS)")
        self.pad_id = self.hf.pad_token_id if self.hf.pad_token_id is not None else self.eos_id
        self.vocab_size = len(self.hf)

    def __call__(self, texts: Sequence[str], max_tokens: int, pad_to: int | None = None) -> np.ndarray:
        """int32 [len(texts), pad_to]; each row is truncated to `max_tokens` but keeps its EOS."""
        pad_to = pad_to or max_tokens
        # No truncation/padding arguments: HF would store them in the shared Rust tokenizer, which
        # races when grain threads tokenize concurrently. We cut and pad ourselves instead.
        ids = self.hf(list(texts), add_special_tokens=True)["input_ids"]
        out = np.full((len(texts), pad_to), self.pad_id, np.int32)
        for row, seq in enumerate(ids):
            if not seq or seq[-1] != self.eos_id:  # tokenizers without an EOS post-processor
                seq = list(seq) + [self.eos_id]
            if len(seq) > max_tokens:
                seq = seq[:max_tokens - 1] + [self.eos_id]
            out[row, :len(seq)] = seq
        return out


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


def to_pixels(image: Image.Image) -> np.ndarray:
    """uint8 [H, W, 3]. Images travel to the device as uint8 (4x less host memory and transfer
    than float32); `normalize_on_device` turns them into CLIP-normalised floats inside jit."""
    return np.asarray(image, np.uint8)


def normalize_on_device(images):
    """uint8 pixels -> CLIP-normalised float32 (float inputs are taken as already normalised)."""
    import jax.numpy as jnp

    if not jnp.issubdtype(images.dtype, jnp.integer):
        return images
    mean, std = jnp.asarray(CLIP_MEAN, jnp.float32), jnp.asarray(CLIP_STD, jnp.float32)
    return (images.astype(jnp.float32) / 255.0 - mean) / std


def resize_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """Evaluation transform (HF CLIPImageProcessor): shorter side -> size, centre crop; uint8."""
    scale = size / min(image.size)
    w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((w, h), Image.BICUBIC)
    left, top = (w - size) // 2, (h - size) // 2
    return to_pixels(image.crop((left, top, left + size, top + size)))


def random_resized_crop(image: Image.Image, size: int, rng: np.random.Generator,
                        scale: tuple[float, float] = (0.9, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
    """Training transform: a random crop covering `scale` of the area, resized to size x size; uint8."""
    area = image.width * image.height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        w, h = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
        if 0 < w <= image.width and 0 < h <= image.height:
            left = int(rng.integers(0, image.width - w + 1))
            top = int(rng.integers(0, image.height - h + 1))
            return to_pixels(image.resize((size, size), Image.BICUBIC, box=(left, top, left + w, top + h)))
    return resize_center_crop(image, size)  # degenerate aspect ratios


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


def as_text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# ---------------------------------------------------------------------------------------------
# Training pipeline
# ---------------------------------------------------------------------------------------------


# `caption_source` of each training example (an int8 per example in the batch).
SOURCE_RE_CAPTION, SOURCE_ORG_CAPTION, SOURCE_CONCAT = 0, 1, 2
CAPTION_MIXES = ("sample", "concat")


def choose_caption(org_caption: str, re_caption: str, *, org_caption_prob: float, caption_mix: str,
                   draw: float) -> tuple[str, int]:
    """(text, caption_source) for one example; `draw` is a uniform [0, 1) number.

    "sample" (the paper's p): the original alt-text if draw < org_caption_prob, else the
    recaption; an empty caption falls back to the other one. "concat": both, original first
    (so the short alt-text survives truncation of the long recaption).
    """
    org, re = org_caption.strip(), re_caption.strip()
    if caption_mix == "concat":
        if org and re:
            return f"{org} {re}", SOURCE_CONCAT
        return (org, SOURCE_ORG_CAPTION) if org else (re, SOURCE_RE_CAPTION)
    use_org = draw < org_caption_prob
    if not org:
        use_org = False
    elif not re:
        use_org = True
    return (org_caption, SOURCE_ORG_CAPTION) if use_org else (re_caption, SOURCE_RE_CAPTION)


@dataclasses.dataclass
class TrainTransform:
    """Turns (global index, record) into one training example; randomness from (seed, index)."""
    tokenizer: Tokenizer
    image_size: int
    org_caption_prob: float
    caption_mix: str
    re_caption_max_tokens: int
    org_caption_max_tokens: int
    crop_scale: tuple[float, float]
    seed: int

    def __call__(self, index: int, record: dict[str, Any]) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, index])
        text, source = choose_caption(as_text(record["org_caption"]), as_text(record["re_caption"]),
                                      org_caption_prob=self.org_caption_prob,
                                      caption_mix=self.caption_mix, draw=rng.random())
        pad_to = max(self.re_caption_max_tokens, self.org_caption_max_tokens)
        # Each kind has its own token budget; a concatenation gets the whole text length.
        max_tokens = {SOURCE_RE_CAPTION: self.re_caption_max_tokens,
                      SOURCE_ORG_CAPTION: self.org_caption_max_tokens}.get(source, pad_to)
        image = random_resized_crop(decode_image(record["image"]), self.image_size, rng, self.crop_scale)
        return {"image": image, "tokens": self.tokenizer([text], max_tokens, pad_to)[0],
                "caption_source": np.int8(source)}


def train_dataset(folders: str | Sequence[str], tokenizer: Tokenizer, *, image_size: int,
                  per_host_batch: int, seed: int, org_caption_prob: float = 0.8,
                  caption_mix: str = "sample", re_caption_max_tokens: int = 128,
                  org_caption_max_tokens: int = 77, crop_scale: tuple[float, float] = (0.9, 1.0),
                  process_index: int = 0, process_count: int = 1, split: str = "train",
                  format: str = "tfds", captions_map: str = "", captions_parquet: str | Sequence[str] = "",
                  report_dir: str | None = None, image_paths: str = "",
                  image_format: str = "") -> grain.MapDataset:
    """An infinite MapDataset of batches for this host: element b is this host's share of step b.

    `format="webdataset"`: `folders` names img2dataset tars whose captions `captions_map` locates
    (recap_jax.data.captions_map); samples left out are listed in report_dir/missing_captions.jsonl.
    A captions-only output folder (`output.store_images=false`) gets its images from the caption
    job's input (`image_paths`/`image_format`, default: as its run_config.json records them).
    """
    if not 0.0 <= org_caption_prob <= 1.0:
        raise ConfigError(f"data.org_caption_prob: {org_caption_prob} is not in [0, 1] (it is the "
                          "probability of the ORIGINAL caption, the paper's p)")
    if caption_mix not in CAPTION_MIXES:
        raise ConfigError(f"data.caption_mix: {caption_mix!r} is not one of {CAPTION_MIXES}")
    paths = split_paths(folders)  # one comma-separated string (CLI friendly) or a sequence
    if not paths:
        raise ConfigError("data.folders: no dataset folder given")
    if format == "webdataset":
        from recap_jax.release.webdataset_records import open_webdataset_records
        report = os.path.join(report_dir, "missing_captions.jsonl") if report_dir else None
        sources = [grain.MapDataset.source(open_webdataset_records(paths, captions_map,
                                                                   split_paths(captions_parquet), report))]
    elif format == "tfds":
        sources = [grain.MapDataset.source(output_records(p, split, image_paths, image_format)) for p in paths]
    else:
        raise ValueError(f"data.format: {format!r} is not tfds (our output folders) or webdataset (img2dataset tars)")
    records = sources[0] if len(sources) == 1 else grain.MapDataset.concatenate(sources)
    if len(records) < per_host_batch * process_count:
        raise ConfigError(f"data.folders: {len(records)} records are fewer than one global batch "
                         f"({per_host_batch * process_count})")
    transform = TrainTransform(tokenizer, image_size, org_caption_prob, caption_mix, re_caption_max_tokens,
                               org_caption_max_tokens, tuple(crop_scale), seed)
    stream = records.shuffle(seed=seed).repeat(None)  # a new permutation every epoch
    examples = stream.map_with_index(transform)  # index = global position in the stream
    mine = examples[process_index::process_count]
    return mine.batch(per_host_batch, drop_remainder=True)


def output_records(folder: str, split: str, image_paths: str = "", image_format: str = "") -> Any:
    """A caption output folder as a random-access source of records with images; a captions-only
    folder is joined with the caption job's input images (recap_jax.release.image_join)."""
    from recap_jax.release.image_join import JoinedRecords, has_images

    source = open_tfds_folder(folder, split, field="data.folders")
    if has_images(source):
        return source
    return JoinedRecords(source, folder, image_paths, image_format)


class CheckpointableIterator:
    """Prefetching iterator over a MapDataset of batches; state = {"next_index": batches consumed}."""

    def __init__(self, batches: grain.MapDataset, num_threads: int = 8, prefetch: int = 4,
                 num_workers: int = 0):
        self._batches = batches
        self._options = (num_threads, prefetch, num_workers)
        self._iterator = self._start()

    def _start(self):
        num_threads, prefetch, num_workers = self._options
        # Each thread prepares whole batches; the buffer must hold at least one per thread.
        ds = self._batches.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                             prefetch_buffer_size=max(prefetch, num_threads)))
        if num_workers > 0:  # separate processes for JPEG decoding on big hosts
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
        return iter(ds)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iterator)

    def get_state(self) -> dict[str, Any]:
        return self._iterator.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._iterator.set_state(state)


# ---------------------------------------------------------------------------------------------
# Evaluation data: images with one or more captions each
# ---------------------------------------------------------------------------------------------


def get_field(record: dict[str, Any], path: str) -> Any:
    """`captions/text` reads record["captions"]["text"] (nested TFDS features)."""
    value = record
    for part in path.split("/"):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(path)
        value = value[part]
    return value


def record_captions(record: dict[str, Any], caption_fields: Sequence[str]) -> list[str]:
    """All non-empty captions of a record from the named fields (each a text or a list of texts)."""
    out = []
    for field in caption_fields:
        value = get_field(record, field)
        values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
        out.extend(t for t in (as_text(v).strip() for v in values) if t)
    return out
