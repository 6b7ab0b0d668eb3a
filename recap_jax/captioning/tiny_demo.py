"""A tiny random LLaVA-LLaMA-3 checkpoint built offline (no download, no PyTorch).

It lets the README's first command run the whole captioning path on any machine. Its captions
are random words: it is a working stand-in for the real model, not a captioner.
"""

from __future__ import annotations

import jax
import numpy as np
from etils import epath
from flax import linen as nn
from flax import traverse_util

from recap_jax.conversion import bundle
from recap_jax.models.config import llava_config_from_hf
from recap_jax.models.llava import LlavaModel
from recap_jax.preprocess.image import ImageSettings
from recap_jax.preprocess.text import stop_token_ids
from recap_jax.testing.tiny import tiny_llava_hf_config, tiny_tokenizer


def build_tiny_checkpoint(out_dir: str, seed: int = 0, image_size: int = 56) -> epath.Path:
    config = llava_config_from_hf(tiny_llava_hf_config(image_size=image_size, patch_size=14, text_layers=2))
    tokenizer = tiny_tokenizer()
    side = config.vision.image_size
    tokens = np.zeros((1, config.num_image_tokens + 1), np.int32)
    params = nn.unbox(LlavaModel(config).init(jax.random.PRNGKey(seed), tokens,
                                              np.zeros((1, side, side, 3), np.float32))["params"])
    params = jax.tree.map(np.asarray, params)
    spec = bundle.CaptionerSpec(config, ImageSettings(size=side, mode="pad"), tokenizer, None,
                                tokenizer.chat_template, stop_token_ids(tokenizer))
    print(f"[caption] building a tiny random demo checkpoint at {out_dir}", flush=True)
    return bundle.save_converted(out_dir, spec, traverse_util.flatten_dict(params).items(), "float32",
                                 {"layout": "tiny-random-demo"})
