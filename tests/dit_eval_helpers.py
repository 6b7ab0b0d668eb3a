"""Shared by the Recap-DiT data and evaluation tests: a tiny random diffusers AutoencoderKL and a
caption job's output folder written with the caption job's own writer."""

import io

import numpy as np
from PIL import Image

from recap_jax.data.schema import RECORD_FEATURES
from recap_jax.data.writer import OutputDataset


def tiny_diffusers_vae(folder, *, blocks=(8, 16), attention=True, seed=0):
    """A random diffusers AutoencoderKL saved with save_pretrained (every weight perturbed, so a
    GroupNorm's ones and zeros cannot hide a mapping mistake)."""
    import diffusers
    import torch
    torch.manual_seed(seed)
    model = diffusers.AutoencoderKL(
        block_out_channels=blocks, down_block_types=("DownEncoderBlock2D",) * len(blocks),
        up_block_types=("UpDecoderBlock2D",) * len(blocks), layers_per_block=1, latent_channels=4,
        norm_num_groups=4, sample_size=16, scaling_factor=0.3, mid_block_add_attention=attention).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder, safe_serialization=True)
    return model


def random_image_bytes(rng: np.random.Generator, width: int, height: int, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, fmt)
    return buffer.getvalue()


def write_caption_output(folder, count: int, per_unit: int = 4, seed: int = 0, bad: tuple[int, ...] = ()):
    """A caption job's output folder of `count` random images (record i has key "k{i:03d}"; the
    indices in `bad` hold undecodable bytes); returns {key: record}."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(count):
        image = b"not an image" if i in bad else random_image_bytes(rng, 20 + 3 * i, 24 + (i % 5) * 4)
        records.append({"key": f"k{i:03d}", "url": f"http://x/{i}.png", "org_caption": f"alt {i}",
                        "re_caption": f"a detailed caption of picture {i}", "image": image, "width": 1,
                        "height": 1, "org_caption_length": 2, "re_caption_length": 6})
    units = [records[i:i + per_unit] for i in range(0, count, per_unit)]
    out = OutputDataset(str(folder), len(units), features=RECORD_FEATURES)
    for index, unit in enumerate(units):
        out.write_unit(index, unit, [])
    assert out.finalize({})
    return {r["key"]: r for r in records}


WORDS = ["a", "red", "green", "blue", "square", "circle", "photo", "of", "dog", "cat"]


def tiny_hf_clip(folder, seed=0):
    """A random HF CLIPModel folder with a word tokenizer (saved with save_pretrained)."""
    import torch
    import transformers

    from recap_jax.clip.data import Tokenizer
    from recap_jax.clip.synthetic import write_word_tokenizer
    write_word_tokenizer(str(folder), WORDS)
    tokenizer = Tokenizer(str(folder))
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer.hf), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=16,
                         eos_token_id=tokenizer.eos_id, bos_token_id=0, pad_token_id=tokenizer.eos_id),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=1, num_attention_heads=4),
        projection_dim=16)
    torch.manual_seed(seed)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(str(folder), safe_serialization=True)
    return model, tokenizer
