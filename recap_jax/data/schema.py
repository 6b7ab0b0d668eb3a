"""The record schema of a recaptioned dataset (the captioner's output, the CLIP trainer's input).

Field names follow the released Recap-DataComp-1B parquet (`url`, `org_caption`, `re_caption`).
"""

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
})
