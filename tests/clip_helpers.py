"""Shared helpers for the CLIP tests: a synthetic captioner-output dataset and tiny configs."""

import math
import os

import numpy as np
import tensorflow_datasets as tfds

from recap_jax.clip import synthetic


def write_shapes(root, num_train=512, image_size=32, seed=0):
    """train/heldout folders in the captioner's output layout + a word tokenizer (cached per root)."""
    root = str(root)
    if not os.path.exists(os.path.join(root, "tokenizer")):
        synthetic.write_demo(root, num_train=num_train, image_size=image_size, seed=seed)
        write_eval_folders(root, image_size, seed=seed + 17)
    return dict(train=os.path.join(root, "train"), heldout=os.path.join(root, "heldout"),
                tokenizer=os.path.join(root, "tokenizer"), coco_style=os.path.join(root, "coco_style"),
                colours=os.path.join(root, "colours"))


def tiny_config(paths, workdir, **train_overrides):
    """configs/clip_tiny.py pointed at the synthetic data, with quick defaults for tests."""
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "configs", "clip_tiny.py")
    spec = importlib.util.spec_from_file_location("clip_tiny_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("folders=" + paths["train"])
    config.workdir = str(workdir)
    config.data.tokenizer = paths["tokenizer"]
    config.data.num_threads = 2
    config.train.update(train_overrides)
    return config


def model_config(model=None, **fields) -> dict:
    """A whole `config.model` for `clip.model.config_from_dict`: clip/defaults.py's fields (or
    `model`'s), the CLIP BPE's end-of-text id as the tokenizer would give it, `fields` over them."""
    from recap_jax.clip.defaults import base_config
    return {**(model or base_config().model).to_dict(), "eos_token_id": 49407, **fields}


def write_eval_folders(root: str, size: int, seed: int) -> dict[str, str]:
    """Two evaluation layouts over one fresh render per combination:
    `coco_style`: a `captions` LIST per image (COCO Karpathy style, 2 captions each);
    `colours`: an image-classification folder whose ClassLabel `label` is the colour."""
    records = synthetic.make_records(0, size, seed, one_per_combination=True)
    coco_features = tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=(), dtype=np.object_),
        "captions": tfds.features.Sequence(tfds.features.Text())})
    coco = synthetic.write_tfds_folder(os.path.join(root, "coco_style"), (
        {"image": r["image"], "captions": [r["org_caption"], r["re_caption"]]} for r in records),
        features=coco_features, split="test", dataset_name="shapes_captions")
    colour_features = tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=(), dtype=np.object_),
        "label": tfds.features.ClassLabel(names=list(synthetic.COLOURS))})
    colours = synthetic.write_tfds_folder(os.path.join(root, "colours"), (
        {"image": r["image"], "label": list(synthetic.COLOURS).index(r["org_caption"].split()[0])} for r in records),
        features=colour_features, split="test", dataset_name="shapes_colours")
    return {"coco_style": coco, "colours": colours}


def chance_recall(num_candidates: int, k: int, positives: int = 1) -> float:
    """Expected recall@k of random scores (for comparison in reports)."""
    if k >= num_candidates:
        return 1.0
    return 1.0 - math.comb(num_candidates - positives, k) / math.comb(num_candidates, k)
