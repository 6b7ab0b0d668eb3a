"""A synthetic image-caption dataset (coloured shapes) in the captioner's output format.

Used by the tests and the CPU demo in docs/clip.md: each image shows one shape of one colour at
one position on a light background; `org_caption` is terse alt-text ("red circle"),
`re_caption` a longer, descriptive caption as the recaptioner would write it. Every combination
of (colour, shape, position) has a unique caption, so retrieval on a split that renders each
combination once is well posed (chance R@1 = 1 / number of images).

    python -m recap_jax.clip.synthetic --out /tmp/shapes --num_train 4000 --image_size 32
writes /tmp/shapes/train (random renders, with the captioner's own output writer) and /tmp/shapes/heldout (one fresh render per
combination), plus /tmp/shapes/tokenizer (a word-level tokenizer covering the vocabulary).
"""

from __future__ import annotations

import io
import itertools
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageDraw

from recap_jax.data import schema
from recap_jax.data.writer import OutputDataset

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (235, 210, 20),
    "purple": (140, 40, 170), "orange": (245, 140, 20), "black": (20, 20, 20), "cyan": (20, 200, 210),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "right", "top", "bottom")
COMBINATIONS = tuple(itertools.product(COLOURS, SHAPES, POSITIONS))  # 96


def render(colour: str, shape: str, position: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One image; position, shape size and background jitter come from `rng`."""
    background = tuple(int(v) for v in rng.integers(200, 256, size=3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    radius = size * rng.uniform(0.17, 0.24)
    centre = {"left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27), "bottom": (0.5, 0.73)}[position]
    cx = size * (centre[0] + rng.uniform(-0.05, 0.05))
    cy = size * (centre[1] + rng.uniform(-0.05, 0.05))
    fill = tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in COLOURS[colour])
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
    return image


def captions(colour: str, shape: str, position: str) -> tuple[str, str]:
    """(org_caption, re_caption) for one combination."""
    org = f"{colour} {shape} {position}"
    re = (f"a simple picture of a single {colour} {shape} placed on the {position} side of a "
          f"plain light background")
    return org, re


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_records(num: int, size: int, seed: int, one_per_combination: bool = False) -> list[dict[str, Any]]:
    """Records with the fields of `recap_jax.data.schema.RECORD_FEATURES`."""
    rng = np.random.default_rng(seed)
    if one_per_combination:
        combos = list(COMBINATIONS)
    else:
        combos = [COMBINATIONS[i] for i in rng.integers(0, len(COMBINATIONS), size=num)]
    records = []
    for i, combo in enumerate(combos):
        org, re = captions(*combo)
        image = encode_png(render(*combo, size, rng))
        records.append(dict(
            key=f"{seed}-{i:06d}", url=f"synthetic://{seed}/{i}", org_caption=org, re_caption=re,
            image=image, width=size, height=size, org_caption_length=len(org.split()),
            re_caption_length=len(re.split()), sha256=schema.image_sha256(image)))
    return records


def write_tfds_folder(folder: str, records: Iterable[Mapping[str, Any]],
                      features: tfds.features.FeaturesDict | None = None, split: str = "train",
                      dataset_name: str | None = None, num_shards: int = 1) -> str:
    """Writes `records` as a TFDS ArrayRecord dataset folder with any features/split (no TensorFlow).

    `tfds.builder_from_directory(folder).as_data_source(split)` reads it. For the captioner's own
    layout use `write_captioner_output`.
    """
    from array_record.python.array_record_module import ArrayRecordWriter

    features = features or schema.RECORD_FEATURES
    dataset_name = dataset_name or schema.DATASET_NAME
    records = list(records)
    os.makedirs(folder, exist_ok=True)
    template = tfds.core.ShardedFileTemplate(
        data_dir=folder, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
        dataset_name=dataset_name, split=split, filetype_suffix="array_record")
    shard_lengths = []
    for shard, chunk in enumerate(np.array_split(np.arange(len(records)), num_shards)):
        writer = ArrayRecordWriter(os.fspath(template.sharded_filepath(shard_index=shard, num_shards=num_shards)),
                                   "group_size:1")
        for i in chunk:
            writer.write(features.serialize_example(records[i]))
        writer.close()
        shard_lengths.append(len(chunk))
    split_info = tfds.core.SplitInfo(name=split, shard_lengths=shard_lengths, num_bytes=0,
                                     filename_template=template)
    tfds.folder_dataset.write_metadata(data_dir=folder, features=features, split_infos=[split_info],
                                       filename_template=template, check_data=False)
    return folder


def write_captioner_output(folder: str, records: Sequence[Mapping[str, Any]], num_units: int = 1) -> str:
    """Writes `records` with the captioner's own writer (`recap_jax.data.writer.OutputDataset`):
    the folder is byte-for-byte the layout `recap_jax.caption` produces (shards, markers, metadata)."""
    output = OutputDataset(folder, num_units=num_units, fingerprint={"synthetic": True})
    for unit, chunk in enumerate(np.array_split(np.arange(len(records)), num_units)):
        output.write_unit(unit, [records[i] for i in chunk], failures=[])
    if not output.finalize({"synthetic": True}):
        raise RuntimeError(f"{folder}: not every unit was written")
    return folder


def vocabulary() -> list[str]:
    words = set()
    for combo in COMBINATIONS:
        for caption in captions(*combo):
            words.update(caption.split())
    return sorted(words)


def write_word_tokenizer(folder: str, words: Sequence[str]) -> str:
    """A CLIP-style tokenizer folder: BOS + lower-cased words + EOS, EOS also pads.

    Built locally with the `tokenizers` library (no download); loads with
    `transformers.AutoTokenizer.from_pretrained(folder)`.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<|startoftext|>", "<|endoftext|>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials + sorted(set(words)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>",
                                   eos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token="<unk>")
    fast.save_pretrained(folder)
    return folder


def write_demo(out: str, num_train: int = 4000, image_size: int = 32, seed: int = 0) -> dict[str, str]:
    """train/heldout dataset folders and a tokenizer under `out`; returns their paths."""
    paths = dict(train=os.path.join(out, "train"), heldout=os.path.join(out, "heldout"),
                 tokenizer=os.path.join(out, "tokenizer"))
    write_captioner_output(paths["train"], make_records(num_train, image_size, seed), num_units=4)
    write_captioner_output(paths["heldout"], make_records(0, image_size, seed + 1_000_003, one_per_combination=True))
    write_word_tokenizer(paths["tokenizer"], vocabulary() + ["a", "photo", "of", "the"])
    return paths


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("out", None, "output folder", required=True)
    flags.DEFINE_integer("num_train", 4000, "training records")
    flags.DEFINE_integer("image_size", 32, "image side in pixels")
    flags.DEFINE_integer("seed", 0, "random seed")

    def _main(argv):
        del argv
        f = flags.FLAGS
        print(write_demo(f.out, f.num_train, f.image_size, f.seed))

    app.run(_main)
