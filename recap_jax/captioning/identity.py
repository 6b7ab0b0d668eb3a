"""The caption run's identity: everything that changes a caption, recorded in the output folder.

A rerun on the same `output.dir` continues it only if the identity is the same; otherwise it is
refused, naming each differing field (see data/identity.py). Fields:
- model.weights: the checkpoint's content fingerprint (conversion/fingerprint.py);
- model.tokenizer: the tokenizer files' fingerprint; model.template, model.dtype;
- prompt; input.max_pixels (which images are refused); the image settings come with the weights;
- every decode.* field but those that only schedule work (batch sizes, buckets, cache tile, sync steps)
  or pick how the same attention is computed (decode.attention), so a sampling setting added later
  is part of the identity by default;
- input.format, input.paths (absolute) and the plan of work units.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ml_collections
from etils import epath

from recap_jax.conversion import fingerprint
from recap_jax.data import identity as identity_lib
from recap_jax.data import inputs
from recap_jax.data.inputs.paths import split_paths

# Decode fields that change how work is scheduled but not which tokens come out; decode.attention
# picks the kernel or XLA for the same attention ("auto" differs by platform; the tokens are equal in
# tests/test_ragged_decode.py), so a run resumed on another platform keeps its identity.
SCHEDULING_FIELDS = ("batch_size", "prefill_batch", "prompt_buckets", "cache_tile", "steps_per_sync", "attention")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json")


def absolute_paths(paths: str) -> str:
    """input.paths with every local entry made absolute: a folder named relatively and absolutely
    is the same input."""
    return ",".join(identity_lib.absolute(p) for p in split_paths(paths))


def model_identity(config: ml_collections.ConfigDict) -> dict[str, Any]:
    m = config.model
    if m.checkpoint:
        weights = fingerprint.checkpoint_fingerprint(m.checkpoint)
        tokenizer_dir = m.tokenizer or m.hf_dir or str(epath.Path(m.checkpoint) / "tokenizer")
    else:
        weights = fingerprint.hf_dir_fingerprint(m.hf_dir)
        tokenizer_dir = m.tokenizer or m.hf_dir
    return {"model.weights": weights,
            "model.tokenizer": fingerprint.folder_fingerprint(tokenizer_dir, TOKENIZER_FILES),
            "model.template": m.template, "model.dtype": m.dtype}


def run_identity(config: ml_collections.ConfigDict, units: Sequence[inputs.WorkUnit]) -> dict[str, Any]:
    """The identity recorded in, and checked against, output.dir/run_config.json."""
    decode = {f"decode.{k}": v for k, v in config.decode.to_dict().items() if k not in SCHEDULING_FIELDS}
    return {**model_identity(config), "prompt": config.prompt, "input.max_pixels": config.input.max_pixels,
            **decode, "input.format": config.input.format, "input.paths": absolute_paths(config.input.paths),
            "units": inputs.units_fingerprint(units),
            # Recorded only when false, so outputs written before the field existed still resume.
            **({} if config.output.store_images else {"output.store_images": False})}
