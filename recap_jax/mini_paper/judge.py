"""The judge: a small Flax CNN that reads what a miniature-world image shows.

Trained on the world's true scenes (rendered by `mini_world.render`, JPEG-encoded and resized as
the DiT's data is), it predicts the main object's colour, shape and position, the background, and
the small objects' count, shape and colour (the small objects' shape and colour only count where
there are some). GenEval-mini (`geneval.py`) checks generated images' prompts with it, and its
penultimate features are the FID-analogue's feature space. Its per-attribute accuracy on real
held-out scenes is measured and reported beside every score.

    judge = train_judge(JudgeSettings(image_size=32), seed=0)
    predictions = judge.predict(images)        # uint8 [n, h, w, 3] -> attribute -> class index
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import time
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from PIL import Image
from safetensors.numpy import load_file, save_file

from recap_jax.clip import mini_world as world

# attribute -> its class names, in the order of the judge's heads.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "colour": tuple(world.COLOURS), "shape": world.SHAPES, "position": tuple(world.POSITIONS),
    "background": tuple(world.BACKGROUNDS), "small_count": ("0", "1", "2", "3"),
    "small_shape": world.SHAPES, "small_colour": tuple(world.COLOURS),
}
SMALL = ("small_shape", "small_colour")  # defined only where the scene has small objects


@dataclasses.dataclass(frozen=True)
class JudgeSettings:
    image_size: int = 32  # the DiT's image size: the judge reads images as generated
    render_size: int = 56  # the world's image size: scenes are rendered, JPEG'd, then resized
    num_scenes: int = 6000
    num_steps: int = 1500
    batch_size: int = 64
    learning_rate: float = 2e-3
    features: int = 128  # the penultimate (FID-analogue) feature width


def scene_labels(scenes: Sequence[world.Scene]) -> dict[str, np.ndarray]:
    """attribute -> int32 [n] class indices (small-object attributes -1 where there are none)."""
    out = {}
    for name, classes in ATTRIBUTES.items():
        values = [str(s.small_count) if name == "small_count" else getattr(s, name) for s in scenes]
        out[name] = np.array([classes.index(v) for v in values], np.int32)
    for name in SMALL:
        out[name] = np.where(out["small_count"] > 0, out[name], -1).astype(np.int32)
    return out


def to_size(image: Image.Image, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: DiT's resize and centre crop (`encode_latents`' own), so the judge
    reads real scenes exactly as the DiT's training data shows them."""
    from recap_jax.dit.images import center_crop
    return center_crop(image.convert("RGB"), size)


def render_scenes(scenes: Sequence[world.Scene], render_size: int, size: int) -> np.ndarray:
    """uint8 [n, size, size, 3]: each scene rendered, JPEG-encoded (quality 95, as the world's files)
    and resized, so the judge trains on what the DiT's data looks like."""
    out = np.empty((len(scenes), size, size, 3), np.uint8)
    for i, scene in enumerate(scenes):
        buffer = io.BytesIO()
        world.render(scene, render_size).save(buffer, format="JPEG", quality=95)
        out[i] = to_size(Image.open(buffer), size)
    return out


class JudgeNet(nn.Module):
    """Three strided conv stages, a flattened map (positions matter), one dense feature layer, heads."""
    features: int = 128

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        x = images.astype(jnp.float32) / 127.5 - 1.0
        for width in (16, 32, 64):
            x = nn.gelu(nn.Conv(width, (3, 3))(x))
            x = nn.gelu(nn.Conv(width, (3, 3), strides=(2, 2))(x))
        features = nn.gelu(nn.Dense(self.features)(x.reshape(x.shape[0], -1)))
        logits = {name: nn.Dense(len(classes), name=f"head_{name}")(features)
                  for name, classes in ATTRIBUTES.items()}
        return features, logits


def _loss(logits: dict[str, jax.Array], labels: dict[str, jax.Array]) -> jax.Array:
    total = 0.0
    for name, value in logits.items():
        mask = labels[name] >= 0
        ce = optax.softmax_cross_entropy_with_integer_labels(value, jnp.maximum(labels[name], 0))
        total = total + jnp.sum(ce * mask) / jnp.maximum(mask.sum(), 1)
    return total


@dataclasses.dataclass
class Judge:
    """A trained judge: `predict` (attribute -> class indices) and `features` (penultimate layer)."""
    params: dict
    settings: JudgeSettings

    def read(self, images: np.ndarray, batch: int = 256) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(penultimate features [n, features], attribute -> predicted class index [n]) of uint8
        images [n, h, w, 3] (resized to the judge's size if needed)."""
        model, size = JudgeNet(self.settings.features), self.settings.image_size
        if images.shape[1:] != (size, size, 3):
            images = np.stack([to_size(Image.fromarray(im), size) for im in images])
        apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
        feats, logits = [], {name: [] for name in ATTRIBUTES}
        for start in range(0, len(images), batch):
            f, out = apply(self.params, images[start:start + batch])
            feats.append(np.asarray(f))
            for name in ATTRIBUTES:
                logits[name].append(np.asarray(out[name]).argmax(-1))
        return np.concatenate(feats), {k: np.concatenate(v) for k, v in logits.items()}

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """attribute -> int [n] predicted class index, for uint8 images [n, h, w, 3]."""
        return self.read(images)[1]

    def features(self, images: np.ndarray) -> np.ndarray:
        """float [n, features]: the penultimate layer (the FID-analogue's feature space)."""
        return self.read(images)[0]

    def save(self, folder: str) -> None:
        """`folder/judge.safetensors` + `judge.json` (settings), written whole or not at all."""
        os.makedirs(folder, exist_ok=True)
        flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(self.params).items()}
        save_file(flat, os.path.join(folder, "judge.safetensors.tmp"))
        os.replace(os.path.join(folder, "judge.safetensors.tmp"), os.path.join(folder, "judge.safetensors"))
        with open(os.path.join(folder, "judge.json.tmp"), "w") as f:  # written last: the judge is complete
            json.dump(dataclasses.asdict(self.settings), f)
        os.replace(os.path.join(folder, "judge.json.tmp"), os.path.join(folder, "judge.json"))

    @classmethod
    def load(cls, folder: str) -> Judge:
        with open(os.path.join(folder, "judge.json")) as f:
            settings = JudgeSettings(**json.load(f))
        flat = load_file(os.path.join(folder, "judge.safetensors"))
        params = traverse_util.unflatten_dict({tuple(k.split("/")): jnp.asarray(v) for k, v in flat.items()})
        return cls(params, settings)


def training_scenes(num: int, seed: int) -> list[world.Scene]:
    """Scenes of every (colour, shape, background), held-out combinations included (the judge is a
    measuring tool, not a model under test; its held-out test scenes are other draws)."""
    half = num // 2
    return world.make_scenes(num - half, seed + 1000, "judge") + world.make_scenes(half, seed + 1000, "eval")


def train_judge(settings: JudgeSettings, seed: int, log=print) -> Judge:
    """Trains a judge with AdamW (cosine decay) on freshly rendered true scenes."""
    start = time.time()
    scenes = training_scenes(settings.num_scenes, seed)
    images = render_scenes(scenes, settings.render_size, settings.image_size)
    labels = scene_labels(scenes)
    log(f"[judge] rendered {len(scenes)} scenes ({time.time() - start:.0f} s)")
    model = JudgeNet(settings.features)
    params = model.init(jax.random.key(seed), images[:1])["params"]
    schedule = optax.warmup_cosine_decay_schedule(0.0, settings.learning_rate, settings.num_steps // 20,
                                                  settings.num_steps)
    optimizer = optax.adamw(schedule, weight_decay=1e-4)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(lambda p: _loss(model.apply({"params": p}, x)[1], y))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(seed)
    for i in range(settings.num_steps):
        idx = rng.integers(0, len(images), settings.batch_size)
        x = images[idx]
        # Small shifts of the whole image: generated images are not pixel-aligned with renders.
        dy, dx = rng.integers(-1, 2, size=2)
        x = np.roll(x, (dy, dx), axis=(1, 2))
        params, opt_state, loss = step(params, opt_state, x, {k: v[idx] for k, v in labels.items()})
        if (i + 1) % max(settings.num_steps // 5, 1) == 0:
            log(f"[judge] step {i + 1} of {settings.num_steps} loss {float(loss):.4f} ({time.time() - start:.0f} s)")
    return Judge(params, settings)


def accuracy(judge: Judge, images: np.ndarray, scenes: Sequence[world.Scene]) -> dict[str, float]:
    """attribute -> share of images read correctly (small-object attributes over scenes with some)."""
    predicted, labels = judge.predict(images), scene_labels(scenes)
    out = {}
    for name in ATTRIBUTES:
        mask = labels[name] >= 0
        out[name] = float((predicted[name] == labels[name])[mask].mean()) if mask.any() else float("nan")
    return out
