"""Zero-shot retrieval (image<->text recall@k) and zero-shot classification.

Recall definitions follow CLIP_benchmark (`zeroshot_retrieval.py`), also used by big_vision:
- text->image: every caption queries all images; a hit at k if ITS image is among the k images
  with the highest similarity. R@k = hits / number of captions.
- image->text: every image queries all captions; a hit at k if ANY of its captions is among the
  k captions with the highest similarity. R@k = hits / number of images.
Ties are broken towards the lower index (stable sort); real embeddings practically never tie.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import grain
import jax
import numpy as np

from recap_jax.clip import data as data_lib, train_step

DEFAULT_KS = (1, 5, 10)


# ---------------------------------------------------------------------------------------------
# Metrics on embeddings (pure numpy)
# ---------------------------------------------------------------------------------------------


def _top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """[queries, candidates] -> [queries, k] indices of the k best candidates (stable order)."""
    k = min(k, scores.shape[1])
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def retrieval_recalls(image_emb: np.ndarray, text_emb: np.ndarray, text_to_image: np.ndarray,
                      ks: Sequence[int] = DEFAULT_KS, chunk: int = 1024) -> dict[str, float]:
    """Recall@k both ways.

    image_emb: [num_images, D]; text_emb: [num_texts, D] (L2-normalised, so dot = cosine);
    text_to_image: int [num_texts], the image each caption belongs to.
    Returns {"image_to_text/R@1": ..., "text_to_image/R@1": ..., ...} as fractions in [0, 1].
    """
    image_emb, text_emb = np.asarray(image_emb, np.float32), np.asarray(text_emb, np.float32)
    text_to_image = np.asarray(text_to_image)
    num_images, num_texts = len(image_emb), len(text_emb)
    if text_to_image.shape != (num_texts,) or text_to_image.min() < 0 or text_to_image.max() >= num_images:
        raise ValueError("text_to_image must give, for every text, the index of an image")
    ks = sorted(set(int(k) for k in ks))
    max_k = max(ks)
    t2i_hits = {k: 0 for k in ks}
    for start in range(0, num_texts, chunk):  # text -> image
        scores = text_emb[start:start + chunk] @ image_emb.T
        top = _top_k_indices(scores, max_k)
        correct = top == text_to_image[start:start + chunk, None]
        for k in ks:
            t2i_hits[k] += int(correct[:, :k].any(axis=1).sum())
    i2t_hits = {k: 0 for k in ks}
    for start in range(0, num_images, chunk):  # image -> text
        scores = image_emb[start:start + chunk] @ text_emb.T
        top = _top_k_indices(scores, max_k)
        correct = text_to_image[top] == np.arange(start, start + len(scores))[:, None]
        for k in ks:
            i2t_hits[k] += int(correct[:, :k].any(axis=1).sum())
    out = {}
    for k in ks:
        out[f"image_to_text/R@{k}"] = i2t_hits[k] / num_images
        out[f"text_to_image/R@{k}"] = t2i_hits[k] / num_texts
    return out


def classification_accuracy(image_emb: np.ndarray, class_emb: np.ndarray, labels: np.ndarray,
                            ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy of zero-shot classification (image vs class-prompt embeddings)."""
    top = _top_k_indices(np.asarray(image_emb) @ np.asarray(class_emb).T, max(ks))
    return {f"top{k}": float((top[:, :k] == np.asarray(labels)[:, None]).any(axis=1).mean()) for k in ks}


# ---------------------------------------------------------------------------------------------
# Encoding a dataset with a model
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Encoders:
    """What evaluation needs from a model: batched, jitted, normalised encoders on fixed shapes.

    `encode_images(images [batch_size, S, S, 3]) -> [batch_size, D]` and
    `encode_tokens(tokens [batch_size, text_length]) -> [batch_size, D]`; inputs are padded to
    `batch_size` so every call has the same shape (no recompilation).
    """
    encode_images: Callable[[np.ndarray], np.ndarray]
    encode_tokens: Callable[[np.ndarray], np.ndarray]
    tokenizer: data_lib.Tokenizer
    image_size: int
    text_length: int
    batch_size: int


def _local_rows(batch: np.ndarray) -> np.ndarray:
    """This host's contiguous share of a global batch (every host reads the whole eval set)."""
    n = len(batch) // jax.process_count()
    return batch[jax.process_index() * n:(jax.process_index() + 1) * n]


def _pad_to(x: np.ndarray, size: int) -> np.ndarray:
    if len(x) == size:
        return x
    return np.concatenate([x, np.repeat(x[-1:], size - len(x), axis=0)], axis=0)


def encode_texts(encoders: Encoders, texts: Sequence[str]) -> np.ndarray:
    out = []
    for start in range(0, len(texts), encoders.batch_size):
        chunk = texts[start:start + encoders.batch_size]
        tokens = encoders.tokenizer(chunk, encoders.text_length)
        out.append(np.asarray(encoders.encode_tokens(_pad_to(tokens, encoders.batch_size)))[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def encode_image_dataset(encoders: Encoders, source, *, image_field: str = "image",
                         keep: Callable[[dict], Any] = lambda r: None, max_images: int = 0,
                         num_threads: int = 8) -> tuple[np.ndarray, list[Any]]:
    """Embeds every image of a random-access source in order; also returns keep(record) per image."""
    size = encoders.image_size

    def prepare(record):
        try:
            image = data_lib.get_field(record, image_field)
        except KeyError:
            raise ValueError(f"image_field: records have no field {image_field!r}; they have "
                             f"{sorted(record)}") from None
        return {"image": data_lib.resize_center_crop(data_lib.decode_image(image), size), "keep": keep(record)}

    ds = grain.MapDataset.source(source)
    if max_images:
        ds = ds[:max_images]
    batches = ds.map(prepare).batch(encoders.batch_size, batch_fn=lambda xs: xs)
    it = iter(batches.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                        prefetch_buffer_size=num_threads)))
    embeddings, kept = [], []
    for examples in it:
        images = np.stack([e["image"] for e in examples])
        padded = _pad_to(images, encoders.batch_size)
        embeddings.append(np.asarray(encoders.encode_images(padded))[:len(examples)])
        kept.extend(e["keep"] for e in examples)
    return np.concatenate(embeddings), kept


def evaluate_retrieval(encoders: Encoders, folder: str, *, split: str = "test",
                       caption_fields: Sequence[str] = ("re_caption",), image_field: str = "image",
                       max_images: int = 0, ks: Sequence[int] = DEFAULT_KS,
                       field_prefix: str = "eval") -> dict[str, float]:
    """Recall@k on a TFDS/ArrayRecord image-caption folder (one record per image).

    Each record's captions are the non-empty texts of `caption_fields` (each field a text or a
    list of texts, e.g. COCO Karpathy's 5 captions as `captions/text`).
    """
    start = time.time()
    source = data_lib.open_tfds_folder(folder, split, field=f"{field_prefix}.folder")

    def captions_of(record):
        try:
            return data_lib.record_captions(record, caption_fields)
        except KeyError as e:
            raise ValueError(f"{field_prefix}.caption_fields: records have no field {e}; they have "
                             f"{sorted(record)}") from None

    image_emb, caption_lists = encode_image_dataset(encoders, source, image_field=image_field,
                                                    keep=captions_of, max_images=max_images)
    texts, text_to_image = [], []
    for image_index, caps in enumerate(caption_lists):
        texts.extend(caps)
        text_to_image.extend([image_index] * len(caps))
    if not texts:
        raise ValueError(f"{field_prefix}.caption_fields: no captions found in {folder}")
    text_emb = encode_texts(encoders, texts)
    metrics = retrieval_recalls(image_emb, text_emb, np.asarray(text_to_image), ks)
    metrics.update({"num_images": len(image_emb), "num_texts": len(texts), "seconds": time.time() - start})
    return metrics


def class_embeddings(encoders: Encoders, classnames: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """CLIP's prompt ensembling: mean of the normalised template embeddings, renormalised."""
    out = []
    for name in classnames:
        emb = encode_texts(encoders, [t.format(name) for t in templates]).mean(axis=0)
        out.append(emb / max(np.linalg.norm(emb), 1e-12))
    return np.stack(out)


def evaluate_zero_shot(encoders: Encoders, folder: str, *, split: str, label_field: str,
                       classnames: Sequence[str] | None, templates: Sequence[str],
                       image_field: str = "image", max_images: int = 0) -> dict[str, float]:
    """Zero-shot classification accuracy; class names default to the dataset's ClassLabel names."""
    source = data_lib.open_tfds_folder(folder, split, field="zeroshot.folder")
    if not classnames:
        import tensorflow_datasets as tfds
        feature = tfds.builder_from_directory(folder).info.features[label_field]
        classnames = [n.replace("_", " ") for n in feature.names]
    image_emb, labels = encode_image_dataset(
        encoders, source, image_field=image_field, max_images=max_images,
        keep=lambda r: int(data_lib.get_field(r, label_field)))
    metrics = classification_accuracy(image_emb, class_embeddings(encoders, classnames, templates),
                                      np.asarray(labels))
    metrics["num_images"] = len(labels)
    return metrics


def format_recalls(metrics: dict[str, float]) -> str:
    """One human-readable line: 'i->t R@1 45.2 R@5 ... | t->i R@1 ...' (percent)."""
    parts = []
    for direction, short in (("image_to_text", "i->t"), ("text_to_image", "t->i")):
        ks = sorted(int(k.split("@")[1]) for k in metrics if k.startswith(direction + "/R@"))
        parts.append(short + " " + " ".join(f"R@{k} {100 * metrics[f'{direction}/R@{k}']:.1f}" for k in ks))
    return " | ".join(parts)


def chance_recall(num_candidates: int, k: int, positives: int = 1) -> float:
    """Expected recall@k of random scores (for comparison in reports)."""
    if k >= num_candidates:
        return 1.0
    return 1.0 - math.comb(num_candidates - positives, k) / math.comb(num_candidates, k)


def make_encoders(model, mesh, params, tokenizer: data_lib.Tokenizer, *, text_length: int,
                  batch_size: int, param_shardings: Any = None) -> Encoders:
    """`Encoders` for a CLIP `model` with `params` on `mesh`.

    Every host reads the whole evaluation set; each contributes its contiguous share of every
    batch (`jax.make_array_from_process_local_data`), and the embeddings come back replicated.
    """
    batch_devices = math.prod(mesh.shape[a] for a in train_step.BATCH_AXES)
    if batch_size % batch_devices:
        raise ValueError(f"eval.batch_size: {batch_size} is not divisible by the {batch_devices} "
                         "devices of the mesh's batch axes")
    image_fn, text_fn = train_step.jit_tower_fns(model, mesh, param_shardings)
    sharding = train_step.batch_sharding(mesh)

    def to_global(x):
        return jax.make_array_from_process_local_data(sharding, _local_rows(x), x.shape)

    return Encoders(
        encode_images=lambda images: np.asarray(image_fn(params, to_global(images))),
        encode_tokens=lambda tokens: np.asarray(text_fn(params, to_global(tokens))),
        tokenizer=tokenizer, image_size=model.cfg.image_size, text_length=text_length,
        batch_size=batch_size)
