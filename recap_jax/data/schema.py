"""The record schema of a recaptioned dataset (the captioner's output, the CLIP trainer's input).

Field names follow the released Recap-DataComp-1B parquet (`url`, `org_caption`, `re_caption`,
`sha256`).
"""

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

DATASET_NAME = "recap"
SPLIT = "train"

# `image` holds the original encoded bytes (JPEG/PNG/WebP as downloaded), not decoded pixels.
RECORD_FEATURES = tfds.features.FeaturesDict({
    "key": tfds.features.Text(),
    "url": tfds.features.Text(),
    "org_caption": tfds.features.Text(),
    "re_caption": tfds.features.Text(),
    "image": tfds.features.Tensor(shape=(), dtype=np.object_),
    "width": tfds.features.Scalar(dtype=np.int32),
    "height": tfds.features.Scalar(dtype=np.int32),
    "org_caption_length": tfds.features.Scalar(dtype=np.int32),  # words
    "re_caption_length": tfds.features.Scalar(dtype=np.int32),  # generated tokens
    "sha256": tfds.features.Text(),  # hex digest of `image` (the released dataset's dedup key)
})

# `output.store_images=false`: the same records without the image bytes (their sha256 stays, so a
# reader joining the images back from the caption job's input can check each one).
CAPTIONS_ONLY_FEATURES = tfds.features.FeaturesDict(
    {name: feature for name, feature in RECORD_FEATURES.items() if name != "image"})


def record_features(store_images: bool) -> tfds.features.FeaturesDict:
    """The output schema: with the image bytes, or captions only (`output.store_images`)."""
    return RECORD_FEATURES if store_images else CAPTIONS_ONLY_FEATURES


def image_sha256(data: bytes) -> str:
    """Hex SHA-256 of the encoded image bytes, as in the released dataset's `sha256` column."""
    return hashlib.sha256(data).hexdigest()


def with_sha256(record: Mapping[str, Any]) -> Mapping[str, Any]:
    """`record`, with `sha256` computed from its image bytes when the builder did not set it."""
    if "sha256" in record:
        return record
    return {**record, "sha256": image_sha256(bytes(record["image"]))}
