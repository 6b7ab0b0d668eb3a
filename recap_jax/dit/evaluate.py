"""Recap-DiT's evaluation (the paper's Table 7 columns): for each prompt set (Raw / Recap), FID of
the generated images against a folder of real images and the CLIP score of image and prompt.

    results = evaluate(config)      # generates with dit.sample.generate, then scores
    score_sets(config, images_by_set, prompts_by_set)   # the scoring alone, on uint8 images

FID's features are InceptionV3 pool features (`eval.fid_features="inception"`, the weights file
`eval.inception_weights`) or the CLIP model's image embeddings (`"clip"`, as clean-fid offers);
the reference images are cropped to the generated size as DiT crops its training images. Outputs
in `eval.out`: `table.md`, `results.json` and `grid.png` (the first images of every set, one row
per set).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
import numpy as np
from etils import epath
from PIL import Image

from recap_jax.data.images import decode_image
from recap_jax.data.inputs.folder import IMAGE_EXTENSIONS, walk_files
from recap_jax.dit.images import center_crop
from recap_jax.errors import ConfigError, ImageError
from recap_jax.metrics import frechet

FID_FEATURES = ("inception", "clip")


def eval_defaults() -> ml_collections.ConfigDict:
    """The `eval` fields of a Recap-DiT config (configs/recap_dit_*.py set `config.eval` to this)."""
    return ml_collections.ConfigDict(dict(
        reference_dir="",  # a folder of real images (searched recursively), e.g. the MSCOCO val images
        max_reference=0,  # 0 = every reference image
        clip="",  # a HF CLIPModel folder or a train_clip workdir, for the CLIP score (and "clip" features)
        fid_features="inception",  # "inception" (eval.inception_weights) or "clip" (eval.clip's image features)
        inception_weights="",  # pytorch-fid's pt_inception-2015-12-05 state dict as safetensors (docs/dit_eval.md)
        # prompt sets "name=file,name=file" (one prompt a line), e.g. "raw=coco_raw.txt,recap=coco_recap.txt";
        # empty = one set "prompts" from sample.prompts
        prompt_sets="",
        max_prompts=0,  # 0 = every prompt of each set
        batch_size=16,  # images per feature-network call
        grid_images=8,  # images per set in grid.png
        out="",  # where table.md, results.json and grid.png go; empty = WORKDIR/eval
    ))


def read_prompts(path: str, field: str, limit: int = 0) -> list[str]:
    """The non-empty lines of a text file (one prompt a line)."""
    if not path or not os.path.isfile(path):
        raise ConfigError(f"{field}: {path or '(empty)'} is not a file (a text file, one prompt a line)")
    with open(path, encoding="utf-8") as f:
        prompts = [line.strip() for line in f if line.strip()]
    if not prompts:
        raise ConfigError(f"{field}: {path} has no prompts")
    return prompts[:limit] if limit else prompts


def prompt_sets(config: ml_collections.ConfigDict) -> dict[str, list[str]]:
    """{set name: prompts} from eval.prompt_sets, or {"prompts": sample.prompts}."""
    e = config.eval
    if not e.prompt_sets:
        return {"prompts": read_prompts(config.sample.prompts, "sample.prompts", e.max_prompts)}
    sets = {}
    for part in (p.strip() for p in e.prompt_sets.split(",") if p.strip()):
        name, sep, path = part.partition("=")
        if not sep or not name.strip() or name.strip() in sets:
            raise ConfigError(f"eval.prompt_sets: {part!r}: write distinct name=file pairs separated by ','")
        sets[name.strip()] = read_prompts(path.strip(), f"eval.prompt_sets ({name.strip()})", e.max_prompts)
    return sets


def validate(config: ml_collections.ConfigDict) -> None:
    """Everything checkable before an image is generated, naming the field."""
    e = config.eval
    if e.fid_features not in FID_FEATURES:
        raise ConfigError(f"eval.fid_features={e.fid_features!r}: expected one of {FID_FEATURES}")
    if not e.reference_dir or not os.path.isdir(e.reference_dir):
        raise ConfigError(f"eval.reference_dir: {e.reference_dir or '(empty)'} is not a folder of real images")
    if not e.clip:
        raise ConfigError("eval.clip: required (a HF CLIPModel folder or a train_clip workdir, for the CLIP score)")
    if e.fid_features == "inception" and not os.path.isfile(e.inception_weights or ""):
        raise ConfigError(f"eval.inception_weights: {e.inception_weights or '(empty)'} is not a file; convert "
                          "pytorch-fid's pt_inception-2015-12-05 weights to safetensors (docs/dit_eval.md), or "
                          "set --config.eval.fid_features=clip")
    for field in ("batch_size", "grid_images"):
        if e[field] < 1:
            raise ConfigError(f"eval.{field}={e[field]}: must be >= 1")
    prompt_sets(config)


def reference_images(folder: str, size: int, limit: int = 0) -> np.ndarray:
    """uint8 [n, size, size, 3]: the folder's images (sorted paths), cropped as DiT does; files
    that do not decode are skipped."""
    files = sorted((p for p in walk_files(epath.Path(folder)) if p.suffix.lower() in IMAGE_EXTENSIONS), key=str)
    images = []
    for path in files:
        try:
            images.append(center_crop(decode_image(path.read_bytes()), size))
        except ImageError:
            continue
        if limit and len(images) == limit:
            break
    if len(images) < 2:
        raise ConfigError(f"eval.reference_dir: {folder} has {len(images)} readable images; FID needs at least 2")
    return np.stack(images)


def feature_fn(config: ml_collections.ConfigDict, clip_encoders) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 images -> [n, d] features for the Frechet distance (eval.fid_features)."""
    from recap_jax.metrics import clip_score, inception
    if config.eval.fid_features == "clip":
        return lambda images: clip_score.image_embeddings(clip_encoders, images)
    variables = inception.load_inception(config.eval.inception_weights)
    return lambda images: inception.inception_features(variables, images, config.eval.batch_size)


def score_sets(config: ml_collections.ConfigDict, images_by_set: dict[str, np.ndarray],
               prompts_by_set: dict[str, Sequence[str]], clip_encoders=None) -> dict[str, Any]:
    """FID and CLIP score of each set's uint8 images against eval.reference_dir; the results dict."""
    from recap_jax.metrics import clip_score
    e = config.eval
    clip_encoders = clip_encoders or clip_score.load_clip_encoders(e.clip, batch_size=e.batch_size)
    features = feature_fn(config, clip_encoders)
    size = next(iter(images_by_set.values())).shape[1]
    reference = reference_images(e.reference_dir, size, e.max_reference)
    mu_ref, sigma_ref = frechet.feature_statistics(features(reference))
    sets = {}
    for name, images in images_by_set.items():
        scores = clip_score.clip_scores(clip_encoders, images, prompts_by_set[name])
        fid = frechet.frechet_distance(*frechet.feature_statistics(features(images)), mu_ref, sigma_ref)
        sets[name] = {"fid": fid, "clip_score": float(np.mean(scores)), "num_images": int(len(images))}
    return {"sets": sets, "fid_features": e.fid_features, "reference_dir": e.reference_dir,
            "reference_images": int(len(reference)), "image_size": int(size), "clip": e.clip}


def table_markdown(results: dict[str, Any]) -> str:
    """The Table 7 columns: one row per prompt set."""
    feature = "Inception" if results["fid_features"] == "inception" else "CLIP"
    lines = [f"| prompt set | images | FID ({feature} features) | CLIP score |", "|---|---:|---:|---:|"]
    for name, r in results["sets"].items():
        lines.append(f"| {name} | {r['num_images']} | {r['fid']:.2f} | {r['clip_score']:.2f} |")
    return "\n".join(lines) + (f"\n\nReference: {results['reference_images']} images of {results['reference_dir']} "
                               f"at {results['image_size']} px; CLIP: {results['clip']}.\n")


def image_grid(images_by_set: dict[str, np.ndarray], per_row: int) -> np.ndarray:
    """The first `per_row` images of every set, one row per set (black where a set has fewer)."""
    size = next(iter(images_by_set.values())).shape[1]
    grid = np.zeros((size * len(images_by_set), size * per_row, 3), np.uint8)
    for row, images in enumerate(images_by_set.values()):
        for col, image in enumerate(images[:per_row]):
            grid[row * size:(row + 1) * size, col * size:(col + 1) * size] = image
    return grid


def write_outputs(out: str, results: dict[str, Any], images_by_set: dict[str, np.ndarray], per_row: int) -> None:
    """table.md, results.json and grid.png in `out` (each written whole, then renamed)."""
    folder = epath.Path(out)
    folder.mkdir(parents=True, exist_ok=True)

    def write(name: str, data: bytes) -> None:
        tmp = folder / f".{name}.tmp-{os.getpid()}"
        tmp.write_bytes(data)
        tmp.replace(folder / name)

    import io
    buffer = io.BytesIO()
    Image.fromarray(image_grid(images_by_set, per_row)).save(buffer, "PNG")
    write("grid.png", buffer.getvalue())
    write("results.json", json.dumps(results, indent=1).encode())
    write("table.md", table_markdown(results).encode())


def evaluate(config: ml_collections.ConfigDict, generate: Callable | None = None) -> dict[str, Any]:
    """Generate every prompt set's images (dit.sample.generate, keys = line numbers) and score them."""
    validate(config)
    from recap_jax.metrics import clip_score
    clip_encoders = clip_score.load_clip_encoders(config.eval.clip, batch_size=config.eval.batch_size)
    if generate is None:
        from recap_jax.dit.sample import generate
    sets = prompt_sets(config)
    images = {name: np.asarray(generate(config, prompts, [str(i) for i in range(len(prompts))]))
              for name, prompts in sets.items()}
    results = score_sets(config, images, sets, clip_encoders)
    results["workdir"] = config.workdir
    out = config.eval.out or os.path.join(config.workdir, "eval")
    import jax
    if jax.process_index() == 0:
        write_outputs(out, results, images, config.eval.grid_images)
    results["out"] = out
    return results
