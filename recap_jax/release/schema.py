"""The released Recap-DataComp-1B Parquet schema (column names, types and order).

From the dataset card's `dataset_info.features` (huggingface.co/datasets/UCSC-VLAA/Recap-DataComp-1B):
texts are `string`, CLIP scores `float64`, lengths and GPT-4V ratings `int64`. Every column is
nullable: what a run did not compute (GPT-4V ratings always, CLIP scores until `analyze --clip`)
is written as null, never as a made-up 0.
"""

from __future__ import annotations

import json

import pyarrow as pa

RELEASED_FIELDS: tuple[tuple[str, pa.DataType], ...] = (
    ("url", pa.string()),
    ("re_caption", pa.string()),
    ("org_caption", pa.string()),
    ("sha256", pa.string()),
    ("key", pa.string()),
    ("re_clip_score", pa.float64()),
    ("org_clip_score", pa.float64()),
    ("re_length", pa.int64()),
    ("org_length", pa.int64()),
    ("re_gpt4v_score", pa.int64()),
    ("org_gpt4v_score", pa.int64()),
)
COLUMNS = tuple(name for name, _ in RELEASED_FIELDS)

# Columns this project never fills (the paper rated a subset with GPT-4V; we have no such rater).
NEVER_COMPUTED = ("re_gpt4v_score", "org_gpt4v_score")

_HF_DTYPES = {pa.string(): "string", pa.float64(): "float64", pa.int64(): "int64"}


def hf_features() -> dict[str, dict[str, str]]:
    """The `datasets` features dict of the released card, e.g. {"url": {"dtype": "string", "_type": "Value"}}."""
    return {name: {"dtype": _HF_DTYPES[t], "_type": "Value"} for name, t in RELEASED_FIELDS}


def arrow_schema() -> pa.Schema:
    """The released schema, with the `huggingface` metadata that `datasets` reads its features from."""
    metadata = {b"huggingface": json.dumps({"info": {"features": hf_features()}}).encode()}
    return pa.schema([pa.field(name, t, nullable=True) for name, t in RELEASED_FIELDS], metadata=metadata)


def word_length(text: str) -> int:
    """Words of a caption, split on whitespace (the unit of `re_length` / `org_length` here)."""
    return len(text.split())
