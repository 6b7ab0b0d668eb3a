"""The miniature world written as the inputs the real commands read.

- `web/`: img2dataset-style webdataset tars (KEY.jpg, KEY.txt = noisy alt-text, KEY.json with the
  scene's truth) for `recap_jax.caption`;
- `hq/`: the same layout with the full description as KEY.txt (the HQ-Edit analogue) for
  `recap_jax.finetune` (`data.format="webdataset"`);
- `eval/`: webdataset tars of the held-out scenes (captioned to check the captioner) and TFDS
  folders for retrieval (`true`: full descriptions, `alt`: alt-text-style queries) and zero-shot
  classification (`classes`: the dominant object's colour x shape);
- `clip_tokenizer/`: a word-level CLIP tokenizer over the world's vocabulary.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from recap_jax.clip import mini_world as world
from recap_jax.clip.synthetic import write_tfds_folder, write_word_tokenizer

DONE = "world_done.json"


def _jpeg(scene: world.Scene, size: int) -> bytes:
    buffer = io.BytesIO()
    world.render(scene, size).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_tars(folder: str, prefix: str, scenes: Sequence[world.Scene], texts: Sequence[str],
               extras: Sequence[dict], size: int, per_shard: int) -> list[str]:
    """Webdataset shards `folder/{prefix}-00000.tar`...; returns their paths."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for shard, start in enumerate(range(0, len(scenes), per_shard)):
        path = os.path.join(folder, f"{prefix}-{shard:05d}.tar")
        with tarfile.open(path + ".tmp", "w") as tar:
            for i in range(start, min(start + per_shard, len(scenes))):
                key = f"{prefix}{i:07d}"
                meta = {"key": key, "url": f"mini://{prefix}/{i}", "caption": texts[i],
                        "description": scenes[i].description(), "label": scenes[i].label, **extras[i]}
                _add(tar, f"{key}.jpg", _jpeg(scenes[i], size))
                _add(tar, f"{key}.txt", texts[i].encode())
                _add(tar, f"{key}.json", json.dumps(meta).encode())
        os.replace(path + ".tmp", path)
        paths.append(path)
    return paths


def write_world(root: str, *, num_web: int, num_hq: int, num_eval: int, image_size: int, seed: int,
                per_shard: int, rates: world.AltTextRates) -> dict[str, str]:
    """Writes every input under `root` (skipped if already complete); returns the paths."""
    root_path = epath.Path(root)
    paths = {name: str(root_path / name) for name in ("web", "hq", "eval", "clip_tokenizer")}
    paths.update(eval_true=str(root_path / "eval" / "true"), eval_alt=str(root_path / "eval" / "alt"),
                 eval_classes=str(root_path / "eval" / "classes"))
    wanted = dict(num_web=num_web, num_hq=num_hq, num_eval=num_eval, image_size=image_size, seed=seed,
                  per_shard=per_shard, rates=vars(rates))
    done = root_path / DONE
    if done.exists() and json.loads(done.read_text()) == wanted:
        print(f"[reproduce] world: complete at {root}", flush=True)
        return paths
    rng = np.random.default_rng([seed, 1])
    web = world.make_scenes(num_web, seed, "web")
    alts = [world.alt_text(s, rng, rates) for s in web]
    write_tars(paths["web"], "web", web, [a for a, _ in alts], [{"alt": m} for _, m in alts], image_size, per_shard)
    hq = world.make_scenes(num_hq, seed, "hq")
    write_tars(paths["hq"], "hq", hq, [s.description() for s in hq], [{}] * len(hq), image_size, per_shard)
    held = world.make_scenes(num_eval, seed, "eval")
    queries = [f"{s.colour} {s.shape} on {s.background}" for s in held]  # clean alt-text-style queries
    write_tars(paths["eval"], "eval", held, queries, [{}] * len(held), image_size, per_shard)
    images = [_jpeg(s, image_size) for s in held]
    text_features = tfds.features.FeaturesDict({"image": tfds.features.Tensor(shape=(), dtype=np.object_),
                                                "captions": tfds.features.Sequence(tfds.features.Text())})
    write_tfds_folder(paths["eval_true"], ({"image": im, "captions": [s.description()]}
                                           for im, s in zip(images, held)),
                      features=text_features, split="test", dataset_name="mini_true")
    write_tfds_folder(paths["eval_alt"], ({"image": im, "captions": [q]} for im, q in zip(images, queries)),
                      features=text_features, split="test", dataset_name="mini_alt")
    classes = class_names()
    class_features = tfds.features.FeaturesDict({"image": tfds.features.Tensor(shape=(), dtype=np.object_),
                                                 "label": tfds.features.ClassLabel(names=classes)})
    write_tfds_folder(paths["eval_classes"], ({"image": im, "label": classes.index(s.label)}
                                              for im, s in zip(images, held)),
                      features=class_features, split="test", dataset_name="mini_classes")
    write_word_tokenizer(paths["clip_tokenizer"], world.vocabulary())
    done.write_text(json.dumps(wanted))
    print(f"[reproduce] world: {num_web} web, {num_hq} HQ, {num_eval} held-out scenes at {root}", flush=True)
    return paths


def class_names() -> list[str]:
    return [f"{c} {s}" for c in world.COLOURS for s in world.SHAPES]


def read_truth(tar_folder: str) -> dict[str, dict]:
    """key -> the KEY.json of every sample in the folder's tars."""
    truth = {}
    for path in sorted(epath.Path(tar_folder).glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(member).read())
                    truth[meta["key"]] = meta
    return truth


def read_images(tar_folder: str) -> dict[str, bytes]:
    """key -> the encoded KEY.jpg of every sample in the folder's tars."""
    images = {}
    for path in sorted(epath.Path(tar_folder).glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".jpg"):
                    images[member.name[:-len(".jpg")]] = tar.extractfile(member).read()
    return images
