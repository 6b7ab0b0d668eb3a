"""Short content fingerprints of model weights, cheap to read at start-up.

A converted checkpoint records `params_digest` (a hash of every param's path, dtype, shape and
bytes, taken while the converter writes them) in its recap_config.json, so its fingerprint is a
hash of that small file. Checkpoints converted before that, and llava-hf folders, are
fingerprinted from their files' names, sizes and a few sampled bytes (safetensors headers name
every tensor with its offsets): a changed tensor of unchanged size in an old checkpoint may pass
unseen, a changed config, tokenizer or shape may not.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from etils import epath

DIGEST_KEY = "params_digest"
_SAMPLE_BYTES = 64 * 1024
# Orbax files that hold timestamps, not content: left out so a re-conversion fingerprints alike.
_VOLATILE = ("_CHECKPOINT_METADATA", "commit_success.txt")


class ParamsDigest:
    """Hashes (path, array) pairs as they stream past, independent of their order."""

    def __init__(self):
        self._leaves: dict[str, str] = {}

    def watch(self, leaves: Iterable[tuple[tuple[str, ...], Any]]) -> Iterator[tuple[tuple[str, ...], Any]]:
        for path, value in leaves:
            array = np.asarray(value)
            h = hashlib.sha256(f"{'/'.join(path)}|{array.dtype}|{array.shape}|".encode())
            h.update(np.ascontiguousarray(array).view(np.uint8).reshape(-1).data)
            self._leaves["/".join(path)] = h.hexdigest()
            yield path, value

    def hexdigest(self) -> str:
        return hashlib.sha256(json.dumps(sorted(self._leaves.items())).encode()).hexdigest()[:32]


def _files(folder: epath.Path) -> list[epath.Path]:
    out = []
    for child in sorted(folder.iterdir(), key=str):
        if child.is_dir():
            out += _files(child)
        elif not child.name.startswith(".") and child.name not in _VOLATILE:
            out.append(child)
    return out


def _sampled(path: epath.Path, size: int) -> bytes:
    """The first and last _SAMPLE_BYTES of a file (all of it when small)."""
    with path.open("rb") as f:
        if size <= 2 * _SAMPLE_BYTES:
            return f.read()
        head = f.read(_SAMPLE_BYTES)
        f.seek(size - _SAMPLE_BYTES)
        return head + f.read()


def folder_fingerprint(folder: epath.PathLike, names: tuple[str, ...] | None = None) -> str:
    """Hash of the folder's files (names, sizes, sampled bytes); `names` limits it to files
    whose name ends with one of them."""
    folder = epath.Path(folder)
    h = hashlib.sha256()
    for f in _files(folder):
        if names is not None and not f.name.endswith(names):
            continue
        size = f.stat().length
        h.update(f"{f.relative_to(folder)}|{size}|".encode())
        h.update(_sampled(f, size))
    return h.hexdigest()[:32]


def checkpoint_fingerprint(checkpoint: epath.PathLike, config_file: str = "recap_config.json") -> str:
    """The converted checkpoint's weights fingerprint (see the module docstring)."""
    checkpoint = epath.Path(checkpoint)
    raw = (checkpoint / config_file).read_bytes()
    if DIGEST_KEY in json.loads(raw):
        return hashlib.sha256(raw).hexdigest()[:32]
    return hashlib.sha256(raw + folder_fingerprint(checkpoint / "params").encode()).hexdigest()[:32]


def hf_dir_fingerprint(hf_dir: epath.PathLike) -> str:
    """A llava-hf folder's weights and configs (not its tokenizer, fingerprinted apart)."""
    return folder_fingerprint(hf_dir, (".safetensors", "config.json", ".jinja", "chat_template.json"))
