"""Padding share of the fine-tuning batches, without and with length-grouped batches.

    python benchmarks/finetune_padding.py [--config configs/finetune_cpu.py] [--batches 40] [--group 8]

Builds the config's batches exactly as the finetune job does (`finetuning.batches.BatchMaker`, the
config's reader, tokenizer, buckets and batch size; the tiny demo model is built if the config
asks for it) and counts padded positions / all positions of the token arrays, for
`data.length_group_batches` = 1 (off) and = --group, each with the config's `data.length_buckets`
and with buckets every 8 tokens. Writes benchmarks/results/finetune_padding.json (--out).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import tempfile

HERE = pathlib.Path(__file__).resolve().parent


def padding_share(maker, batches: int) -> float:
    """Padded positions / all positions of the token arrays of the first `batches` batches."""
    from recap_jax.finetuning.batches import Position

    padded = total = 0
    stream = maker.batches(Position())
    for _ in range(batches):
        batch = next(stream)
        padded += batch.arrays["tokens"].size - batch.num_tokens
        total += batch.arrays["tokens"].size
    return padded / total


def varied_json(out: pathlib.Path, demo_json: str, n: int) -> str:
    """n examples over the demo JSON's images whose answers have 2 to 40 words (a spread of lengths)."""
    import numpy as np

    from recap_jax.captioning.tiny_demo import WORDS

    demo = json.loads(pathlib.Path(demo_json).read_text())
    rng = np.random.default_rng(0)
    entries = []
    for i in range(n):
        base = demo[i % len(demo)]
        answer = " ".join(rng.choice(WORDS[:60], size=int(rng.integers(2, 41))))
        entries.append({**base, "id": f"varied{i}", "conversations": [base["conversations"][0],
                                                                       {"from": "gpt", "value": answer}]})
    out.write_text(json.dumps(entries))
    return str(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(HERE.parent / "configs" / "finetune_cpu.py"))
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--varied", type=int, default=0,
                        help=">0: also this many LLaVA JSON examples on the demo images with 2-40 word answers")
    parser.add_argument("--out", default=str(HERE / "results" / "finetune_padding.json"))
    args = parser.parse_args()

    from etils import epath

    from recap_jax.conversion import bundle
    from recap_jax.captioning.tiny_demo import build_tiny_checkpoint
    from recap_jax.finetuning.batches import BatchMaker, FailureLog
    from recap_jax.finetuning.conversation import ConversationEncoder
    from recap_jax.finetuning.records import make_reader

    spec_ = importlib.util.spec_from_file_location("finetune_config", args.config)
    module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(module)
    c = module.get_config()
    if c.model.build_tiny_if_missing and not epath.Path(c.model.checkpoint).exists():
        build_tiny_checkpoint(c.model.checkpoint)
    spec, _ = bundle.read_converted_spec(c.model.checkpoint, c.model.tokenizer or None)
    d = c.data
    result = {"config": args.config, "batches": args.batches, "global_batch_size": c.train.global_batch_size,
              "max_length": d.max_length}
    with tempfile.TemporaryDirectory() as work:
        data_sets = {"config_data": d.path}
        if args.varied:
            data_sets["varied_answers"] = varied_json(pathlib.Path(work) / "varied.json", d.path, args.varied)
        for data_name, path in data_sets.items():
            for buckets_name, buckets in (("config_buckets", tuple(d.length_buckets)),
                                          ("buckets_every_8", tuple(range(8, d.max_length, 8)))):
                for group in (1, args.group):
                    reader = make_reader(d.format, path, d.image_folder, d.prompt, d.caption_field, d.shuffle,
                                         d.seed)
                    maker = BatchMaker(reader, ConversationEncoder(spec.prompt_encoder()), spec.image,
                                       global_batch_size=c.train.global_batch_size, max_length=d.max_length,
                                       length_buckets=buckets, failures=FailureLog(epath.Path(work), 0),
                                       num_workers=d.num_workers, group_batches=group, seed=d.seed)
                    share = padding_share(maker, args.batches)
                    result[f"{data_name}_{buckets_name}_group{group}"] = round(share, 4)
    print(json.dumps(result, indent=1))
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
