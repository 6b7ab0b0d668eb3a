"""A CLIP model for evaluation, from an evaluation config's `model` fields: a train_clip workdir
(`model.checkpoint`: its config.json + latest params) or a Hugging Face CLIPModel folder
(`model.hf_dir`); and the jitted encoders on the config's mesh."""

from __future__ import annotations

import json
from typing import Any

from absl import logging
from etils import epath

from recap_jax.errors import ConfigError


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
        if cfg.pools_at_eos and tokenizer.eos_id != cfg.eos_token_id:
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


def build_encoders(config):
    """`evaluate.Encoders` for the model of `config.model` on the mesh of `config.mesh`."""
    import jax

    from recap_jax.clip import evaluate, train_step
    from recap_jax.parallel.mesh import make_mesh

    mesh = make_mesh(dict(config.mesh))
    model, params, tokenizer, text_length = load_clip_for_eval(config)
    if text_length > model.cfg.text_context:
        raise ConfigError(f"text_length: {text_length} exceeds the model's {model.cfg.text_context} positions")
    shardings = train_step.clip_param_shardings(model, mesh)
    params = jax.device_put(params, shardings)  # once, placed by logical axes (HF params are numpy)
    return evaluate.make_encoders(model, mesh, params, tokenizer, text_length=text_length,
                                  batch_size=config.batch_size, param_shardings=shardings)
