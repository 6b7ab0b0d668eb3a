"""A CLIP workdir's data identity: the contents of its tokenizer and start weights, and its data.

`trainer.check_same_run` compares the model fields and tokenizer path with the workdir's
config.json; this adds what a path does not show (a tokenizer or HF folder whose files changed)
and the data (folders, split, caption mixing, seed). The training loop records it in
WORKDIR/run_identity.json once the first run has started and compares it on every later one,
before any checkpoint is restored (data/identity.py).
"""

from __future__ import annotations

from typing import Any

import ml_collections

from recap_jax.conversion.fingerprint import folder_fingerprint, hf_dir_fingerprint
from recap_jax.data import identity as identity_lib

IDENTITY_FILE = "run_identity.json"
DATA_FIELDS = ("split", "org_caption_prob", "caption_mix", "re_caption_max_tokens", "org_caption_max_tokens")


def workdir_identity(config: ml_collections.ConfigDict) -> dict[str, Any]:
    model = {"model.hf_dir": hf_dir_fingerprint(config.model.hf_dir)} if config.model.hf_dir else {}
    folders = ",".join(identity_lib.absolute(f) for f in str(config.data.folders).split(",") if f.strip())
    return {**model, "data.tokenizer": folder_fingerprint(config.data.tokenizer), "data.folders": folders,
            **{f"data.{k}": config.data[k] for k in DATA_FIELDS}, "seed": config.seed}
