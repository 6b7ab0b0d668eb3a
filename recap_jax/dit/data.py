"""The DiT's input pipeline: grain over an encode_latents output (TFDS ArrayRecord + latents.json).

    records -> shuffle(seed) -> repeat (reshuffled every epoch)
      -> map_with_index(pick caption at p [clip/data.choose_caption], drop it to "" at
         cond_drop_prob, tokenize) -> this host's elements -> batch

as the CLIP trainer's pipeline: every random choice is a pure function of (seed, global element
index), so the position in the stream is one number that a checkpoint records, the same on every
host, and a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import grain
import numpy as np

from recap_jax.clip.data import SOURCE_ORG_CAPTION, Tokenizer, as_text, choose_caption
from recap_jax.data.tfds_folder import open_tfds_folder
from recap_jax.errors import ConfigError

LATENTS_JSON = "latents.json"  # written by encode_latents beside its dataset (dit/latents.py)


def read_latents_info(data_dir: str, field: str = "data.dir") -> dict[str, Any]:
    """latents.json of an encode_latents output: codec, image_size, latent_shape, scale_factor, ..."""
    path = os.path.join(data_dir, LATENTS_JSON)
    if not os.path.isfile(path):
        raise ConfigError(f"{field}: {data_dir} has no {LATENTS_JSON} (not an encode_latents output?)")
    with open(path) as f:
        info = json.load(f)
    missing = sorted({"codec", "image_size", "latent_shape"} - set(info))
    if missing:
        raise ConfigError(f"{field}: {path} lacks {missing}")
    info["latent_shape"] = tuple(int(s) for s in info["latent_shape"])
    return info


@dataclasses.dataclass
class LatentTransform:
    """(global index, record) -> one training example; randomness from (seed, index)."""
    tokenizer: Tokenizer
    max_tokens: int
    org_caption_prob: float
    cond_drop_prob: float
    seed: int

    def __call__(self, index: int, record: dict[str, Any]) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, index])
        text, source = choose_caption(as_text(record["org_caption"]), as_text(record["re_caption"]),
                                      org_caption_prob=self.org_caption_prob, caption_mix="sample",
                                      draw=rng.random())
        dropped = rng.random() < self.cond_drop_prob  # classifier-free guidance: the empty text
        return {"latent": np.asarray(record["latent"], np.float32),
                "tokens": self.tokenizer(["" if dropped else text], self.max_tokens)[0],
                "org_caption": np.float32(source == SOURCE_ORG_CAPTION and not dropped),
                "dropped": np.float32(dropped)}


def train_dataset(data_dir: str, tokenizer: Tokenizer, *, max_tokens: int, per_host_batch: int, seed: int,
                  org_caption_prob: float, cond_drop_prob: float, process_index: int = 0,
                  process_count: int = 1) -> grain.MapDataset:
    """An infinite MapDataset of batches for this host: element b is this host's share of step b."""
    if not 0.0 <= org_caption_prob <= 1.0:
        raise ConfigError(f"data.org_caption_prob: {org_caption_prob} is not in [0, 1] (it is the "
                          "probability of the ORIGINAL caption, the paper's p)")
    if not 0.0 <= cond_drop_prob < 1.0:
        raise ConfigError(f"train.cond_drop_prob: {cond_drop_prob} is not in [0, 1)")
    records = grain.MapDataset.source(open_tfds_folder(data_dir, "train", field="data.dir"))
    if len(records) < per_host_batch * process_count:
        raise ConfigError(f"data.dir: {len(records)} records are fewer than one global batch "
                          f"({per_host_batch * process_count})")
    transform = LatentTransform(tokenizer, max_tokens, org_caption_prob, cond_drop_prob, seed)
    examples = records.shuffle(seed=seed).repeat(None).map_with_index(transform)
    return examples[process_index::process_count].batch(per_host_batch, drop_remainder=True)
