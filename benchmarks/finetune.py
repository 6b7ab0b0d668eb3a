"""Fine-tuning throughput: recap_jax's train step vs a Hugging Face / PyTorch training step.

    python benchmarks/finetune.py [--batch 8] [--steps 5] [--trainable projector+llm]

One random llava-hf checkpoint (~80M parameters by default: 4-layer LLaMA-3-style decoder,
hidden 768, GQA 12/4 heads, 32k vocabulary; 4-layer ViT at 112 px = 64 image tokens) is converted
and trained on the same batch (64 image + 64 text tokens per row, loss on the last 32), float32,
on the CPU, in one process:
- HF: `LlavaForConditionalGeneration(..., labels=...)`, `loss.backward()`, grad-norm clipping,
  `torch.optim.AdamW` over the trainable params (the rest `requires_grad=False`).
- ours: `recap_jax.training.step.make_train_step` jitted (AdamW, clipping, same trainable set).
Both first run one untimed step (compilation / warm-up), then --steps timed ones. Tokens/s counts
every position of the batch. Writes benchmarks/results/finetune.json (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

from common import peak_rss_mib  # benchmarks/common.py, beside this script

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # tiny_llava: the random-checkpoint builder

BENCH_CONFIG = dict(vocab_size=32000, image_size=112, patch_size=14, vision_layers=4, vision_hidden=512,
                    text_layers=4, hidden=768, heads=12, kv_heads=4)


def make_batch(config, rows: int, text_tokens: int, answer: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_image = config.num_image_tokens
    length = n_image + text_tokens
    tokens = rng.integers(8, config.text.vocab_size, size=(rows, length)).astype(np.int32)
    tokens[:, 1:1 + n_image] = config.image_token_id
    weights = np.zeros((rows, length), np.float32)
    weights[:, length - 1 - answer:length - 1] = 1
    side = config.vision.image_size
    return {"tokens": tokens, "targets": np.roll(tokens, -1, axis=1), "weights": weights,
            "pixels": rng.normal(size=(rows, side, side, 3)).astype(np.float32)}


def time_ours(ckpt: str, batch: dict, trainable: str, steps: int) -> float:
    import jax
    from recap_jax.captioning import model_loading
    from recap_jax.models.llava import LlavaModel
    from recap_jax.training import optimizer, step as step_lib
    spec, params = model_loading.load_captioner(checkpoint=ckpt)
    train, frozen = step_lib.split_params(params, trainable)
    tx = optimizer.make_optimizer(optimizer.OptimizerSettings(learning_rate=1e-5, num_steps=1000, warmup_steps=30))
    state = step_lib.init_state(train, tx)
    step = jax.jit(step_lib.make_train_step(LlavaModel(spec.config), tx), donate_argnums=(0,))
    micro = {k: v[None] for k, v in batch.items()}
    state, metrics = step(state, frozen, micro)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, frozen, micro)
    jax.block_until_ready(state)
    return time.perf_counter() - start


def time_hf(hf_dir: str, batch: dict, trainable: str, steps: int) -> float:
    import torch
    import transformers
    model = transformers.LlavaForConditionalGeneration.from_pretrained(hf_dir).train()
    parts = {"projector": ("multi_modal_projector",), "projector+llm": ("multi_modal_projector", "language_model", "lm_head"),
             "all": ("",)}[trainable]
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(any(part in name for part in parts))
        if p.requires_grad:
            params.append(p)
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
    tokens = torch.from_numpy(batch["tokens"]).long()
    labels = torch.full_like(tokens, -100)
    labels[:, 1:] = torch.from_numpy(np.where(batch["weights"][:, :-1] > 0, batch["targets"][:, :-1], -100)).long()
    pixels = torch.from_numpy(batch["pixels"].transpose(0, 3, 1, 2).copy())

    def one():
        loss = model(input_ids=tokens, pixel_values=pixels, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    one()
    start = time.perf_counter()
    for _ in range(steps):
        one()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--trainable", default="projector+llm", choices=("projector", "projector+llm", "all"))
    parser.add_argument("--out", default=str(HERE / "results" / "finetune.json"))
    args = parser.parse_args()

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from recap_jax import convert
    from recap_jax.models.config import llava_config_from_hf, read_json
    from tiny_llava import save_tiny_llava
    root = pathlib.Path(tempfile.mkdtemp(prefix="bench_finetune_"))
    hf_dir = save_tiny_llava(root / "hf", **BENCH_CONFIG)
    assert convert.main(["--hf_dir", str(hf_dir), "--out", str(root / "ckpt"), "--dtype", "float32"]) == 0
    config = llava_config_from_hf(read_json(hf_dir / "config.json"))
    batch = make_batch(config, args.batch, args.text_tokens, answer=32)
    tokens = batch["tokens"].size * args.steps

    hf_s = time_hf(str(hf_dir), batch, args.trainable, args.steps)
    ours_s = time_ours(str(root / "ckpt"), batch, args.trainable, args.steps)
    result = {"config": BENCH_CONFIG, "batch": args.batch, "sequence_length": int(batch["tokens"].shape[1]),
              "steps": args.steps, "trainable": args.trainable, "cpu_count": os.cpu_count(),
              "hf_tokens_per_s": tokens / hf_s, "ours_tokens_per_s": tokens / ours_s,
              "ours_over_hf": hf_s / ours_s, "peak_rss_mib": peak_rss_mib(), "load_average": os.getloadavg()}
    print(json.dumps(result, indent=1))
    print(f"tokens/s: ours {result['ours_tokens_per_s']:.0f}, HF {result['hf_tokens_per_s']:.0f} "
          f"-> ours / HF = {result['ours_over_hf']:.2f}x")
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
