"""Tiny random llava-hf checkpoints built with transformers (the numerical reference)."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import torch
import transformers
from PIL import Image

from recap_jax.captioning.tiny_demo import tiny_llava_hf_config, tiny_tokenizer


def save_tiny_llava(folder: pathlib.Path, *, pad: bool = True, seed: int = 0, dtype=torch.float32,
                    **config_overrides) -> pathlib.Path:
    """A random LlavaForConditionalGeneration with tokenizer, processor and chat template."""
    folder.mkdir(parents=True, exist_ok=True)
    config = transformers.LlavaConfig(**tiny_llava_hf_config(**config_overrides))
    torch.manual_seed(seed)
    model = transformers.LlavaForConditionalGeneration(config).to(dtype).eval()
    # Random init leaves norms at 1 and biases at 0; perturb them so that their conversion is tested.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias") or "class_embedding" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    processor_for(config, pad).save_pretrained(folder)
    return folder


def processor_for(config: transformers.LlavaConfig, pad: bool) -> transformers.LlavaProcessor:
    side = config.vision_config.image_size
    image_processor = transformers.models.llava.image_processing_pil_llava.LlavaImageProcessorPil(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}, do_pad=pad,
        do_center_crop=True, resample=3)
    tokenizer = tiny_tokenizer()
    return transformers.LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=tokenizer.chat_template,
        patch_size=config.vision_config.patch_size, num_additional_image_tokens=1,
        vision_feature_select_strategy=config.vision_feature_select_strategy)


def load_reference(folder: pathlib.Path):
    model = transformers.LlavaForConditionalGeneration.from_pretrained(folder).eval()
    # The PIL image processor: what LLaVA was trained with and what our pre-processing matches
    # (transformers picks its torchvision backend by default when torchvision is installed).
    processor = transformers.AutoProcessor.from_pretrained(folder, backend="pil")
    return model, processor


def sample_images(seed: int = 0) -> list[Image.Image]:
    """Images of different sizes and aspect ratios (both pre-processing modes matter)."""
    rng = np.random.default_rng(seed)
    sizes = [(40, 30), (23, 57), (28, 28), (64, 17)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
