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
from typing import Any

from collections.abc import Sequence

from absl import logging
from etils import epath
from ml_collections import config_flags

from recap_jax import cli
from recap_jax.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Evaluation config file, e.g. configs/clip_eval.py; fields are overridden "
    "with --config.a.b=value.", lock_config=True)


def load_clip_for_eval(config) -> tuple[Any, Any, Any, int]:
    """(model, params, tokenizer, text_length) from config.model.checkpoint or config.model.hf_dir."""
    import ml_collections

    from recap_jax.clip import data as data_lib, hf_weights, model as model_lib, trainer
    from recap_jax.parallel.mesh import make_mesh

    if bool(config.model.checkpoint) == bool(config.model.hf_dir):
        raise ConfigError("model.checkpoint / model.hf_dir: set exactly one of them")
    if config.model.hf_dir:
        cfg = hf_weights.read_hf_config(config.model.hf_dir, dtype=config.model.dtype)
        tokenizer = data_lib.Tokenizer(config.tokenizer or config.model.hf_dir)
        if not cfg.pool_text_at_argmax and tokenizer.eos_id != cfg.eos_token_id:
            raise ConfigError(f"tokenizer: its EOS id {tokenizer.eos_id} differs from the model's "
                             f"eos_token_id {cfg.eos_token_id}")
        params = hf_weights.load_hf_params(config.model.hf_dir, cfg)
        return model_lib.CLIP(cfg), params, tokenizer, config.text_length or cfg.text_context
    run_config_path = epath.Path(config.model.checkpoint) / "config.json"
    if not run_config_path.exists():
        raise ConfigError(f"model.checkpoint: {config.model.checkpoint} has no config.json (not a train_clip workdir?)")
    run = ml_collections.ConfigDict(json.loads(run_config_path.read_text()))
    tokenizer = data_lib.Tokenizer(config.tokenizer or run.data.tokenizer)
    run.model.dtype = config.model.dtype
    model, _ = trainer.build_model(run.model, tokenizer)
    params, step = trainer.latest_params(config.model.checkpoint, model, make_mesh(dict(config.mesh)))
    logging.info("loaded step %d of %s", step, config.model.checkpoint)
    return model, params, tokenizer, config.text_length or trainer.text_length(run.data)


def run(config) -> dict[str, Any]:
    """Evaluates every configured dataset; returns {dataset: metrics}."""
    import jax

    from recap_jax.clip import evaluate, train_step
    from recap_jax.parallel.mesh import make_mesh

    mesh = make_mesh(dict(config.mesh))
    model, params, tokenizer, text_length = load_clip_for_eval(config)
    if text_length > model.cfg.text_context:
        raise ConfigError(f"text_length: {text_length} exceeds the model's {model.cfg.text_context} positions")
    shardings = train_step.clip_param_shardings(model, mesh)
    params = jax.device_put(params, shardings)  # once, placed by logical axes (HF params are numpy)
    encoders = evaluate.make_encoders(model, mesh, params, tokenizer, text_length=text_length,
                                      batch_size=config.batch_size, param_shardings=shardings)
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
