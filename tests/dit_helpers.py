"""Shared by the Recap-DiT tests: a word tokenizer, tiny random HF CLIP text encoders, a latents
dataset written with the package's TFDS writer, and the CPU config pointed at them."""

import importlib.util
import json
import os

import numpy as np

from recap_jax.clip.synthetic import write_word_tokenizer
from recap_jax.data.writer import OutputDataset
from recap_jax.dit.latents import LATENTS_JSON, latent_features

COLOURS = ("red", "green", "blue", "yellow", "white", "black", "purple", "orange")
WORDS = list(COLOURS) + ["a", "square", "photo", "of", "the", "picture", "circle"]


def save_text_encoder(folder, kind: str = "text", width: int = 32, seed: int = 0) -> str:
    """A random HF CLIPTextModel ("text"), CLIPTextModelWithProjection ("projected") or CLIPModel
    ("clip") with a word tokenizer, saved as safetensors in `folder`."""
    import torch
    import transformers

    write_word_tokenizer(str(folder), WORDS)
    vocab = len(WORDS) + 3
    text = dict(vocab_size=vocab, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=1,
                num_attention_heads=4, max_position_embeddings=24, eos_token_id=1, bos_token_id=0, pad_token_id=1,
                projection_dim=16)
    torch.manual_seed(seed)
    if kind == "clip":
        config = transformers.CLIPConfig(text_config=text, vision_config=dict(
            image_size=16, patch_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2), projection_dim=16)
        model = transformers.CLIPModel(config)
    else:
        cls = transformers.CLIPTextModel if kind == "text" else transformers.CLIPTextModelWithProjection
        model = cls(transformers.CLIPTextConfig(**text))
    model.save_pretrained(str(folder), safe_serialization=True)
    return str(folder)


def write_latents(folder, latents: np.ndarray, org_captions, re_captions, per_unit: int = 4) -> str:
    """A pixel-space latents dataset (the encode_latents schema) of these latents and captions."""
    n, shape = len(latents), tuple(latents.shape[1:])
    records = [{"key": f"k{i:03d}", "url": f"http://x/{i}", "org_caption": org_captions[i],
                "re_caption": re_captions[i], "latent": latents[i].astype(np.float32)} for i in range(n)]
    units = [records[i:i + per_unit] for i in range(0, n, per_unit)]
    out = OutputDataset(str(folder), len(units), features=latent_features(shape))
    for index, unit in enumerate(units):
        out.write_unit(index, unit, [])
    assert out.finalize({})
    with open(os.path.join(folder, LATENTS_JSON), "w") as f:
        json.dump({"codec": "pixels", "image_size": shape[0], "latent_shape": list(shape), "scale_factor": 1.0,
                   "autoencoder_dir": None}, f)
    return str(folder)


def colour_latents(size: int = 8) -> np.ndarray:
    """8 images in [-1, 1], each one flat colour with a lighter square in a corner of its own."""
    rgb = {"red": (1, -1, -1), "green": (-1, 1, -1), "blue": (-1, -1, 1), "yellow": (1, 1, -1),
           "white": (1, 1, 1), "black": (-1, -1, -1), "purple": (0.5, -1, 0.5), "orange": (1, 0, -1)}
    out = np.zeros((len(COLOURS), size, size, 3), np.float32)
    for i, name in enumerate(COLOURS):
        out[i] = np.asarray(rgb[name], np.float32) * 0.8
        r, c = divmod(i % 4, 2)
        half = size // 2
        out[i, r * half:(r + 1) * half, c * half:(c + 1) * half] += 0.2
    return out


def cpu_config(workdir, data_dir, encoder, **train):
    """configs/recap_dit_cpu.py pointed at a latents dataset and a text encoder."""
    path = os.path.join(os.path.dirname(__file__), "..", "configs", "recap_dit_cpu.py")
    spec = importlib.util.spec_from_file_location("recap_dit_cpu_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.workdir, config.data.dir, config.text.encoder = str(workdir), str(data_dir), str(encoder)
    config.train.update(train)
    return config
