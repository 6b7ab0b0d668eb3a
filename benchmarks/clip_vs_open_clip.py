"""CLIP training, recap_jax's train step vs open_clip (PyTorch), both float32 on the CPU: equal work
(the same loss curve, step by step) and its speed.

    python benchmarks/clip_vs_open_clip.py [--batch 64] [--steps 6] [--phases] [--open-clip-python PY]

One CLIP architecture, built on both sides from the same numbers (defaults below; every size is a
flag): a ViT image tower (patch 16 at 112 px = 49 patches + CLS, width 256, 6 blocks, 4 heads,
MLP 4x, CLS pooling, LayerNorms pre/post, bias-free projection), a causal text transformer (width
256, 6 blocks, 4 heads, MLP 4x, 32 positions, vocabulary 49,408, pooling at the end-of-text token,
bias-free projection), embedding size 256, a learned temperature; quick_gelu, LayerNorm eps 1e-5;
22.5M parameters (12.6M of them the token embedding), 0.82 GFLOP per sample forward.
The parent asserts that both parameter counts agree within 1%.
Both sides start from the SAME weights: open_clip builds the model (its init, torch seed 0) and
writes it as an open_clip hub folder (`--side init`); ours reads that folder with
`recap_jax.clip.open_clip_weights`. Both follow open_clip_train's cosine schedule (--lr-warmup
steps of warm-up, cosine to 0 over warm-up + timed steps) on the same batches, so their losses must
agree step by step: the parent prints both curves and exits non-zero when they differ by more
than --tolerance (default 1e-4, the parity test's).
- open_clip: `open_clip.model.CLIP(embed_dim, CLIPVisionCfg, CLIPTextCfg, quick_gelu=True)` (its
  default transformer block: `nn.MultiheadAttention`), `open_clip.loss.ClipLoss`, and the update of
  open_clip's training loop (`open_clip_train.train_one_epoch`, fp32 precision): lr from
  `cosine_lr`, zero_grad, forward, loss.backward, clip_grad_norm_(1.0), `torch.optim.AdamW` (param
  groups as open_clip's main: no weight decay on gains/biases/logit_scale), logit_scale clamped to
  [0, log(100)]. torch.set_num_threads(os.cpu_count()).
- ours: the jitted `recap_jax.clip.train_step.make_train_step` step that `recap_jax.train_clip`
  runs (softmax loss over the global batch via shard_map, AdamW with the same b1/b2/eps/lr/weight
  decay groups and schedule, global-norm clipping 1.0, logit_scale clamp), on a mesh over all local
  devices (one CPU device), state donated, batches put on the mesh each step with
  `jax.make_array_from_process_local_data` as the trainer does, metrics fetched once per log
  interval (as the trainer does).
Data: synthetic random images (CLIP-normalised float32) and random token ids with an end-of-text
token at a random position, generated in memory before timing and cycled, so data loading and
augmentation are excluded on BOTH sides. The first --warmup steps (ours: compilation + first run;
open_clip: first-call allocations) are excluded from the timed steps and reported apart (their
losses are on the curves).
Each side runs in its own subprocess (so peak RSS is its own); with --rounds R the sides run
alternately R times each and each side's fastest run is reported (on a shared machine other jobs
only ever slow a run down; every round's s/step is kept in the JSON). The parent prints samples/s, s/step,
first-step time, peak RSS and the ratio ours/open_clip, plus a roofline: model FLOPs per sample
(matmuls incl. attention, training = 3 x forward) against this machine's dense float32 matmul
FLOP/s (a 2048^3 `jnp.dot` / `torch.mm`). With --phases each side also times forward only and
forward+backward (no optimizer) of the same model and loss. The load average is recorded.
Writes benchmarks/results/clip_vs_open_clip.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

from common import dense_matmul_flops, peak_rss_mib  # benchmarks/common.py, beside this script

HERE = pathlib.Path(__file__).resolve().parent
# open_clip_torch is a test dependency of the project: the project's interpreter has it.
DEFAULT_OPEN_CLIP_PYTHON = os.environ.get("OPEN_CLIP_PYTHON", sys.executable)
RECIPE = "python3 -m venv /tmp/ocvenv && /tmp/ocvenv/bin/pip install open_clip_torch"
LR, WD, B1, B2, EPS, CLIP_NORM, SCALE_MAX = 5e-4, 0.1, 0.9, 0.98, 1e-6, 1.0, 100.0



def synthetic_batches(args, n: int = 3) -> list[dict]:
    """`n` batches: normalised float32 images [B, S, S, 3] and tokens [B, L] (1..vocab-2 words,
    EOS = vocab-1 at a random position, 0 = padding after it: EOS is both the first EOS and the
    highest id, so our first-EOS pooling and open_clip's argmax pooling pick the same position)."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        images = rng.standard_normal((args.batch, args.image_size, args.image_size, 3), dtype=np.float32)
        tokens = rng.integers(1, args.vocab - 1, (args.batch, args.context)).astype(np.int32)
        eos = rng.integers(args.context // 4, args.context, args.batch)
        for row, e in enumerate(eos):
            tokens[row, e] = args.vocab - 1
            tokens[row, e + 1:] = 0
        out.append({"image": images, "tokens": tokens,
                    "caption_source": (rng.random(args.batch) < 0.8).astype(np.int8)})
    return out


def forward_flops_per_sample(args) -> dict:
    """Multiply-adds x 2 of one forward pass per sample: dense layers + attention scores/values."""
    def tower(tokens, width, layers):
        dense = 2 * tokens * (4 * width * width + 2 * width * 4 * width)  # qkv+out, MLP (4x)
        attention = 2 * 2 * tokens * tokens * width  # q.k and weights.v
        return layers * (dense + attention) + 2 * width * args.embed_dim  # + projection
    patches = (args.image_size // args.patch) ** 2
    vision = tower(patches + 1, args.vision_width, args.vision_layers) + 2 * patches * 3 * args.patch**2 * args.vision_width
    text = tower(args.context, args.text_width, args.text_layers)
    return {"vision": vision, "text": text, "total": vision + text}


def timed_loop(step, batches, warmup: int, steps: int, sync) -> dict:
    """Runs `warmup` then `steps` steps; `step(batch)` returns something `sync` waits on."""
    start = time.perf_counter()
    out = step(batches[0])
    sync(out)
    first = time.perf_counter() - start
    warm_outs = [step(batches[i % len(batches)]) for i in range(1, warmup)]
    sync(warm_outs)
    times = []
    start = last = time.perf_counter()
    outs, every = [], []
    for i in range(steps):
        outs.append(step(batches[(warmup + i) % len(batches)]))
        if (i + 1) % 10 == 0 or i + 1 == steps:  # the trainer fetches metrics once per log interval
            sync(outs)
            every += outs
            outs = []
        now = time.perf_counter()
        times.append(now - last)
        last = now
    wall = time.perf_counter() - start
    return {"first_step_s": first, "timed_wall_s": wall, "s_per_step": wall / steps,
            "steps": steps, "warmup_steps": warmup, "step_times_s": times,
            "outputs": [out] + warm_outs + every}


# --- our side ----------------------------------------------------------------------------------


def run_ours(args) -> dict:
    import jax
    import jax.numpy as jnp
    import ml_collections

    from recap_jax.clip import loss as loss_lib
    from recap_jax.clip import train_step
    from recap_jax.clip.model import CLIP, count_params
    from recap_jax.parallel.mesh import make_mesh

    from recap_jax.clip import open_clip_weights

    # The weights open_clip's side starts from too (built by open_clip, written by `--side init`).
    cfg, init, _ = open_clip_weights.load_open_clip(args.init_dir, dtype=jnp.float32)
    model = CLIP(cfg)
    t = ml_collections.ConfigDict(dict(
        learning_rate=LR, warmup_steps=args.lr_warmup, num_steps=total_steps(args), end_lr_ratio=0.0, b1=B1,
        b2=B2, eps=EPS, weight_decay=WD, grad_clip_norm=CLIP_NORM))
    tx = train_step.make_optimizer(t)
    lr_fn = train_step.learning_rate_schedule(t)
    mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    _, shardings = train_step.abstract_train_state(model, tx, mesh, 0)
    step_fn = train_step.make_train_step(model, tx, mesh, loss_kind="softmax", accum_steps=1,
                                         logit_scale_max=SCALE_MAX, learning_rate_fn=lr_fn,
                                         state_shardings=shardings)
    state, _ = train_step.create_train_state(model, tx, mesh, 0, init_from=init)
    params = count_params(state.params)
    sharding = train_step.batch_sharding(mesh)
    batches = synthetic_batches(args)
    holder = {"state": state}

    def step(local):
        batch = {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
        holder["state"], metrics = step_fn(holder["state"], batch)
        return metrics

    result = timed_loop(step, batches, args.warmup, args.steps, lambda m: jax.device_get(m))
    result["losses"] = [float(m["loss"]) for m in jax.device_get(result.pop("outputs"))]
    result["final_loss"] = result["losses"][-1]
    if args.phases:  # forward only, forward+backward (no optimizer): same model, same loss
        contrastive = loss_lib.sharded_contrastive_loss("softmax", mesh, train_step.BATCH_AXES)

        def loss_fn(p, images, tokens):
            img, txt = model.apply({"params": p}, images, tokens)
            return contrastive(img, txt, p["logit_scale"])
        fwd = jax.jit(loss_fn)
        fwd_bwd = jax.jit(jax.value_and_grad(loss_fn))
        p = holder["state"].params
        img, tok = jnp.asarray(batches[0]["image"]), jnp.asarray(batches[0]["tokens"])
        result["phases"] = {}
        for name, fn in (("forward", fwd), ("forward_backward", fwd_bwd)):
            jax.block_until_ready(fn(p, img, tok))
            start = time.perf_counter()
            for _ in range(args.phase_reps):
                out = fn(p, img, tok)
            jax.block_until_ready(out)
            result["phases"][name] = (time.perf_counter() - start) / args.phase_reps
    result.update(params=params, peak_rss_mib=peak_rss_mib(), devices=str(jax.devices()),
                  matmul_flops_per_s=dense_matmul_flops(), versions={"jax": jax.__version__})
    return result


# --- open_clip side ----------------------------------------------------------------------------


def open_clip_model(args):
    """The benchmark's CLIP as open_clip builds it (its own init, torch seed 0)."""
    import torch
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    return CLIP(
        args.embed_dim,
        CLIPVisionCfg(layers=args.vision_layers, width=args.vision_width, head_width=args.head_dim,
                      mlp_ratio=4.0, patch_size=args.patch, image_size=args.image_size),
        CLIPTextCfg(context_length=args.context, vocab_size=args.vocab, width=args.text_width,
                    heads=args.text_width // args.head_dim, layers=args.text_layers, mlp_ratio=4.0),
        quick_gelu=True)


def write_init(args) -> dict:
    """The starting weights of both sides, as an open_clip hub folder (open_clip_config.json +
    open_clip_model.safetensors): ours reads it with `recap_jax.clip.open_clip_weights`."""
    from safetensors.torch import save_file

    os.makedirs(args.init_dir, exist_ok=True)
    v, t = dict(image_size=args.image_size, layers=args.vision_layers, width=args.vision_width,
                head_width=args.head_dim, mlp_ratio=4.0, patch_size=args.patch), \
        dict(context_length=args.context, vocab_size=args.vocab, width=args.text_width,
             heads=args.text_width // args.head_dim, layers=args.text_layers, mlp_ratio=4.0)
    with open(os.path.join(args.init_dir, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": {"embed_dim": args.embed_dim, "quick_gelu": True, "vision_cfg": v, "text_cfg": t}}, f)
    save_file({k: v.contiguous() for k, v in open_clip_model(args).state_dict().items()},
              os.path.join(args.init_dir, "open_clip_model.safetensors"))
    return {"init_dir": args.init_dir}


def total_steps(args) -> int:
    """Steps each side runs (the cosine schedule's length): warm-up steps + timed steps."""
    return args.warmup + args.steps


def open_clip_lr(args, step: int) -> float:
    """open_clip_train.scheduler.cosine_lr (its module is not in every open_clip install)."""
    import math

    if step < args.lr_warmup:
        return LR * (step + 1) / args.lr_warmup
    e, es = step - args.lr_warmup, total_steps(args) - args.lr_warmup
    return 0.5 * (1 + math.cos(math.pi * e / es)) * LR


def run_open_clip(args) -> dict:
    import math

    import open_clip
    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(os.cpu_count() or 2)
    model = open_clip_model(args)
    model.load_state_dict(load_file(os.path.join(args.init_dir, "open_clip_model.safetensors")))
    model.train()
    params = sum(p.numel() for p in model.parameters())
    # open_clip_train/main.py: no weight decay on gains, biases and logit_scale.
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    named = list(model.named_parameters())
    groups = [{"params": [p for n, p in named if exclude(n, p) and p.requires_grad], "weight_decay": 0.0},
              {"params": [p for n, p in named if not exclude(n, p) and p.requires_grad], "weight_decay": WD}]
    optimizer = torch.optim.AdamW(groups, lr=LR, betas=(B1, B2), eps=EPS)
    loss_fn = open_clip.loss.ClipLoss()
    batches = [{"image": torch.from_numpy(b["image"]).permute(0, 3, 1, 2).contiguous(),
                "tokens": torch.from_numpy(b["tokens"]).long()} for b in synthetic_batches(args)]

    counter = [0]

    def step(batch):  # open_clip_train.train.train_one_epoch, accum_freq=1, fp32
        for group in optimizer.param_groups:  # the per-step lr scheduler call
            group["lr"] = open_clip_lr(args, counter[0])
        counter[0] += 1
        optimizer.zero_grad()
        image_features, text_features, logit_scale = model(batch["image"], batch["tokens"])
        total_loss = loss_fn(image_features, text_features, logit_scale)
        total_loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM, norm_type=2.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(SCALE_MAX))
        return total_loss.detach()

    result = timed_loop(step, batches, args.warmup, args.steps, lambda _: None)
    result["losses"] = [float(x) for x in result.pop("outputs")]
    result["final_loss"] = result["losses"][-1]
    if args.phases:
        b = batches[0]

        def fwd():
            with torch.no_grad():
                return loss_fn(*model(b["image"], b["tokens"]))

        def fwd_bwd():
            model.zero_grad()
            loss = loss_fn(*model(b["image"], b["tokens"]))
            loss.backward()
            return loss
        result["phases"] = {}
        for name, fn in (("forward", fwd), ("forward_backward", fwd_bwd)):
            fn()
            start = time.perf_counter()
            for _ in range(args.phase_reps):
                fn()
            result["phases"][name] = (time.perf_counter() - start) / args.phase_reps
    a = torch.randn(2048, 2048)
    torch.mm(a, a)
    start = time.perf_counter()
    for _ in range(10):
        torch.mm(a, a)
    result.update(params=params, peak_rss_mib=peak_rss_mib(), threads=torch.get_num_threads(),
                  matmul_flops_per_s=2 * 2048**3 * 10 / (time.perf_counter() - start),
                  versions={"torch": torch.__version__, "open_clip": open_clip.__version__})
    return result


# --- the comparison ------------------------------------------------------------------------------


def run_side(side: str, python: str, argv: list[str]) -> dict:
    cmd = [python, __file__, "--side", side, *argv]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    if side == "open_clip":  # its own venv: do not leak the project's site-packages into it
        env.pop("PYTHONPATH", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode or "RESULT" not in proc.stdout:
        sys.exit(f"{side} side failed ({' '.join(cmd)}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.split("RESULT", 1)[1])


def check_open_clip_python(python: str) -> None:
    probe = subprocess.run([python, "-c", "import open_clip, torch"], capture_output=True, text=True) \
        if pathlib.Path(python).exists() else None
    if probe is None or probe.returncode:
        why = "does not exist" if probe is None else f"cannot import open_clip/torch:\n{probe.stderr.strip()[-800:]}"
        sys.exit(f"--open-clip-python {python} {why}\n"
                 f"Create that interpreter with:  {RECIPE}\n"
                 f"or point --open-clip-python (or $OPEN_CLIP_PYTHON) at a Python with open_clip_torch installed.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64, help="global batch (both sides)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compile / first call)")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--vision-width", type=int, default=256)
    parser.add_argument("--vision-layers", type=int, default=6)
    parser.add_argument("--text-width", type=int, default=256)
    parser.add_argument("--text-layers", type=int, default=6)
    parser.add_argument("--head-dim", type=int, default=64, help="heads = width / head_dim (both towers)")
    parser.add_argument("--context", type=int, default=32, help="text positions (= token length)")
    parser.add_argument("--vocab", type=int, default=49408)
    parser.add_argument("--embed-dim", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the two sides alternately this many times; report each side's fastest run")
    parser.add_argument("--phases", action="store_true", help="also time forward and forward+backward")
    parser.add_argument("--phase-reps", type=int, default=3)
    parser.add_argument("--only", choices=["ours", "open_clip"], help="run one side (no ratio, no JSON)")
    parser.add_argument("--open-clip-python", default=DEFAULT_OPEN_CLIP_PYTHON,
                        help="a Python with open_clip_torch (default $OPEN_CLIP_PYTHON or /tmp/ocvenv/bin/python)")
    parser.add_argument("--out", default=str(HERE / "results" / "clip_vs_open_clip.json"))
    parser.add_argument("--lr-warmup", type=int, default=2, help="learning-rate warm-up steps (both sides)")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest per-step loss difference accepted (the parity test's, float32)")
    parser.add_argument("--init-dir", default="", help="where the shared starting weights go (default: a temp folder)")
    parser.add_argument("--side", choices=["ours", "open_clip", "init"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.side:
        fn = {"ours": run_ours, "open_clip": run_open_clip, "init": write_init}[args.side]
        print("RESULT" + json.dumps(fn(args)))
        return

    check_open_clip_python(args.open_clip_python)  # it also writes the shared starting weights
    with tempfile.TemporaryDirectory() as tmp:
        args.init_dir = args.init_dir or os.path.join(tmp, "init")
        argv = [a for a in sys.argv[1:] if not a.startswith("--init-dir")] + ["--init-dir", args.init_dir]
        run_side("init", args.open_clip_python, argv)
        compare(args, argv)


def compare(args, argv: list[str]) -> None:
    sides = {}
    runs: dict[str, list[float]] = {}
    for _ in range(args.rounds):  # alternate the sides; keep each side's fastest run
        for side in ("ours", "open_clip"):
            if args.only and side != args.only:
                continue
            python = sys.executable if side == "ours" else args.open_clip_python
            result = run_side(side, python, argv)
            runs.setdefault(side, []).append(result["s_per_step"])
            if side not in sides or result["s_per_step"] < sides[side]["s_per_step"]:
                sides[side] = result
    for side, r in sides.items():
        r["s_per_step_of_each_round"] = runs[side]
    report(args, sides)


def report(args, sides: dict) -> None:
    flops = forward_flops_per_sample(args)
    train_flops = 3 * flops["total"]
    names = {"open_clip": "open_clip", "ours": "recap_jax"}
    rows = {}
    for s, r in sides.items():
        rows[s] = {"samples_per_s": args.batch / r["s_per_step"], "s_per_step": r["s_per_step"],
                   "first_step_s": r["first_step_s"], "peak_rss_mib": r["peak_rss_mib"],
                   "achieved_gflop_per_s": train_flops * args.batch / r["s_per_step"] / 1e9,
                   "matmul_gflop_per_s": r["matmul_flops_per_s"] / 1e9}
        for k, v in r.get("phases", {}).items():
            rows[s][f"{k}_s"] = v
    order = [s for s in ("open_clip", "ours") if s in rows]
    print(f"\n{'':24s}" + "".join(f"{names[s]:>14s}" for s in order) + ("    ours/open_clip" if len(order) == 2 else ""))
    for key in rows[order[0]]:
        vals = [rows[s].get(key, float("nan")) for s in order]
        line = f"{key:24s}" + "".join(f"{v:14.3f}" for v in vals)
        if len(order) == 2:
            line += f"{vals[1] / vals[0]:14.2f}"
        print(line)
    params = {s: sides[s]["params"] for s in order}
    print(f"\nparameters: " + ", ".join(f"{names[s]} {params[s]:,}" for s in order))
    for s in order:
        if len(sides[s].get("s_per_step_of_each_round", [])) > 1:
            print(f"{names[s]} s/step of each round: " + ", ".join(f"{v:.3f}" for v in sides[s]["s_per_step_of_each_round"]))
    print(f"batch {args.batch}, {args.steps} timed steps after {args.warmup} warm-up; "
          f"model {flops['total'] / 1e9:.3f} GFLOP/sample forward (vision {flops['vision'] / 1e9:.3f}, "
          f"text {flops['text'] / 1e9:.3f}), {train_flops * args.batch / 1e9:.1f} GFLOP/step training (3x)")
    for s in order:
        print(f"{names[s]}: final loss {sides[s]['final_loss']:.4f}; {sides[s]['versions']}")
    if len(order) < 2:
        return
    # Equal work: the same start, batches, schedule and update give the same losses, step by step.
    curves = {s: np.array(sides[s]["losses"]) for s in order}
    diff = np.abs(curves["ours"] - curves["open_clip"])
    print(f"\nloss per step (both start from open_clip's init; lr warm-up {args.lr_warmup}, cosine over "
          f"{total_steps(args)} steps):\n{'step':>6s}{'open_clip':>12s}{'recap_jax':>12s}{'|diff|':>10s}")
    for i, (a, b) in enumerate(zip(curves["open_clip"], curves["ours"])):
        print(f"{i:6d}{a:12.5f}{b:12.5f}{abs(a - b):10.1e}")
    print(f"largest difference {diff.max():.1e} (tolerance {args.tolerance:.0e})")
    if abs(params["ours"] - params["open_clip"]) > 0.01 * params["open_clip"]:
        sys.exit(f"parameter counts differ by more than 1%: {params} -- not the same architecture")
    ratio = rows["ours"]["samples_per_s"] / rows["open_clip"]["samples_per_s"]
    print(f"\nsamples/s ours/open_clip: {ratio:.2f}x")
    result = {"args": {k: v for k, v in vars(args).items() if k not in ("side", "out")},
              "params": params, "forward_flops_per_sample": flops, "rows": rows, "ratio_samples_per_s": ratio,
              "sides": sides, "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}
    out = pathlib.Path(args.out)
    out.parent.mkdir(exist_ok=True)
    result["loss_curves"] = {s: curves[s].tolist() for s in order}
    result["loss_max_abs_diff"] = float(diff.max())
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    if diff.max() > args.tolerance:
        sys.exit(f"the loss curves differ by {diff.max():.2e} > {args.tolerance:.0e}: not the same training")


if __name__ == "__main__":
    main()
