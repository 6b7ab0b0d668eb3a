"""Helpers for the caption command tests: image folders, running the command, reading the output."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parent.parent


def write_image_folder(folder: pathlib.Path, count: int, seed: int = 0, bad: bool = True) -> list[str]:
    """`count` random images of assorted sizes with .txt captions (+ one corrupt file); their keys."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    keys = []
    for i in range(count):
        w, h = int(rng.integers(16, 90)), int(rng.integers(16, 90))
        name = f"img_{i:03d}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            folder / f"{name}.{'png' if i % 3 == 0 else 'jpg'}")
        (folder / f"{name}.txt").write_text(f"original caption {i}")
        keys.append(name)
    if bad:
        (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    return keys


def caption_command(hf_dir, images, out, *extra: str) -> list[str]:
    return [sys.executable, "-m", "recap_jax.caption", f"--config={REPO / 'configs' / 'cpu_small.py'}",
            f"--config.model.hf_dir={hf_dir}", f"--config.input.paths={images}",
            f"--config.output.dir={out}", "--config.decode.max_new_tokens=12",
            "--config.decode.batch_size=4", "--config.decode.prefill_batch=2",
            "--config.decode.prompt_buckets=(64,)", "--config.input.files_per_unit=3",
            "--config.distributed.mode=off", *extra]


def env(devices: int = 1) -> dict[str, str]:
    e = dict(os.environ, JAX_PLATFORMS="cpu")
    if devices > 1:
        e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return e


def run_caption(cmd: list[str], devices: int = 1, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=env(devices), timeout=timeout, cwd=REPO)


def read_output(out: pathlib.Path) -> dict[str, dict]:
    """key -> record, asserting every key is there once."""
    import tensorflow_datasets as tfds
    source = tfds.builder_from_directory(str(out)).as_data_source("train")
    records = {}
    for i in range(len(source)):
        r = source[i]
        key = r["key"].decode() if isinstance(r["key"], bytes) else r["key"]
        assert key not in records, f"{key} twice"
        records[key] = r
    return records


def read_failures(out: pathlib.Path) -> list[dict]:
    lines = []
    for f in sorted(out.glob("failures*.jsonl")):
        lines += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return lines


def text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def chunked_tiny_checkpoint(folder: pathlib.Path, seed: int):
    """The tiny demo checkpoint written with several small storage chunks per leaf (reads in blocks)."""
    import pytest

    from recap_jax.captioning.tiny_demo import build_tiny_checkpoint
    from recap_jax.conversion import bundle

    patch = pytest.MonkeyPatch()
    patch.setattr(bundle, "STORAGE_CHUNK_BYTES", 3000)
    try:
        return build_tiny_checkpoint(str(folder / "tiny"), seed=seed)
    finally:
        patch.undo()


def image_prompt_requests(config, n: int, seed: int) -> list:
    """`n` sampler requests for a tiny captioner `config` (LlavaConfig): BOS, the image tokens and
    2-15 random text tokens, with random float32 pixels; tags 0..n-1."""
    from recap_jax.decoding.sampler import Request
    rng = np.random.default_rng(seed)
    side = config.vision.image_size
    out = []
    for i in range(n):
        text = rng.integers(2, 100, int(rng.integers(2, 16)))
        ids = np.concatenate([[1], np.full(config.num_image_tokens, config.image_token_id), text]).astype(np.int32)
        out.append(Request(ids, rng.random((side, side, 3), np.float32), tag=i))
    return out


def caption_in_process(config) -> int:
    """The caption command in this process on a config already held: its summary, closing line and
    exit status, inside the commands' error boundary (a user error is one line and status 2)."""
    from recap_jax import caption, cli  # the command module defines absl's --config flag
    return cli.guarded(lambda: caption.report(config))
