"""sample_dit: a prompts file -> one PNG per prompt line + a TFDS dataset of them, in `sample.out`.

    sample.out/00001.png ...                    the image of prompt line 1, ...
    sample.out/recap-train.array_record-*       TFDS ArrayRecord: key (line number), prompt, image (PNG)
    sample.out/.units/, run_config.json, ...     the caption job's writer (data/writer.py)

Prompts are cut into units of `sample.prompts_per_unit` lines; each host takes its share of the
units and skips those already done, so a killed run, started again, redoes only unfinished units
and every image is the one it would have been (seeded by line number, see dit/sample.py).
Empty lines are skipped (line numbers stay those of the file).
"""

from __future__ import annotations

import hashlib
import io
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from recap_jax.data.writer import OutputDataset
from recap_jax.dit.sample import Generator
from recap_jax.errors import ConfigError

SAMPLE_FEATURES = tfds.features.FeaturesDict({
    "key": tfds.features.Text(),  # the prompt's line number, 5 digits (= the PNG's name)
    "prompt": tfds.features.Text(),
    "image": tfds.features.Tensor(shape=(), dtype=np.object_),  # PNG bytes
})


def read_prompts(path: str) -> list[tuple[str, str]]:
    """(key, prompt) per non-empty line; key = the 1-based line number, 5 digits."""
    if not path or not os.path.isfile(path):
        raise ConfigError(f"sample.prompts: {path!r} is not a file (a text file, one prompt a line)")
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    prompts = [(f"{n:05d}", line.strip()) for n, line in enumerate(lines, start=1) if line.strip()]
    if not prompts:
        raise ConfigError(f"sample.prompts: {path} has no prompt (one a line)")
    return prompts


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def _write_atomic(path: epath.Path, data: bytes) -> None:
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_bytes(data)
    tmp.replace(path)


def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Generates this host's share of the prompts; returns a summary."""
    s = config.sample
    if not s.out:
        raise ConfigError("sample.out: required (a folder for the PNGs and the dataset)")
    if s.prompts_per_unit < 1:
        raise ConfigError(f"sample.prompts_per_unit: {s.prompts_per_unit} must be >= 1")
    prompts = read_prompts(s.prompts)
    generator = Generator(config)
    units = [prompts[i:i + s.prompts_per_unit] for i in range(0, len(prompts), s.prompts_per_unit)]
    digest = hashlib.sha256("\n".join(f"{k}\t{p}" for k, p in prompts).encode()).hexdigest()
    fingerprint = {"prompts_sha256": digest, "workdir": os.path.abspath(config.workdir), "step": generator.step,
                   "sample": {k: v for k, v in s.to_dict().items() if k not in ("out", "prompts", "batch_size")}}
    output = OutputDataset(s.out, len(units), features=SAMPLE_FEATURES, fingerprint=fingerprint)
    mine = [i for i in range(len(units)) if i % jax.process_count() == jax.process_index()]
    todo = [i for i in mine if not output.is_done(i)]
    print(f"[sample_dit] {len(prompts)} prompts in {len(units)} units; this host: {len(mine)}, "
          f"{len(mine) - len(todo)} already done; step {generator.step} of {config.workdir}", flush=True)
    for index in todo:
        output.clean_unit(index)
        keys, texts = zip(*units[index])
        images = generator(list(texts), list(keys))
        records = []
        for key, text, image in zip(keys, texts, images):
            data = png_bytes(image)
            _write_atomic(output.dir / f"{key}.png", data)
            records.append({"key": key, "prompt": text, "image": data})
        output.write_unit(index, records, [])  # the unit's done marker comes last
        print(f"[sample_dit] unit {index + 1} of {len(units)}: {len(records)} images", flush=True)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("sample_dit units done")
    finished = jax.process_index() == 0 and output.finalize({"images": len(prompts)})
    return {"prompts": len(prompts), "generated": sum(len(units[i]) for i in todo), "out": s.out,
            "dataset_complete": bool(finished), "step": generator.step}
