"""Opening a TFDS dataset folder (ArrayRecord shards + dataset_info.json) for random access.

One opener for every reader of such folders: the caption job's `tfds` input format and the CLIP
trainer and evaluator (which read the caption job's output and evaluation sets).
"""

from __future__ import annotations

from typing import Any

from recap_jax.errors import ConfigError


def tfds_builder(folder: str, field: str):
    """The folder's TFDS builder; ConfigError naming `field` if it is not a TFDS dataset folder."""
    import tensorflow_datasets as tfds
    try:
        return tfds.builder_from_directory(folder)
    except Exception as e:  # noqa: BLE001 - re-raised with the config field named
        raise ConfigError(f"{field}: {folder} is not a TFDS dataset folder ({type(e).__name__}: {e})") from None


def resolve_split(folder: str, split: str | None, *, field: str, split_field: str | None = None) -> str:
    """`split`, checked against the folder's splits; None or "" picks "train" if present, else the first."""
    return _pick_split(tfds_builder(folder, field), folder, split, split_field or field)


def _pick_split(builder, folder: str, split: str | None, split_field: str) -> str:
    splits = list(builder.info.splits)
    if not split:
        return "train" if "train" in splits else splits[0]
    if split not in splits:
        raise ConfigError(f"{split_field}={split!r}: {folder} has no such split; it has {splits}")
    return split


def open_tfds_folder(folder: str, split: str | None = "train", *, field: str,
                     split_field: str | None = None) -> Any:
    """A random-access source (len, [i], __getitems__) of decoded records (dicts) of one split.

    `field` names the config field that gave the folder, `split_field` the one that gave the
    split (default: `field`), for the error messages.
    """
    builder = tfds_builder(folder, field)
    return builder.as_data_source(_pick_split(builder, folder, split, split_field or field))
