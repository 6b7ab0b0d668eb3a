"""Per-sample CLIP scores of both captions (cosine of image and caption embeddings).

The model is loaded by the retrieval evaluator's loader, so any CLIP the project evaluates can
score: a `recap_jax.train_clip` workdir or a Hugging Face CLIPModel folder (a long-text CLIP
too: captions are cut at the model's text length, which is the paper's point about CLIP-L).
Scores are raw cosines in [-1, 1], as DataComp's `clip_score`; the pairwise win rate compares the
two captions of one image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recap_jax.clip import evaluate, model_loading
from recap_jax.clip.data import resize_center_crop
from recap_jax.data.images import decode_image
from recap_jax.errors import ConfigError
from recap_jax.release.rows import Row

SCORES_SCHEMA = pa.schema([("key", pa.string()), ("re_clip_score", pa.float64()), ("org_clip_score", pa.float64())])


def _loader_config(checkpoint: str, tokenizer: str, text_length: int, batch_size: int) -> ml_collections.ConfigDict:
    """The fields of configs/clip_eval.py that the evaluator's model loader reads."""
    is_hf = os.path.isfile(os.path.join(checkpoint, "config.json")) and any(
        f.endswith(".safetensors") for f in os.listdir(checkpoint))
    return ml_collections.ConfigDict(dict(
        model=dict(checkpoint="" if is_hf else checkpoint, hf_dir=checkpoint if is_hf else "", dtype="float32"),
        tokenizer=tokenizer, text_length=text_length, batch_size=batch_size,
        mesh=dict(data=-1, fsdp=1, tensor=1)))


class ClipScorer:
    """Scores batches of rows (which must carry their image bytes)."""

    def __init__(self, checkpoint: str, *, tokenizer: str = "", text_length: int = 0, batch_size: int = 32):
        if not os.path.isdir(checkpoint):
            raise ConfigError(f"--clip: {checkpoint} is not a folder (a train_clip workdir or a HF CLIPModel folder)")
        try:  # the evaluator's loader and encoders, on the config's mesh
            self.encoders = model_loading.build_encoders(_loader_config(checkpoint, tokenizer, text_length, batch_size))
        except ValueError as e:
            raise ConfigError(f"--clip: {e}") from None
        self.tokenizer, self.text_length = self.encoders.tokenizer, self.encoders.text_length
        self.batch_size = batch_size

    def score(self, rows: Sequence[Row]) -> list[tuple[float, float] | None]:
        """(re score, org score) per row; None where the image cannot be decoded."""
        size, images, ok = self.encoders.image_size, [], []
        for row in rows:
            try:
                images.append(resize_center_crop(decode_image(row.image), size))
                ok.append(True)
            except Exception:  # noqa: BLE001 - a broken image is counted, not fatal
                ok.append(False)
        good = [r for r, keep in zip(rows, ok) if keep]
        if not good:
            return [None] * len(rows)
        image_emb = self._encode_images(np.stack(images))
        re_emb = evaluate.encode_texts(self.encoders, [r.re_caption for r in good])
        org_emb = evaluate.encode_texts(self.encoders, [r.org_caption for r in good])
        re_scores = np.sum(image_emb * re_emb, axis=-1)
        org_scores = np.sum(image_emb * org_emb, axis=-1)
        out, j = [], 0
        for keep in ok:
            if keep:
                out.append((float(re_scores[j]), float(org_scores[j])))
                j += 1
            else:
                out.append(None)
        return out


    def _encode_images(self, images: np.ndarray) -> np.ndarray:
        """Fixed-shape encoder calls: the last batch is padded by repeating its last image."""
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch_size - len(chunk), axis=0)])
            out.append(np.asarray(self.encoders.encode_images(padded))[:len(chunk)])
        return np.concatenate(out)


class ScoresWriter:
    """Writes `clip_scores.parquet` (key, re_clip_score, org_clip_score) in row order, for export."""

    def __init__(self, path: str, rows_per_group: int = 65_536):
        self._writer = pq.ParquetWriter(path, SCORES_SCHEMA, compression="zstd")
        self._rows: list[dict] = []
        self._group = rows_per_group

    def add(self, key: str, scores: tuple[float, float] | None) -> None:
        re, org = scores if scores is not None else (None, None)
        self._rows.append({"key": key, "re_clip_score": re, "org_clip_score": org})
        if len(self._rows) >= self._group:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=SCORES_SCHEMA))
            self._rows = []

    def close(self) -> None:
        self._flush()
        self._writer.close()
