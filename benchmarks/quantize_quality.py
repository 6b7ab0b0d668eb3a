"""Quality of int8 weights (`model.quantize = "int8"`, Qwix PTQ) and of bf16, against float32.

    python benchmarks/quantize_quality.py [--images 32] [--new-tokens 32]

Two random llava-hf checkpoints built here (random weights: no trained captioner is available
offline): the tests' tiny model (~0.1M params) and a ~60M one (8-layer LLaMA-3-style decoder,
hidden 512, GQA 8/2, 32k vocabulary; 4-layer ViT at 112 px). Each captions the same images
greedily (no stop token, --new-tokens each) as float32, bfloat16 and int8 (int8 decoder weights,
float32 compute), through the caption job's loader and sampler. Reported against float32:
- caption agreement: share of captions identical token for token;
- prefix agreement: mean share of each caption before its first differing token;
- teacher-forced top-1 agreement: on the float32 captions, the share of positions where the
  variant's argmax equals float32's (greedy-token agreement without error compounding).
Writes benchmarks/results/quantize_quality.json.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))  # tiny_llava: the random-checkpoint builder
RESULTS = HERE / "results" / "quantize_quality.json"

MODELS = {
    "tiny": dict(),
    "60m": dict(vocab_size=32000, image_size=112, patch_size=14, vision_layers=4, vision_hidden=256,
                text_layers=8, hidden=512, heads=8, kv_heads=2),
}
PROMPT = "Please generate a detailed caption of this image."
VARIANTS = (("float32", "float32", ""), ("bfloat16", "bfloat16", ""), ("int8", "float32", "int8"))


def captions(hf_dir: str, dtype: str, quantize: str, images: list, new_tokens: int):
    """(params count, greedy captions [N, new_tokens], a function giving teacher-forced argmaxes)."""
    import jax
    import jax.numpy as jnp

    from recap_jax.captioning import model_loading
    from recap_jax.decoding.sampler import Request, Sampler
    from recap_jax.decoding.settings import DecodeSettings
    from recap_jax.models.quantization import caption_model
    from recap_jax.preprocess.image import preprocess_image

    spec, params = model_loading.load_captioner(hf_dir=hf_dir, dtype=dtype, quantize=quantize)
    model = caption_model(spec.config, jnp.dtype(dtype), quantize)
    prompt = spec.prompt_encoder().encode(PROMPT)
    requests = [Request(prompt, preprocess_image(im, spec.image), i) for i, im in enumerate(images)]
    bucket = int(len(prompt) + 31) // 32 * 32
    settings = DecodeSettings(max_new_tokens=new_tokens, batch_size=8, prefill_batch=4, prompt_buckets=(bucket,),
                              stop_ids=())
    out = {r.tag: r.tokens for r in Sampler(model, params, settings, cache_dtype=jnp.dtype(dtype)).generate(requests)}
    tokens = np.stack([np.pad(out[i], (0, new_tokens - len(out[i]))) for i in range(len(images))])
    apply = jax.jit(lambda p, t, x: jnp.argmax(model.apply({"params": p}, t, x), -1))

    def forced(reference: np.ndarray) -> np.ndarray:
        full = np.concatenate([np.broadcast_to(prompt, (len(images), len(prompt))), reference], 1)
        pixels = np.stack([r.pixels for r in requests]).astype(jnp.dtype(dtype))
        top = [np.asarray(apply(params, full[i:i + 8], pixels[i:i + 8])) for i in range(0, len(images), 8)]
        return np.concatenate(top)[:, len(prompt) - 1:-1]  # the prediction of each caption token

    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    return count, tokens, forced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--models", default="tiny,60m")
    args = parser.parse_args()
    from caption_vs_hf import make_images
    from tiny_llava import save_tiny_llava
    images = make_images(args.images)
    results = {}
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            hf_dir = pathlib.Path(tmp) / name
            save_tiny_llava(hf_dir, pad=True, **MODELS[name])
            runs = {v: captions(str(hf_dir), dtype, quantize, images, args.new_tokens)
                    for v, dtype, quantize in VARIANTS}
        _, reference, forced_ref = runs["float32"]
        ref_top = forced_ref(reference)
        row = {"params": runs["float32"][0]}
        for variant in ("bfloat16", "int8"):
            _, tokens, forced = runs[variant]
            differs = tokens != reference
            prefix = np.where(differs.any(1), differs.argmax(1), args.new_tokens) / args.new_tokens
            row[variant] = {"caption_agreement": round(float((~differs.any(1)).mean()), 3),
                            "prefix_agreement": round(float(prefix.mean()), 3),
                            "teacher_forced_top1_agreement": round(float((forced(reference) == ref_top).mean()), 4)}
        # float32 against itself, teacher-forced: 1.0 unless the two jitted programs differ.
        row["float32_self_check"] = float((ref_top == forced_ref(reference)).mean())
        results[name] = row
        print(name, json.dumps(row), flush=True)
    out = {"images": args.images, "new_tokens": args.new_tokens, "models": results}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
