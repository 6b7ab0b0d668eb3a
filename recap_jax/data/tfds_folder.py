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


class EmptySource:
    """The data source of a split without records: TFDS's `as_data_source` refuses zero files."""

    def __len__(self) -> int:
        return 0

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        if indices:
            raise IndexError(f"{indices[0]} out of range: the split is empty")
        return []

    def __getitem__(self, index: int) -> dict[str, Any]:
        raise IndexError(f"{index} out of range: the split is empty")


def no_examples_error(folder: str, split: str, field: str) -> ConfigError:
    """The error of a reader that needs records and got a folder where every sample failed."""
    return ConfigError(f"{field}: no examples in {folder} (split {split!r} is empty; a caption output "
                       "where every sample failed lists them in its failures*.jsonl)")


def open_tfds_folder(folder: str, split: str | None = "train", *, field: str,
                     split_field: str | None = None, allow_empty: bool = False) -> Any:
    """A random-access source (len, [i], __getitems__) of decoded records (dicts) of one split.

    `field` names the config field that gave the folder, `split_field` the one that gave the
    split (default: `field`), for the error messages. An empty split (a caption output where
    every sample failed) is a ConfigError "no examples in FOLDER", or with `allow_empty` a
    source of length 0 (for readers that report on a dataset, whatever its size).
    """
    builder = tfds_builder(folder, field)
    name = _pick_split(builder, folder, split, split_field or field)
    if builder.info.splits[name].num_examples == 0:
        if allow_empty:
            return EmptySource()
        raise no_examples_error(folder, name, field)
    return builder.as_data_source(name)
