"""A CLIP workdir's identity: the model, tokenizer and data it trains on (data/identity.py).

Recorded in WORKDIR/run_identity.json by the first run; a later run on the same workdir with a
different model size, tokenizer or data is refused, naming the fields, before any checkpoint is
restored (instead of failing inside Orbax on mismatched shapes).
"""

from __future__ import annotations

from typing import Any

import ml_collections
from etils import epath

from recap_jax.conversion.fingerprint import folder_fingerprint, hf_dir_fingerprint
from recap_jax.data import identity as identity_lib

IDENTITY_FILE = "run_identity.json"
DATA_FIELDS = ("split", "re_caption_prob", "re_caption_max_tokens", "org_caption_max_tokens")
REMEDY = "use a new workdir, or the settings it was started with"
# Model fields that change how the model computes, not what its params are.
NOT_IDENTITY = ("model.dtype", "model.remat")


def _flat(prefix: str, node: Any) -> dict[str, Any]:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(_flat(f"{prefix}.{key}", value))
        return out
    return {prefix: node}


def workdir_identity(config: ml_collections.ConfigDict) -> dict[str, Any]:
    model = {k: v for k, v in _flat("model", config.model.to_dict()).items() if k not in NOT_IDENTITY}
    if config.model.hf_dir:
        model["model.hf_dir"] = hf_dir_fingerprint(config.model.hf_dir)
    folders = ",".join(identity_lib.absolute(f) for f in str(config.data.folders).split(",") if f.strip())
    return {**model, "data.tokenizer": folder_fingerprint(config.data.tokenizer), "data.folders": folders,
            **{f"data.{k}": config.data[k] for k in DATA_FIELDS}, "seed": config.seed}


def check_workdir(config: ml_collections.ConfigDict) -> None:
    """Record the identity in a new workdir; refuse a workdir of another run."""
    identity_lib.check_or_record(epath.Path(config.workdir) / IDENTITY_FILE, workdir_identity(config),
                                 folder_field="workdir", remedy=REMEDY)
