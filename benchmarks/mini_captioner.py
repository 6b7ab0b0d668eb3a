r"""The miniature paper's captioner alone: world -> fine-tune -> caption the held-out scenes -> how
often each attribute of the main object is named (docs/mini_paper.md, "Why shapes were missed").

    python benchmarks/mini_captioner.py NAME [section.field=value ...]
    python benchmarks/mini_captioner.py hq8k world.num_hq=8000 captioner.patch_size=7 \
        captioner.max_length=96 captioner.prompt_bucket=80

Starts from configs/mini_paper.py at its `--quick` size with the overrides given; writes under
/tmp/mini_captioner/NAME and appends one JSON line to /tmp/mini_captioner/results.jsonl.
"""

import ast
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs import mini_paper  # noqa: E402
from recap_jax.clip import mini_world as world  # noqa: E402
from recap_jax.mini_paper import run, stages, world_files  # noqa: E402

OUT = "/tmp/mini_captioner"


def main(name: str, overrides: list[str]) -> None:
    c = run.apply_quick(mini_paper.get_config())
    for item in overrides:
        key, value = item.split("=", 1)
        section, field = key.split(".")
        c[section][field] = value if isinstance(c[section][field], str) else ast.literal_eval(value)
    w = c.world
    paths = world_files.write_world(os.path.join(OUT, f"world_{w.num_hq}"), num_web=32, num_hq=w.num_hq,
                                    num_eval=w.num_eval, image_size=w.image_size, seed=c.seed,
                                    per_shard=w.per_shard, rates=world.AltTextRates())
    start = time.time()
    checkpoint = stages.finetune_captioner(c, paths["hq"], os.path.join(OUT, name, "captioner"))
    finetune_s = time.time() - start
    captions_dir = os.path.join(OUT, name, "recaptioned_eval")
    stages.recaption(c, checkpoint, paths["eval"], captions_dir)
    captions = stages.read_captions(captions_dir)
    accuracy = run.caption_accuracy(captions, world_files.read_truth(paths["eval"]))
    result = {"name": name, "overrides": overrides, "accuracy": accuracy, "finetune_s": finetune_s,
              "load_average": os.getloadavg()}
    print(json.dumps(result), flush=True)
    with open(os.path.join(OUT, "results.jsonl"), "a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
