"""Tiny random open_clip models (open_clip's own model code, PyTorch, CPU), their hub-layout folders,
and open_clip's training update, for the parity tests of `recap_jax.clip.open_clip_weights`."""

from __future__ import annotations

import json
import math
import os

import numpy as np

# Two architectures: a ViT-B/16-like one (CLS pooling, causal text pooled at argmax, quick_gelu)
# and a CLIPA / Recap-CLIP "HTxt"-like one (average pooling, no ln_pre, LN after pool, a text
# tower wider and deeper than the image tower, non-causal, pooled at the last position, gelu).
ARCHS = {
    "b16": dict(embed_dim=32, quick_gelu=True,
                vision_cfg=dict(image_size=32, layers=2, width=64, head_width=32, patch_size=16),
                text_cfg=dict(context_length=16, vocab_size=200, width=48, heads=2, layers=2)),
    "htxt": dict(embed_dim=32,
                 vision_cfg=dict(image_size=32, layers=2, width=48, head_width=16, patch_size=8, no_ln_pre=True,
                                 pool_type="avg", final_ln_after_pool=True),
                 text_cfg=dict(context_length=16, vocab_size=200, width=96, heads=4, layers=3, pool_type="last",
                               no_causal_mask=True, hf_tokenizer_name="bert-base-uncased",
                               tokenizer_kwargs={"strip_sep_token": True})),
    "siglip": dict(embed_dim=32, init_logit_bias=-10.0,
                   vision_cfg=dict(image_size=32, layers=2, width=64, head_width=32, patch_size=16),
                   text_cfg=dict(context_length=16, vocab_size=200, width=48, heads=2, layers=2)),
}


def build_open_clip(model_cfg: dict, seed: int = 0, jitter: float = 0.02):
    """open_clip's CLIP / CustomTextCLIP from `model_cfg`, float32, every tensor perturbed (zero
    biases and unit LayerNorms would hide a layout error)."""
    import torch
    from open_clip.model import CLIP, CustomTextCLIP

    torch.manual_seed(seed)
    cls = CustomTextCLIP if model_cfg.get("custom_text") else CLIP
    model = cls(**{k: v for k, v in model_cfg.items() if k != "custom_text"})
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "logit_scale" and name != "logit_bias":
                p.add_(torch.randn_like(p) * jitter)
    return model


def save_open_clip(model, model_cfg: dict, folder) -> str:
    """The hub layout: open_clip_config.json + open_clip_model.safetensors."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": model_cfg, "preprocess_cfg": {}}, f)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              os.path.join(folder, "open_clip_model.safetensors"))
    return str(folder)


def random_batches(model_cfg: dict, batch: int, n: int, seed: int = 0) -> list[dict]:
    """Normalised float32 NHWC images and tokens: words in 1..vocab-2, EOS = vocab-1 (the highest id,
    so argmax and first-EOS pooling agree), 0-padding after it."""
    v, t = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        images = rng.standard_normal((batch, v["image_size"], v["image_size"], 3)).astype(np.float32)
        tokens = rng.integers(1, t["vocab_size"] - 1, (batch, t["context_length"])).astype(np.int32)
        for row, e in enumerate(rng.integers(2, t["context_length"], batch)):
            tokens[row, e], tokens[row, e + 1:] = t["vocab_size"] - 1, 0
        out.append({"image": images, "tokens": tokens})
    return out


def open_clip_train_steps(model, batches: list[dict], steps: int, *, lr: float, warmup: int, wd: float,
                          betas=(0.9, 0.98), eps=1e-6, grad_clip: float = 1.0, siglip: bool = False) -> list[float]:
    """open_clip_train's update (main.py's param groups, scheduler.cosine_lr,
    train.train_one_epoch at fp32 / accum_freq 1): per-step losses; `model` is trained in place."""
    import open_clip
    import torch
    from open_clip_train.scheduler import cosine_lr

    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    named = list(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
         {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": wd}],
        lr=lr, betas=betas, eps=eps)
    scheduler = cosine_lr(optimizer, lr, warmup, steps)
    loss_fn = open_clip.loss.SigLipLoss() if siglip else open_clip.loss.ClipLoss()
    model.train()
    losses = []
    for step in range(steps):
        batch = batches[step % len(batches)]
        scheduler(step)
        optimizer.zero_grad()
        out = model(torch.from_numpy(batch["image"]).permute(0, 3, 1, 2), torch.from_numpy(batch["tokens"]).long())
        loss = loss_fn(*out)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip, norm_type=2.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
    return losses
