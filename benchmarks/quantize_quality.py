"""Caption quality of the quantised modes, measured with a trained captioner: bf16, int8 weights, w8a8.

    python benchmarks/quantize_quality.py [--scenes 300] [--new-tokens 20]

The shipped miniature captioner (recap_jax/assets/mini_captioner: fine-tuned by
`python -m recap_jax.reproduce` on the miniature world's descriptions, docs/mini_paper.md)
captions held-out world scenes (colour x shape x background triples never seen in training,
`mini_world.make_scenes(..., "eval")`, the mini paper's seed 0), rendered and JPEG-encoded as
its caption job reads them, greedily through the caption job's loader and sampler, in:
- float32 (the reference), bfloat16 (what the TPU job computes in),
- int8: int8 decoder weights, bf16 compute (`model.quantize="int8"`, configs/v5e_256.py before),
- w8a8: int8 weights, and int8 activations in the prefill's decoder matmuls (`"w8a8"`).
Reported per mode: the share of captions naming the main object's colour and shape ("a large
COLOUR [pattern] SHAPE", `mini_world.names_main_object`), colour alone, shape alone, and against
float32: caption agreement (identical text) and token agreement (share of caption tokens equal
position by position). A mode whose colour+shape share is more than 2 points below bf16's is
marked. Writes benchmarks/results/quantize_quality.json.
"""

from __future__ import annotations

import argparse
import io
import json
import pathlib
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
RESULTS = HERE / "results" / "quantize_quality.json"
CAPTIONER = HERE.parent / "recap_jax" / "assets" / "mini_captioner"
PROMPT = "describe this image"  # the instruction it was fine-tuned with (configs/mini_paper.py)
MODES = (("float32", "float32", ""), ("bfloat16", "bfloat16", ""), ("int8", "bfloat16", "int8"),
         ("w8a8", "bfloat16", "w8a8"))
MARGIN = 0.02  # a mode more than this below bf16 (colour + shape share) is marked


def scene_images(num: int, seed: int) -> tuple[list, list]:
    """(held-out scenes, their images as the caption job decodes them: 56 px JPEG, quality 95)."""
    from PIL import Image

    from recap_jax.clip import mini_world
    scenes = mini_world.make_scenes(num, seed, "eval")
    images = []
    for scene in scenes:
        buffer = io.BytesIO()
        mini_world.render(scene, 56).save(buffer, format="JPEG", quality=95)
        images.append(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    return scenes, images


def captions(dtype: str, quantize: str, images: list, new_tokens: int) -> tuple[list[str], list[np.ndarray]]:
    """Greedy captions (text, tokens) of every image by the mini captioner in this mode."""
    import jax.numpy as jnp

    from recap_jax.captioning import model_loading
    from recap_jax.decoding.sampler import Request, Sampler
    from recap_jax.decoding.settings import DecodeSettings
    from recap_jax.models.quantization import caption_model
    from recap_jax.preprocess.image import preprocess_image

    spec, params = model_loading.load_captioner(checkpoint=str(CAPTIONER), dtype=dtype, quantize=quantize)
    model = caption_model(spec.config, jnp.dtype(dtype), quantize)
    prompt = spec.prompt_encoder().encode(PROMPT)
    requests = [Request(prompt, preprocess_image(im, spec.image), i) for i, im in enumerate(images)]
    settings = DecodeSettings(max_new_tokens=new_tokens, batch_size=32, prefill_batch=8,
                              prompt_buckets=(int(len(prompt) + 31) // 32 * 32,), stop_ids=spec.stop_ids)
    out = {r.tag: np.asarray(r.tokens) for r in
           Sampler(model, params, settings, cache_dtype=jnp.dtype(dtype)).generate(iter(requests))}
    tokens = [out[i] for i in range(len(images))]
    return [spec.tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens], tokens


def token_agreement(tokens: list[np.ndarray], reference: list[np.ndarray]) -> float:
    """Share of the reference's caption tokens matched position by position (length differences count)."""
    same = total = 0
    for a, b in zip(tokens, reference):
        n = min(len(a), len(b))
        same += int((a[:n] == b[:n]).sum())
        total += max(len(a), len(b))
    return same / max(total, 1)


def score(texts: list[str], scenes: list) -> dict[str, float]:
    from recap_jax.clip import mini_world
    n = len(scenes)
    colour = shape = 0
    for text, scene in zip(texts, scenes):
        words = text.lower().split()
        at = [i for i in range(len(words) - 1) if words[i] == "large"]
        colour += any(words[i + 1] == scene.colour for i in at)
        shape += any(scene.shape in words[i + 1:i + 4] for i in at)
    both = sum(mini_world.names_main_object(t, s.label) for t, s in zip(texts, scenes))
    return {"colour_and_shape_named": both / n, "colour_named": colour / n, "shape_named": shape / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=300)
    parser.add_argument("--new-tokens", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    scenes, images = scene_images(args.scenes, args.seed)
    runs = {name: captions(dtype, quantize, images, args.new_tokens) for name, dtype, quantize in MODES}
    ref_texts, ref_tokens = runs["float32"]
    rows = {}
    for name, (texts, tokens) in runs.items():
        rows[name] = {**score(texts, scenes),
                      "caption_agreement_with_float32": float(np.mean([a == b for a, b in zip(texts, ref_texts)])),
                      "token_agreement_with_float32": token_agreement(tokens, ref_tokens),
                      "examples": texts[:3]}
    bf16 = rows["bfloat16"]["colour_and_shape_named"]
    for name, row in rows.items():
        row["more_than_2_points_below_bf16"] = row["colour_and_shape_named"] < bf16 - MARGIN
    out = {"captioner": "recap_jax/assets/mini_captioner", "scenes": args.scenes, "seed": args.seed,
           "new_tokens": args.new_tokens, "prompt": PROMPT, "modes": rows}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    print(f"{'mode':<9} {'colour+shape':>12} {'colour':>7} {'shape':>6} {'same caption':>12} {'same tokens':>11}")
    for name, row in rows.items():
        mark = "  <- more than 2 points below bf16" if row["more_than_2_points_below_bf16"] else ""
        print(f"{name:<9} {row['colour_and_shape_named']:>12.1%} {row['colour_named']:>7.1%} "
              f"{row['shape_named']:>6.1%} {row['caption_agreement_with_float32']:>12.1%} "
              f"{row['token_agreement_with_float32']:>11.1%}{mark}")


if __name__ == "__main__":
    main()
