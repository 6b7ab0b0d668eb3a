"""Named tensors of safetensors checkpoints, read one at a time (never pickle).

Checkpoint layouts spell the same tensor differently (`model.language_model.layers.0...` in
transformers 5, `language_model.model.layers.0...` in 4.x, `model.layers.0...` in the original
LLaVA repo). A layout is a list of (checkpoint prefix, canonical prefix) renames; the converter
only sees canonical names such as `text:layers.0.self_attn.q_proj.weight`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np
from etils import epath
from safetensors import safe_open

from recap_jax.errors import ConversionError

Renames = Sequence[tuple[str, str]]


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    file: str
    name: str  # as stored in the checkpoint
    shape: tuple[int, ...]
    dtype: str


def safetensors_files(folder: epath.PathLike) -> list[epath.Path]:
    folder = epath.Path(folder)
    if not folder.is_dir():
        raise ConversionError(f"{folder}: not a checkpoint folder")
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickled = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
        hint = (f" It has {pickled[:3]}: pickle files are never loaded; re-save the model with "
                "save_pretrained(..., safe_serialization=True).") if pickled else ""
        raise ConversionError(f"{folder}: no *.safetensors files.{hint}")
    return files


class CheckpointTensors:
    """Canonical name -> tensor, over the safetensors files of one or more folders."""

    def __init__(self):
        self._infos: dict[str, TensorInfo] = {}
        self._unmatched: list[str] = []

    def add_folder(self, folder: epath.PathLike, renames: Renames) -> CheckpointTensors:
        """Index a folder's tensors under canonical names (longest matching prefix wins)."""
        return self.add_files(safetensors_files(folder), renames)

    def add_files(self, files: Iterable[epath.PathLike], renames: Renames) -> CheckpointTensors:
        """Index the tensors of the given safetensors files (a weights file the user names)."""
        renames = sorted(renames, key=lambda r: -len(r[0]))
        for path in map(epath.Path, files):
            try:
                handle = safe_open(str(path), framework="numpy")
            except Exception as e:  # noqa: BLE001 - safetensors says "incomplete metadata", not which file
                raise ConversionError(f"{path}: not a readable safetensors file ({e}); "
                                      "is it truncated? download it again") from None
            with handle as f:
                for name in f.keys():
                    canonical = next((new + name[len(old):] for old, new in renames if name.startswith(old)),
                                     None)
                    if canonical is None:
                        self._unmatched.append(f"{name} ({path.name})")
                        continue
                    if canonical in self._infos:
                        raise ConversionError(f"tensor {name} ({path.name}) duplicates "
                                              f"{self._infos[canonical].name} ({self._infos[canonical].file})")
                    sl = f.get_slice(name)
                    self._infos[canonical] = TensorInfo(str(path), name, tuple(sl.get_shape()), sl.get_dtype())
        return self

    @property
    def unmatched(self) -> list[str]:
        """Stored names that no rename covers."""
        return list(self._unmatched)

    def names(self) -> Iterable[str]:
        return self._infos.keys()

    def info(self, canonical: str) -> TensorInfo | None:
        return self._infos.get(canonical)

    def read(self, canonical: str) -> np.ndarray:
        info = self._infos[canonical]
        # Open the file for each read: an open safetensors handle keeps the file memory-mapped, and
        # every page read stays in this process's RSS until it closes (a whole checkpoint's worth
        # when handles are kept). get_tensor returns a copy, so closing at once is safe.
        with safe_open(info.file, framework="numpy") as handle:
            return handle.get_tensor(info.name)

    def total_bytes(self) -> int:
        return sum(epath.Path(f).stat().length for f in {i.file for i in self._infos.values()})
