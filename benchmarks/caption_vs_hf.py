"""Captioning throughput: recap_jax's sampler vs Hugging Face `generate`, plus a roofline.

    python benchmarks/caption_vs_hf.py [--images 64] [--batch 16] [--new-tokens 48]

One random llava-hf checkpoint (~100M parameters: 8-layer LLaMA-3-style decoder, hidden 768, GQA
12/4 heads, 32k vocabulary; 6-layer ViT at 112 px = 64 image tokens) captions the same images
with the same prompt, greedy, float32, on the CPU. Captions end at stop tokens chosen so that
their mean length is ~0.4 x max_new_tokens (the paper: ~49 of 128), since random weights would
otherwise never stop; both sides use the same stop tokens and must give the same tokens.
- HF: `LlavaForConditionalGeneration.generate(do_sample=False)`, batches of --batch, left padding.
- ours: the `recap_jax.caption` engine (Sampler: bucketed prefill + continuous-batching decode),
  --batch decode slots.
Each side runs in its own subprocess (so peak RSS is its own); the parent checks that both produce
the same tokens and prints ratios. The roofline part counts model FLOPs from the config
(recap_jax/models/flops.py) and divides the achieved FLOP/s, end to end and per phase, by this
machine's dense float32 matmul FLOP/s measured here with `jnp.dot`.
Then the equal-work run (`equal_work`): --equal-work-images JPEGs (default --images; 0 skips it),
every caption exactly --new-tokens tokens, `python -m recap_jax.caption --config configs/cpu_small.py`
(decode.batch_size = --batch) vs HF `generate` reading the same JPEGs, each timed as a whole
process (imports, loading, compiles included): ours twice, with an empty XLA compilation cache
(cold: it compiles and fills the cache) and then with that cache (warm), HF in between. The
variable-length ratio and both equal-work ratios are printed. Equal work means a record per image:
the checkpoint's word-level tokenizer covers its whole vocabulary (every random token decodes to
text), and the run fails unless both caption-command runs wrote a record for every JPEG.
Writes benchmarks/results/caption_vs_hf.json (--out).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

from common import dense_matmul_flops, peak_rss_mib  # benchmarks/common.py, beside this script

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # tiny_llava: the random-checkpoint builder

BENCH_CONFIG = dict(vocab_size=32000, image_size=112, patch_size=14, vision_layers=6, vision_hidden=512,
                    text_layers=8, hidden=768, heads=12, kv_heads=4)
PROMPT = "Please generate a detailed caption of this image. Please be as descriptive as possible."



def make_images(n: int, seed: int = 0):
    from PIL import Image
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        w, h = int(rng.integers(120, 240)), int(rng.integers(120, 240))
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * (i + 1)) % 256, (yy * 3) % 256, ((xx + yy) * 2) % 256], -1)
        noise = rng.integers(0, 40, (h, w, 3))
        images.append(Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)))
    return images


def build_checkpoint(folder: pathlib.Path) -> None:
    """The random checkpoint, with a word-level tokenizer covering its WHOLE vocabulary (the tiny
    test tokenizer's ~200 words + filler words w0, w1, ...): every id the random weights emit
    decodes to text, so every image gets a non-empty caption (a record) on our side."""
    from tiny_llava import save_tiny_llava

    from recap_jax.captioning.tiny_demo import SPECIAL_TOKENS, WORDS, tiny_tokenizer
    save_tiny_llava(folder, pad=True, **BENCH_CONFIG)
    filler = BENCH_CONFIG["vocab_size"] - len(SPECIAL_TOKENS) - len(set(WORDS))
    tokenizer = tiny_tokenizer(tuple(f"w{i}" for i in range(filler)))
    assert len(tokenizer) == BENCH_CONFIG["vocab_size"]
    tokenizer.save_pretrained(folder)


# --- HF side -----------------------------------------------------------------------------------


def run_hf(folder: str, n: int, batch: int, new_tokens: int, stop_ids: list[int]) -> dict:
    import torch
    from tiny_llava import load_reference
    torch.set_num_threads(os.cpu_count() or 2)
    model, processor = load_reference(pathlib.Path(folder))
    processor.tokenizer.padding_side = "left"
    images = make_images(n)
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}],
        add_generation_prompt=True)

    def generate(batch_images):
        inputs = processor(images=batch_images, text=[text] * len(batch_images), return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False, pad_token_id=1,
                                 eos_token_id=stop_ids)
        return out[:, inputs["input_ids"].shape[1]:].numpy(), inputs["input_ids"].shape[1]

    start = time.perf_counter()
    generate(images[:2])  # warm-up (first-call overheads), reported like our compile time
    warmup = time.perf_counter() - start
    tokens, prompt_len = [], 0
    start = time.perf_counter()
    for i in range(0, n, batch):
        out, prompt_len = generate(images[i:i + batch])
        for row in out:
            row = row.tolist()
            tokens.append(row[:next((i for i, t in enumerate(row) if t in stop_ids), len(row))])
    wall = time.perf_counter() - start
    return {"wall_s": wall, "warmup_s": warmup, "tokens": tokens, "prompt_tokens": prompt_len,
            "peak_rss_mib": peak_rss_mib()}


# --- our side ----------------------------------------------------------------------------------


def run_ours(folder: str, n: int, batch: int, new_tokens: int, prefill_batch: int, steps: int,
             stop_ids: list[int]) -> dict:
    import jax
    from recap_jax.captioning import model_loading
    from recap_jax.decoding.sampler import Request, Sampler
    from recap_jax.decoding.settings import DecodeSettings
    from recap_jax.models.llava import LlavaModel
    from recap_jax.preprocess.image import resize_image

    spec, params = model_loading.load_captioner(hf_dir=folder)
    model = LlavaModel(spec.config)
    prompt_ids = spec.prompt_encoder().encode(PROMPT)
    images = make_images(n)
    bucket = int(np.ceil(len(prompt_ids) / 16) * 16)
    settings = DecodeSettings(max_new_tokens=new_tokens, batch_size=batch, prefill_batch=prefill_batch,
                              prompt_buckets=(bucket,), steps_per_sync=steps,
                              stop_ids=tuple(stop_ids) or spec.stop_ids)
    sampler = Sampler(model, params, settings, image=spec.image)

    def requests(imgs):  # uint8 pixels, normalised in the prefill (as the caption job does)
        return [Request(prompt_ids, resize_image(im.convert("RGB"), spec.image), i) for i, im in enumerate(imgs)]

    start = time.perf_counter()
    list(sampler.generate(requests(images[:2])))  # compiles prefill + decode
    compile_s = time.perf_counter() - start
    if not stop_ids:
        # Random weights rarely say <|eot_id|>: every caption would run to max_new_tokens, unlike
        # real captions (mean ~49 of at most 128 tokens in the paper). Use as stop tokens a few
        # tokens whose first occurrence gives a mean caption length near 0.4 x max_new_tokens.
        free = [r.tokens.tolist() for r in sampler.generate(requests(images))]
        stop_ids = pick_stop_tokens(free, new_tokens)
        settings = dataclasses.replace(settings, stop_ids=tuple(stop_ids))
        sampler = Sampler(model, params, settings, image=spec.image)
        list(sampler.generate(requests(images[:2])))
    sampler.generated_tokens = sampler.prefill_tokens = 0
    start = time.perf_counter()
    results = {r.tag: r.tokens.tolist() for r in sampler.generate(requests(images))}
    wall = time.perf_counter() - start
    phases = time_phases(sampler, model, params, settings, requests(images[:prefill_batch]))
    return {"wall_s": wall, "compile_s": compile_s, "tokens": [results[i] for i in range(n)],
            "prompt_tokens": len(prompt_ids), "peak_rss_mib": peak_rss_mib(), "phases": phases,
            "config": spec.config.to_json_dict(), "matmul_flops": dense_matmul_flops(), "stop_ids": stop_ids,
            "devices": str(jax.devices())}


def pick_stop_tokens(captions: list[list[int]], max_new: int, target: float = 0.4,
                     max_tokens: int = 16) -> list[int]:
    """A small set of stop tokens whose first occurrence gives a mean caption length near
    target x max_new, spread as widely as possible. Greedy: add the token that brings the mean
    nearest the target (ties: larger spread) until the mean is within 5% of it."""
    def lengths(stops):
        return np.array([next((i for i, t in enumerate(c) if t in stops), max_new) for c in captions])

    stops: set[int] = set()
    vocabulary = {t for c in captions for t in c}
    while len(stops) < max_tokens and lengths(stops).mean() > (target + 0.05) * max_new:
        def score(token):
            ls = lengths(stops | {token})
            return (-abs(ls.mean() - target * max_new), ls.std())
        stops.add(max(vocabulary - stops, key=score))
    return sorted(stops)


def time_phases(sampler, model, params, settings, group) -> dict:
    """Prefill alone (groups of prefill_batch) and decode alone (a full batch), steady state."""
    import jax
    programs = sampler.programs
    state = programs.init()
    placed = [(i, r, i) for i, r in enumerate(group)]  # one device: one shard, slot = row
    state = sampler._prefill_group(state, placed)
    jax.block_until_ready(state)
    repeats = 5
    start = time.perf_counter()
    for _ in range(repeats):
        state = sampler._prefill_group(state, placed)
    jax.block_until_ready(state)
    prefill_s = (time.perf_counter() - start) / repeats / len(group)  # per image

    # Fill every slot, then time decode steps while none finishes.
    state = programs.init()
    for first in range(0, settings.batch_size, len(group)):
        state = sampler._prefill_group(state, [(i, r, first + i) for i, r in enumerate(group)])
    never = np.int32(settings.batch_size + 1)  # no early return for a refill

    def all_live(s):
        return s._replace(done=jax.numpy.zeros_like(s.done), num_generated=jax.numpy.zeros_like(s.num_generated))

    state = programs.decode(sampler.params, all_live(state), never)  # warm
    jax.block_until_ready(state)
    start = time.perf_counter()
    calls = 3
    for _ in range(calls):
        state = programs.decode(sampler.params, all_live(state), never)
    jax.block_until_ready(state)
    step_s = (time.perf_counter() - start) / (calls * settings.steps_per_sync)
    return {"prefill_s_per_image": prefill_s, "decode_step_s": step_s, "decode_batch": settings.batch_size}


# --- equal work, whole processes -------------------------------------------------------------------


def write_jpegs(folder: pathlib.Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(make_images(n)):
        image.save(folder / f"{i:05d}.jpg", quality=90)


def run_hf_folder(folder: str, images_dir: str, batch: int, new_tokens: int) -> dict:
    """HF's side of the equal-work run, all in this process: read the JPEGs, caption each with
    exactly `new_tokens` tokens (min_new_tokens = max_new_tokens)."""
    import torch
    from PIL import Image
    from tiny_llava import load_reference
    torch.set_num_threads(os.cpu_count() or 2)
    model, processor = load_reference(pathlib.Path(folder))
    processor.tokenizer.padding_side = "left"
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}],
        add_generation_prompt=True)
    paths = sorted(pathlib.Path(images_dir).glob("*.jpg"))
    generated = 0
    for i in range(0, len(paths), batch):
        images = [Image.open(p).convert("RGB") for p in paths[i:i + batch]]
        inputs = processor(images=images, text=[text] * len(images), return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 do_sample=False, pad_token_id=1)
        generated += int(out[:, inputs["input_ids"].shape[1]:].numel())
        for row in out[:, inputs["input_ids"].shape[1]:]:
            processor.tokenizer.decode(row, skip_special_tokens=True)
    return {"generated_tokens": generated, "images": len(paths)}


def equal_work(args, folder: pathlib.Path) -> dict:
    """`python -m recap_jax.caption` (configs/cpu_small.py defaults, decode.batch_size = --batch)
    vs HF generate, each a whole process on the same JPEG folder, every caption exactly
    --new-tokens tokens (the checkpoint's EOS is never produced by these random weights: checked
    from the counts)."""
    import shutil
    import tempfile
    work = pathlib.Path(tempfile.mkdtemp(prefix="recap_equal_work_"))
    images_dir = work / "images"
    write_jpegs(images_dir, args.images)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # it would win over the run's compile_cache_dir
    ours_cmd = [sys.executable, "-m", "recap_jax.caption", f"--config={HERE.parent / 'configs' / 'cpu_small.py'}",
                f"--config.model.hf_dir={folder}", f"--config.input.paths={images_dir}",
                f"--config.output.dir={work / 'out'}", f"--config.decode.max_new_tokens={args.new_tokens}",
                f"--config.decode.batch_size={args.batch}", "--config.distributed.mode=off",
                # an empty cache: the cold run compiles and fills it, the warm run reads it
                f"--config.compile_cache_dir={work / 'xla_cache'}", "--config.output.overwrite=true"]
    hf_cmd = [sys.executable, __file__, "--side", "hf_folder", f"--checkpoint={folder}", f"--batch={args.batch}",
              f"--new-tokens={args.new_tokens}", f"--images_dir={images_dir}"]
    walls, cpu, outputs = {}, {}, {}
    for side, cmd in (("ours_cold", ours_cmd), ("hf", hf_cmd), ("ours_warm", ours_cmd)):
        start, used = time.perf_counter(), children_cpu_s()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE.parent)
        walls[side], cpu[side] = time.perf_counter() - start, children_cpu_s() - used
        if proc.returncode:
            sys.exit(f"{side} (equal work) failed:\n{proc.stderr[-4000:]}")
        outputs[side] = proc.stdout
    hf = json.loads(outputs["hf"].split("RESULT", 1)[1])
    shutil.rmtree(work, ignore_errors=True)
    for side in ("ours_cold", "ours_warm"):  # equal work: a record for every image, as HF decodes every one
        summary = summary_line(outputs[side])
        if summary.get("records_total") != args.images or summary.get("failed"):
            sys.exit(f"{side} wrote {summary.get('records_total')} records for {args.images} images "
                     f"({summary.get('failed')} failed): not the same work as HF's {hf['images']} decodes")
    return {"ours_cold_wall_s": walls["ours_cold"], "ours_warm_wall_s": walls["ours_warm"], "hf_wall_s": walls["hf"],
            "ratio_cold": walls["hf"] / walls["ours_cold"], "ratio_warm": walls["hf"] / walls["ours_warm"],
            "ours_generated_tokens": summary_tokens(outputs["ours_cold"]),
            "ours_warm_generated_tokens": summary_tokens(outputs["ours_warm"]),
            "hf_generated_tokens": hf["generated_tokens"],
            "ours_summary": summary_line(outputs["ours_cold"]), "ours_warm_summary": summary_line(outputs["ours_warm"]),
            "images": args.images, "load_average": os.getloadavg(),
            # user + system CPU seconds of each whole process (all its threads)
            "cpu_s": cpu}


def children_cpu_s() -> float:
    import resource
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def summary_line(stdout: str) -> dict:
    """The caption command's printed run summary (an indented JSON object)."""
    lines = stdout.splitlines()
    if "{" not in lines or "}" not in lines:
        return {}
    start = len(lines) - 1 - lines[::-1].index("{")
    return json.loads("\n".join(lines[start:lines.index("}", start) + 1]))


def summary_tokens(stdout: str) -> int:
    return int(summary_line(stdout).get("generated_tokens", -1))


# --- the comparison ------------------------------------------------------------------------------


def stop_tokens(args) -> list[int]:
    return [int(t) for t in args.stop_tokens.split(",") if t.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prefill-batch", type=int, default=4)
    parser.add_argument("--steps-per-sync", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--stop-tokens", default="",
                        help="comma-separated stop token ids for both sides; empty: pick a few giving "
                             "realistic caption lengths")
    parser.add_argument("--checkpoint", default="/tmp/recap_bench_llava_fullvocab")
    parser.add_argument("--out", default=str(HERE / "results" / "caption_vs_hf.json"), help="result JSON")
    parser.add_argument("--equal-work-images", type=int, default=None,
                        help="images of the equal-work whole-process run (default --images; 0 skips it)")
    parser.add_argument("--side", choices=["hf", "ours", "hf_folder"], help=argparse.SUPPRESS)
    parser.add_argument("--images_dir", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.side == "hf":
        print("RESULT" + json.dumps(run_hf(args.checkpoint, args.images, args.batch, args.new_tokens,
                                           stop_tokens(args))))
        return
    if args.side == "hf_folder":
        print("RESULT" + json.dumps(run_hf_folder(args.checkpoint, args.images_dir, args.batch, args.new_tokens)))
        return
    if args.side == "ours":
        print("RESULT" + json.dumps(run_ours(args.checkpoint, args.images, args.batch, args.new_tokens,
                                             args.prefill_batch, args.steps_per_sync, stop_tokens(args))))
        return

    folder = pathlib.Path(args.checkpoint)
    tokenizer_file = folder / "tokenizer.json"
    if not (folder / "config.json").exists() or not tokenizer_file.exists() or \
            len(json.loads(tokenizer_file.read_text())["model"]["vocab"]) < BENCH_CONFIG["vocab_size"]:
        build_checkpoint(folder)  # (again: a folder from before the whole-vocabulary tokenizer)
    sides = {}
    stop = []
    for side in ("ours", "hf"):  # ours first: it picks the stop token HF then uses
        cmd = [sys.executable, __file__, "--side", side, *sys.argv[1:], *stop]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
        if proc.returncode:
            sys.exit(f"{side} failed:\n{proc.stderr[-4000:]}")
        sides[side] = json.loads(proc.stdout.split("RESULT", 1)[1])
        if side == "ours":
            stop = ["--stop-tokens", ",".join(map(str, sides["ours"]["stop_ids"]))]
    n_equal = args.images if args.equal_work_images is None else args.equal_work_images
    equal = equal_work(argparse.Namespace(**{**vars(args), "images": n_equal}), folder) if n_equal else None
    report(args, sides, equal)


def report(args, sides: dict, equal: dict | None) -> None:
    from recap_jax.models.config import LlavaConfig
    from recap_jax.models.flops import image_flops, parameter_count
    hf, ours = sides["hf"], sides["ours"]
    n = args.images
    same = sum(a == b for a, b in zip(hf["tokens"], ours["tokens"]))
    config = LlavaConfig.from_json_dict(ours["config"])
    new_tokens = {s: sum(map(len, sides[s]["tokens"])) for s in sides}
    mean_new = new_tokens["ours"] / n
    flops = image_flops(config, ours["prompt_tokens"], int(round(mean_new)))
    peak = ours["matmul_flops"]
    rows = {}
    for s in ("hf", "ours"):
        wall = sides[s]["wall_s"]
        rows[s] = {"images_per_s": n / wall, "generated_tokens_per_s": new_tokens[s] / wall,
                   "prefill_tokens_per_s": n * ours["prompt_tokens"] / wall,
                   "startup_s": sides[s].get("compile_s", sides[s].get("warmup_s")),
                   "peak_rss_mib": sides[s]["peak_rss_mib"], "wall_s": wall}
    ph = ours["phases"]
    prefill_flops = flops.vision + flops.prefill
    decode_step_flops = ph["decode_batch"] * flops.decode / max(mean_new, 1)
    roofline = {
        "params": parameter_count(config), "flops_per_image": flops.total,
        "flops_vision": flops.vision, "flops_prefill": flops.prefill, "flops_decode": flops.decode,
        "dense_matmul_flops_per_s": peak,
        "end_to_end_fraction_of_peak": flops.total * n / ours["wall_s"] / peak,
        "prefill_fraction_of_peak": prefill_flops / ph["prefill_s_per_image"] / peak,
        "decode_fraction_of_peak": decode_step_flops / ph["decode_step_s"] / peak,
    }
    print(f"\n{'':28s}{'HF generate':>14s}{'recap_jax':>14s}{'ours/HF':>10s}")
    for key in ("images_per_s", "generated_tokens_per_s", "prefill_tokens_per_s", "startup_s", "peak_rss_mib", "wall_s"):
        a, b = rows["hf"][key], rows["ours"][key]
        print(f"{key:28s}{a:14.2f}{b:14.2f}{b / a:10.2f}")
    print(f"\nsame greedy tokens: {same}/{n} images; stop tokens {ours['stop_ids']}; mean caption "
          f"{mean_new:.1f} of at most {args.new_tokens} tokens")
    print(f"model: {roofline['params'] / 1e6:.0f}M params; {flops.total / 1e9:.2f} GFLOP/image "
          f"(vision {flops.vision / 1e9:.2f}, prefill {flops.prefill / 1e9:.2f}, decode {flops.decode / 1e9:.2f})")
    print(f"dense f32 matmul: {peak / 1e9:.1f} GFLOP/s; end to end {100 * roofline['end_to_end_fraction_of_peak']:.1f}% "
          f"of it; prefill phase {100 * roofline['prefill_fraction_of_peak']:.1f}%; decode phase (batch "
          f"{ph['decode_batch']}) {100 * roofline['decode_fraction_of_peak']:.1f}%")
    print(f"\nvariable-length captions ({n} images, in-process engines): ours/HF images/s = "
          f"{rows['ours']['images_per_s'] / rows['hf']['images_per_s']:.2f}x")
    if equal:
        print(f"equal work ({equal['images']} JPEGs, every caption {args.new_tokens} tokens, batch {args.batch}, "
              f"whole processes; generated tokens: ours {equal['ours_generated_tokens']}, HF "
              f"{equal['hf_generated_tokens']}): HF generate {equal['hf_wall_s']:.1f} s;\n"
              f"  python -m recap_jax.caption, cold compile cache {equal['ours_cold_wall_s']:.1f} s: "
              f"ours/HF = {equal['ratio_cold']:.2f}x\n"
              f"  python -m recap_jax.caption, warm compile cache {equal['ours_warm_wall_s']:.1f} s: "
              f"ours/HF = {equal['ratio_warm']:.2f}x\n"
              f"  CPU seconds (user + system): HF {equal['cpu_s']['hf']:.1f}, ours cold "
              f"{equal['cpu_s']['ours_cold']:.1f}, warm {equal['cpu_s']['ours_warm']:.1f}\n"
              f"  load average after it (1/5/15 min): {', '.join(f'{x:.2f}' for x in equal['load_average'])}")
    result = {"args": vars(args), "rows": rows, "equal_work": equal, "same_tokens": same, "images": n, "roofline": roofline,
              "phases": ph, "ratio_images_per_s": rows["ours"]["images_per_s"] / rows["hf"]["images_per_s"]}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
