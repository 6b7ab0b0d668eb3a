"""Peak memory of `python -m recap_jax.convert` on a multi-GB checkpoint, in both layouts.

    .venv/bin/python benchmarks/convert_memory.py [--layers 22] [--workdir /tmp/convert_memory]

Builds a random float16 checkpoint directly with safetensors (numpy; no torch model), shaped like
TinyLlama-1.1B with LLaMA-3's 128,256-token vocabulary (hidden 2048, 22 layers, GQA 32/4 heads) and
a 4-layer CLIP-L/14-336-wide vision tower, in 4 shards:
  - the original LLaVA layout (`LlavaLlamaForCausalLM`; the tower in a separate CLIPModel-style
    folder, as for tennant/llava-llama-3-8b-hqedit + openai/clip-vit-large-patch14-336), and
  - the llava-hf layout (transformers 4.x names, tokenizer + preprocessor_config.json inside),
converts each in a subprocess to bfloat16 and records its peak RSS against the checkpoint size.
Writes benchmarks/results/convert_memory.json and deletes its temporary files.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import transformers
from safetensors.numpy import save_file
from tokenizers import Tokenizer, models, pre_tokenizers

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "convert_memory.json"
SPECIALS = ["<unk>", "<pad>", "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|eot_id|>"]


def tensor_specs(a) -> list[tuple[str, tuple[int, ...]]]:
    """(original-layout name, shape) of every tensor, in save order."""
    d, kv = a.hidden, a.kv_heads * (a.hidden // a.heads)
    specs = [("model.embed_tokens.weight", (a.vocab, d))]
    for i in range(a.layers):
        p = f"model.layers.{i}."
        specs += [(p + "self_attn.q_proj.weight", (d, d)), (p + "self_attn.k_proj.weight", (kv, d)),
                  (p + "self_attn.v_proj.weight", (kv, d)), (p + "self_attn.o_proj.weight", (d, d)),
                  (p + "mlp.gate_proj.weight", (a.intermediate, d)), (p + "mlp.up_proj.weight", (a.intermediate, d)),
                  (p + "mlp.down_proj.weight", (d, a.intermediate)),
                  (p + "input_layernorm.weight", (d,)), (p + "post_attention_layernorm.weight", (d,))]
    specs += [("model.norm.weight", (d,)), ("lm_head.weight", (a.vocab, d)),
              ("model.mm_projector.0.weight", (d, a.vision_hidden)), ("model.mm_projector.0.bias", (d,)),
              ("model.mm_projector.2.weight", (d, d)), ("model.mm_projector.2.bias", (d,))]
    v, patches = a.vision_hidden, (336 // 14) ** 2 + 1
    t = "model.vision_tower.vision_tower.vision_model."
    specs += [(t + "embeddings.class_embedding", (v,)), (t + "embeddings.patch_embedding.weight", (v, 3, 14, 14)),
              (t + "embeddings.position_embedding.weight", (patches, v)),
              (t + "pre_layrnorm.weight", (v,)), (t + "pre_layrnorm.bias", (v,))]
    for i in range(a.vision_layers):
        p = f"{t}encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            specs += [(f"{p}self_attn.{name}.weight", (v, v)), (f"{p}self_attn.{name}.bias", (v,))]
        specs += [(p + "mlp.fc1.weight", (4 * v, v)), (p + "mlp.fc1.bias", (4 * v,)),
                  (p + "mlp.fc2.weight", (v, 4 * v)), (p + "mlp.fc2.bias", (v,))]
        for name in ("layer_norm1", "layer_norm2"):
            specs += [(f"{p}{name}.weight", (v,)), (f"{p}{name}.bias", (v,))]
    specs += [(t + "post_layernorm.weight", (v,)), (t + "post_layernorm.bias", (v,))]
    return specs


def random_f16(rng: np.random.Generator, shape) -> np.ndarray:
    # Random bits with the top exponent bit cleared: finite float16 values, |x| < 2, fast to make.
    return (rng.integers(0, 2**16, shape, dtype=np.uint16) & 0xBBFF).view(np.float16)


def write_shards(folder: pathlib.Path, specs, rename, num_shards: int, seed: int = 0) -> int:
    """Write the tensors (renamed; rename -> None drops one) in `num_shards` files of about equal
    size, holding one shard in memory at a time. Returns the bytes written."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    total = sum(2 * int(np.prod(s)) for name, s in specs if rename(name))
    target, shard, shard_bytes, index, weight_map, written = total / num_shards, {}, 0, 0, {}, 0

    def flush():
        nonlocal shard, shard_bytes, index, written
        index += 1
        file = f"model-{index:05d}-of-{num_shards:05d}.safetensors"
        save_file(shard, folder / file, metadata={"format": "pt"})
        weight_map.update({k: file for k in shard})
        written += shard_bytes
        shard, shard_bytes = {}, 0

    for name, shape in specs:
        new = rename(name)
        if new is None:
            continue
        shard[new] = random_f16(rng, shape)
        shard_bytes += shard[new].nbytes
        if shard_bytes >= target and index < num_shards - 1:
            flush()
    flush()
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": written}, "weight_map": weight_map}))
    return written


def write_tokenizer(folder: pathlib.Path, vocab: int, with_image: bool) -> None:
    """A word-level tokenizer with exactly `vocab` ids (as LLaMA-3's 128,256), built in a second."""
    words = SPECIALS + [f"w{i}" for i in range(vocab - len(SPECIALS))]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", unk_token="<unk>",
        pad_token="<pad>", additional_special_tokens=SPECIALS[4:])
    if with_image:
        tokenizer.add_tokens(["<image>"], special_tokens=True)
    tokenizer.save_pretrained(folder)


def text_fields(a) -> dict:
    return {"vocab_size": a.vocab, "hidden_size": a.hidden, "intermediate_size": a.intermediate,
            "num_hidden_layers": a.layers, "num_attention_heads": a.heads, "num_key_value_heads": a.kv_heads,
            "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 8192,
            "hidden_act": "silu", "tie_word_embeddings": False, "bos_token_id": 2, "eos_token_id": 6}


def vision_fields(a) -> dict:
    return {"model_type": "clip_vision_model", "hidden_size": a.vision_hidden, "intermediate_size": 4 * a.vision_hidden,
            "num_hidden_layers": a.vision_layers, "num_attention_heads": 16, "image_size": 336, "patch_size": 14}


PREPROCESSOR = {"crop_size": {"height": 336, "width": 336}, "size": {"shortest_edge": 336}, "do_center_crop": True,
                "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
                "resample": 3, "rescale_factor": 1 / 255, "image_processor_type": "CLIPImageProcessor"}


def build_original(root: pathlib.Path, a) -> tuple[list[str], int]:
    ckpt, clip, tok = root / "llava-llama3", root / "clip-vit", root / "tokenizer"
    specs = tensor_specs(a)
    tower = "model.vision_tower.vision_tower."
    size = write_shards(ckpt, specs, lambda n: None if n.startswith(tower) else n, a.shards)
    size += write_shards(clip, specs, lambda n: n[len(tower):] if n.startswith(tower) else None, 1, seed=1)
    (ckpt / "config.json").write_text(json.dumps({
        **text_fields(a), "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava_llama",
        "mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_hidden_size": a.vision_hidden,
        "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "mm_projector_type": "mlp2x_gelu",
        "image_aspect_ratio": "pad", "mm_use_im_start_end": False, "mm_patch_merge_type": "flat"}))
    (ckpt / "generation_config.json").write_text(json.dumps({"eos_token_id": 6}))
    (clip / "config.json").write_text(json.dumps(vision_fields(a)))
    (clip / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    write_tokenizer(tok, a.vocab, with_image=False)
    return ["--layout", "original", "--hf_dir", str(ckpt), "--vision_tower_dir", str(clip),
            "--tokenizer_dir", str(tok)], size


def build_llava_hf(root: pathlib.Path, a) -> tuple[list[str], int]:
    folder = root / "llava-hf"

    def rename(name: str) -> str:  # transformers 4.x llava-hf names (xtuner/llava-llama-3-8b-hf)
        for old, new in (("model.vision_tower.vision_tower.", "vision_tower."),
                         ("model.mm_projector.0.", "multi_modal_projector.linear_1."),
                         ("model.mm_projector.2.", "multi_modal_projector.linear_2."),
                         ("model.", "language_model.model."), ("lm_head.", "language_model.lm_head.")):
            if name.startswith(old):
                return new + name[len(old):]
        raise AssertionError(name)

    size = write_shards(folder, tensor_specs(a), rename, a.shards)
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlavaForConditionalGeneration"], "model_type": "llava", "image_token_index": a.vocab,
        "text_config": {**text_fields(a), "model_type": "llama"}, "vision_config": vision_fields(a),
        "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "projector_hidden_act": "gelu"}))
    (folder / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    write_tokenizer(folder, a.vocab, with_image=True)
    return ["--layout", "llava-hf", "--hf_dir", str(folder), "--template", "llama3_llava"], size


def folder_bytes(folder: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run_convert(args: list[str], out: pathlib.Path) -> dict:
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "recap_jax.convert", *args, "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO)
    wall = time.time() - start
    if proc.returncode != 0:
        raise RuntimeError(f"convert failed:\n{proc.stdout}\n{proc.stderr}")
    line = proc.stdout.strip().splitlines()[-1]
    reported = float(re.search(r"peak RSS ([\d.]+) GiB", line).group(1))
    return {"peak_rss_gib": reported, "wall_s": round(wall, 1), "converted_gib": folder_bytes(out) / 2**30,
            "log": line}


def baseline_rss_gib() -> float:
    """Peak RSS of the convert process before it reads anything (Python + JAX + Orbax imports)."""
    code = "import recap_jax.convert as c, jax; jax.numpy.zeros(1).block_until_ready(); print(c.peak_rss_bytes())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv_heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--vision_hidden", type=int, default=1024)
    parser.add_argument("--vision_layers", type=int, default=4)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a new temp folder)")
    parser.add_argument("--out", default=str(RESULTS))
    a = parser.parse_args()

    root = pathlib.Path(a.workdir or tempfile.mkdtemp(prefix="convert_memory_"))
    results = {"shape": {k: getattr(a, k) for k in ("hidden", "intermediate", "layers", "heads", "kv_heads",
                                                    "vocab", "vision_hidden", "vision_layers", "shards")},
               "source_dtype": "float16", "output_dtype": "bfloat16", "baseline_rss_gib": baseline_rss_gib(),
               "layouts": {}}
    try:
        for layout, build in (("original", build_original), ("llava-hf", build_llava_hf)):
            src = root / layout
            args, size = build(src, a)
            run = run_convert(args, root / f"{layout}-converted")
            run["checkpoint_gib"] = size / 2**30
            run["peak_rss_over_checkpoint"] = run["peak_rss_gib"] / run["checkpoint_gib"]
            run["command"] = "python -m recap_jax.convert " + " ".join(args) + " --out OUT"
            results["layouts"][layout] = run
            print(json.dumps({layout: run}, indent=2), flush=True)
            shutil.rmtree(src)
            shutil.rmtree(root / f"{layout}-converted")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results["max_rss_children_gib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 2**30
    pathlib.Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(a.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
