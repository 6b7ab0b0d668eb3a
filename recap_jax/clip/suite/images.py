"""Random-access image sources over plain files, in the record form `evaluate.encode_image_dataset`
reads (`{"image": encoded bytes}`); an optional crop box per image (VG-Attribution)."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


class ImageFiles(Sequence):
    """`paths[i]` as a record; read lazily, so a 50k-image set is not held in memory."""

    def __init__(self, paths: Sequence[str], boxes: Sequence[tuple[float, float, float, float]] | None = None):
        self.paths = list(paths)
        self.boxes = list(boxes) if boxes is not None else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, bytes]:
        with open(self.paths[index], "rb") as f:
            data = f.read()
        if self.boxes is not None:  # (left, top, width, height) in pixels
            x, y, w, h = self.boxes[index]
            image = Image.open(io.BytesIO(data)).convert("RGB").crop((x, y, x + w, y + h))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            data = buffer.getvalue()
        return {"image": data}


def missing_files(paths: Sequence[str], limit: int = 3) -> list[str]:
    """Up to `limit` of `paths` that do not exist (checked before a long encoding run)."""
    out = []
    for p in paths:
        if not os.path.exists(p):
            out.append(p)
            if len(out) >= limit:
                break
    return out
