r"""Zero-shot image<->text retrieval (recall@1/5/10, CLIP_benchmark definitions) of a CLIP model.

    python -m recap_jax.eval_retrieval --config configs/clip_eval.py \
        --config.model.checkpoint=/tmp/clip_tiny \
        --config.datasets.main.folder=/data/coco_karpathy --config.datasets.main.split=test \
        --config.datasets.main.caption_fields=captions/text

The model is either a train_clip workdir (--config.model.checkpoint) or a Hugging Face CLIPModel
folder (--config.model.hf_dir). Datasets are TFDS/ArrayRecord folders with one record per image
and one or more caption fields. See configs/clip_eval.py for every field. Exit status: 0 done,
2 a usage error (one line naming the field or file; --debug for the traceback).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ml_collections import config_flags

from recap_jax import cli
from recap_jax.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Evaluation config file, e.g. configs/clip_eval.py; fields are overridden "
    "with --config.a.b=value.", lock_config=True)


def run(config) -> dict[str, Any]:
    """Evaluates every configured dataset; returns {dataset: metrics}."""
    import jax

    from recap_jax.clip import evaluate, model_loading

    encoders = model_loading.build_encoders(config)
    results: dict[str, Any] = {}
    for name, d in config.datasets.items():
        if not d.folder:
            continue
        metrics = evaluate.evaluate_retrieval(
            encoders, d.folder, split=d.split, caption_fields=[f for f in d.caption_fields.split(",") if f],
            image_field=d.image_field, max_images=d.max_images, field_prefix=f"datasets.{name}")
        results[name] = metrics
        print(f"{name} [{d.folder}:{d.split}] {metrics['num_images']} images, {metrics['num_texts']} texts: "
              f"{evaluate.format_recalls(metrics)}", flush=True)
    z = config.zeroshot
    if z.folder:
        metrics = evaluate.evaluate_zero_shot(
            encoders, z.folder, split=z.split, label_field=z.label_field,
            classnames=[c.strip() for c in z.classnames.split(",") if c.strip()] or None,
            templates=[t for t in z.templates.split("|") if t], image_field=z.image_field,
            max_images=z.max_images)
        results["zeroshot"] = metrics
        print(f"zero-shot [{z.folder}:{z.split}] {metrics['num_images']} images: "
              f"top1 {100 * metrics['top1']:.1f} top5 {100 * metrics['top5']:.1f}", flush=True)
    if not results:
        raise ConfigError("datasets.*.folder / zeroshot.folder: nothing to evaluate; set a folder")
    if config.output and jax.process_index() == 0:
        with open(config.output, "w") as f:
            json.dump(results, f, indent=2)
    return results


def main(argv: Sequence[str]) -> int:
    config = cli.command_config(argv, _CONFIG.value, "configs/clip_eval.py")
    from recap_jax.parallel.distributed import initialize_distributed
    initialize_distributed(config.distributed)
    run(config)
    return 0


if __name__ == "__main__":
    cli.run_config_command(main, __doc__, __name__)
