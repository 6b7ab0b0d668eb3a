"""Fixtures for the fine-tuning tests: a tiny converted checkpoint and small LLaVA-format data."""

from __future__ import annotations

import json
import pathlib

import numpy as np
from PIL import Image, ImageDraw

from recap_jax import convert
from tiny_llava import save_tiny_llava

# Eight images, each with its own target caption (words of the tiny tokenizer's vocabulary).
CAPTIONS = ["a red circle on the left .", "a blue square in the center .",
            "a green triangle at the top .", "a yellow star on the right .",
            "a black dog on the grass .", "a white cat near the window .",
            "an orange bird in the sky .", "a purple car on the road ."]
COLOURS = [(220, 30, 30), (30, 30, 220), (30, 200, 30), (230, 220, 20), (10, 10, 10),
           (250, 250, 250), (250, 140, 0), (140, 30, 160)]
PROMPT = "describe the image ."


def tiny_checkpoint(root: pathlib.Path, **overrides) -> tuple[pathlib.Path, pathlib.Path]:
    """(llava-hf folder, converted checkpoint) of a tiny random LLaVA-LLaMA-3."""
    hf_dir = save_tiny_llava(root / "hf", **overrides)
    assert convert.main(["--hf_dir", str(hf_dir), "--out", str(root / "ckpt"), "--dtype", "float32"]) == 0
    return hf_dir, root / "ckpt"


def write_images(folder: pathlib.Path, n: int = 8) -> list[str]:
    """n distinct pictures (colour, shape, position, size) as PNG files; their file names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        image = Image.new("RGB", (36 + 4 * i, 30 + 3 * (i % 3)), COLOURS[(i + 3) % 8])
        draw = ImageDraw.Draw(image)
        box = (3 + 2 * i, 2 + i, 20 + 2 * i, 22 + i)
        (draw.ellipse if i % 2 else draw.rectangle)(box, fill=COLOURS[i])
        names.append(f"img{i}.png")
        image.save(folder / names[-1])
    return names


def write_llava_json(path: pathlib.Path, images: list[str], captions: list[str],
                     prompt: str = PROMPT) -> pathlib.Path:
    entries = [{"id": f"ex{i}", "image": image,
                "conversations": [{"from": "human", "value": f"<image>\n{prompt}"},
                                  {"from": "gpt", "value": caption}]}
               for i, (image, caption) in enumerate(zip(images, captions))]
    path.write_text(json.dumps(entries))
    return path


def random_captions(n: int, seed: int = 0) -> list[str]:
    from recap_jax.captioning.tiny_demo import WORDS
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS[:60], size=int(rng.integers(3, 9)))) for _ in range(n)]
