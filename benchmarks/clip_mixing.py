r"""The toy caption-mixing table of docs/clip.md: the tiny CLIP trained at several p (the paper's
probability of the ORIGINAL caption) and the concat variant, evaluated on each caption kind.

    python -m recap_jax.clip.synthetic --out /tmp/shapes
    python benchmarks/clip_mixing.py --data /tmp/shapes --workdir /tmp/clip_mixing --steps 400

Each run: configs/clip_tiny.py, same data and seed, `--steps` steps; then held-out retrieval
(96 images) with the recaptions only and with the alt-text only. The realised share of original
captions is the mean of the logged `org_caption_fraction` rows (equal log intervals).
Writes benchmarks/results/clip_mixing.json and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = (("p = 1.0 (alt-text only)", 1.0, "sample"), ("p = 0.8 (the paper's choice)", 0.8, "sample"),
            ("p = 0.0 (recaptions only)", 0.0, "sample"),
            ("concat", 0.8, "concat"))


def _load_config(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="output folder of recap_jax.clip.synthetic")
    parser.add_argument("--workdir", required=True, help="one run folder per setting goes here")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "clip_mixing.json"))
    args = parser.parse_args()

    from recap_jax.clip.retrieval_job import evaluate_config
    from recap_jax.clip import trainer

    rows = []
    for label, p, mix in SETTINGS:
        workdir = os.path.join(args.workdir, f"{mix}_{p}")
        config = _load_config("clip_tiny")
        config.workdir = workdir
        config.data.folders = os.path.join(args.data, "train")
        config.data.tokenizer = os.path.join(args.data, "tokenizer")
        config.data.org_caption_prob, config.data.caption_mix = p, mix
        config.train.num_steps = args.steps
        start = time.time()
        trainer.train(config)
        seconds = time.time() - start
        logged = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
        logged = [r for r in logged if "org_caption_fraction" in r]
        row = {"setting": label, "org_caption_prob": p, "caption_mix": mix, "train_seconds": seconds,
               "realised_org_share": sum(r["org_caption_fraction"] for r in logged) / len(logged),
               "realised_concat_share": sum(r["concat_fraction"] for r in logged) / len(logged),
               "final_loss": logged[-1]["loss"]}
        for kind in ("re_caption", "org_caption"):
            ev = _load_config("clip_eval")
            ev.model.checkpoint = workdir
            ev.datasets.main.folder, ev.datasets.main.split = os.path.join(args.data, "heldout"), "train"
            ev.datasets.main.caption_fields = kind
            row[kind] = evaluate_config(ev)["main"]
        rows.append(row)
        with open(args.out, "w") as f:  # after every run, so a cut-short measurement keeps its rows
            json.dump({"steps": args.steps, "rows": rows}, f, indent=1)
        print(_table_line(row), flush=True)

    print("| training captions | realised share of originals | eval on re_caption (t->i R@1 / R@5) | "
          "eval on org_caption (t->i R@1 / R@5) |")
    print("|---|---|---|---|")
    for r in rows:
        print(_table_line(r))


def _table_line(r: dict) -> str:
    share = (f"{r['realised_org_share']:.3f}" if r["caption_mix"] == "sample"
             else f"{r['realised_concat_share']:.3f} concatenated")
    cells = [f"{100 * r[k]['text_to_image/R@1']:.1f} / {100 * r[k]['text_to_image/R@5']:.1f}"
             for k in ("re_caption", "org_caption")]
    return f"| {r['setting']} | {share} | {cells[0]} | {cells[1]} |"


if __name__ == "__main__":
    main()
