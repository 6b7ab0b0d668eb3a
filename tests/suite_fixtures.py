"""Tiny fixtures of the evaluation suite's datasets, each in its public release layout."""

import json
import os

import numpy as np
from PIL import Image

from recap_jax.clip import synthetic


def _shape_image(i: int, size: int = 48) -> Image.Image:
    combo = synthetic.COMBINATIONS[i % len(synthetic.COMBINATIONS)]
    return synthetic.render(*combo, size, np.random.default_rng(i))


def _captions(i: int, n: int) -> list[str]:
    org, re = synthetic.captions(*synthetic.COMBINATIONS[i % len(synthetic.COMBINATIONS)])
    return ([org, re] * n)[:n]


def karpathy(root: str, dataset: str = "coco", num_test: int = 6, image_fn=_shape_image,
             caption_fn=_captions) -> dict[str, str]:
    """Karpathy's dataset_{coco,flickr30k}.json + image folder; test images have 5 captions (the
    first one 6, as some COCO images do), plus 2 train images that must be ignored."""
    entries = []
    for i in range(num_test + 2):
        split = "test" if i < num_test else "train"
        n = 6 if i == 0 else 5
        if dataset == "coco":
            folder, filename = os.path.join(root, "val2014"), f"COCO_val2014_{i:012d}.jpg"
            entry = {"filepath": "val2014", "filename": filename, "cocoid": i}
        else:
            folder, filename = os.path.join(root, "flickr30k-images"), f"{1000 + i}.jpg"
            entry = {"filename": filename}
        os.makedirs(folder, exist_ok=True)
        image_fn(i).save(os.path.join(folder, filename), quality=95)
        entry.update(imgid=i, split=split, sentids=list(range(n)),
                     sentences=[{"raw": c, "tokens": c.split(), "imgid": i} for c in caption_fn(i, n)])
        entries.append(entry)
    annotations = os.path.join(root, f"dataset_{'coco' if dataset == 'coco' else 'flickr30k'}.json")
    with open(annotations, "w") as f:
        json.dump({"images": entries, "dataset": dataset}, f)
    images = root if dataset == "coco" else os.path.join(root, "flickr30k-images")
    return {"annotations": annotations, "images": images}


def imagenet(root: str, per_class: int = 2, classes=(0, 1, 999)) -> str:
    """val/<wnid>/*.JPEG with all 1000 synset folders; images only in a few of them."""
    for c in range(1000):
        os.makedirs(os.path.join(root, "val", f"n{c:08d}"), exist_ok=True)
    for c in classes:
        for j in range(per_class):
            _shape_image(c + j).save(os.path.join(root, "val", f"n{c:08d}", f"ILSVRC2012_val_{c:05d}{j}.JPEG"))
    return root


def urban1k(root: str, num: int = 4) -> str:
    """Urban1k/image/*.jpg + Urban1k/caption/*.txt; captions of ~70 words (longer than the text length)."""
    folder = os.path.join(root, "Urban1k")
    os.makedirs(os.path.join(folder, "image"), exist_ok=True)
    os.makedirs(os.path.join(folder, "caption"), exist_ok=True)
    for i in range(num):
        _shape_image(i).save(os.path.join(folder, "image", f"{i}.jpg"))
        with open(os.path.join(folder, "caption", f"{i}.txt"), "w") as f:
            f.write(" ".join(_captions(i, 2)[1:] * 4) + (" a photo of the" * 3 if i == 0 else ""))
    return folder


def vg_attribute(root: str, per_pair: int = 26) -> str:
    """ARO's visual_genome_attribution.json + images/: two attribute pairs of `per_pair` cases."""
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    for i in range(2):
        _shape_image(i, 64).save(os.path.join(root, "images", f"{2380 + i}.jpg"))
    cases = []
    for k in range(2 * per_pair):
        a, b = (("red", "blue"), ("green", "yellow"))[k % 2]
        cases.append({"image_id": str(2380 + k % 2), "image_path": f"{2380 + k % 2}.jpg",
                      "bbox_x": 4 + k % 5, "bbox_y": 2, "bbox_w": 40, "bbox_h": 50,
                      "true_caption": f"the {a} circle and the {b} square",
                      "false_caption": f"the {b} circle and the {a} square", "attributes": [a, b]})
    with open(os.path.join(root, "visual_genome_attribution.json"), "w") as f:
        json.dump(cases, f)
    return root
