"""A CLIP model from config fields: the training config's `model` (sizes, or a Hugging Face
CLIPModel folder), a train_clip workdir (its config.json + latest params, checksum-verified), and
the jitted encoders an evaluation config asks for."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import ml_collections
from absl import logging
from etils import epath
from flax import linen as nn

from recap_jax.clip import data as data_lib, evaluate, hf_weights, model as model_lib, train_step
from recap_jax.errors import ConfigError
from recap_jax.parallel.mesh import make_mesh
from recap_jax.training import checkpoints


def text_length(data_cfg) -> int:
    """Token length of every text batch: long enough for the longer of the two caption kinds."""
    return max(data_cfg.re_caption_max_tokens, data_cfg.org_caption_max_tokens)


def build_model(model_cfg: ml_collections.ConfigDict, tokenizer: data_lib.Tokenizer):
    """(CLIP module, HF params or None) from `config.model`; vocab/EOS come from the tokenizer."""
    if model_cfg.hf_dir:
        cfg = hf_weights.read_hf_config(model_cfg.hf_dir, dtype=model_cfg.dtype, remat=model_cfg.remat)
        if tokenizer.vocab_size > cfg.vocab_size:
            raise ConfigError(f"data.tokenizer: {tokenizer.vocab_size} tokens do not fit the vocabulary "
                             f"({cfg.vocab_size}) of model.hf_dir={model_cfg.hf_dir}")
        if cfg.pools_at_eos and tokenizer.eos_id != cfg.eos_token_id:
            raise ConfigError(f"data.tokenizer: its EOS id {tokenizer.eos_id} differs from the eos_token_id "
                             f"{cfg.eos_token_id} of model.hf_dir (text would be pooled at the wrong token)")
        # HF CLIP has no logit bias; a sigmoid-loss fine-tune adds one (initialised from the config).
        cfg = dataclasses.replace(cfg, use_logit_bias=bool(model_cfg.use_logit_bias),
                                  init_logit_bias=float(model_cfg.init_logit_bias))
        return model_lib.CLIP(cfg), hf_weights.load_hf_params(model_cfg.hf_dir, cfg)
    merged = dict(model_cfg.to_dict())
    if not merged["vocab_size"]:  # 0: exactly the tokenizer's vocabulary
        merged["vocab_size"] = tokenizer.vocab_size
    if merged["vocab_size"] < tokenizer.vocab_size:
        raise ConfigError(f"model.vocab_size: {merged['vocab_size']} is smaller than the tokenizer's "
                         f"{tokenizer.vocab_size} tokens")
    merged["eos_token_id"] = tokenizer.eos_id
    return model_lib.CLIP(model_lib.config_from_dict(merged)), None


def latest_params(workdir: str, model: model_lib.CLIP, mesh, field: str = "model.checkpoint") -> tuple[Any, int]:
    """Params (sharded on `mesh`) of the latest checkpoint under `workdir`, and its step.

    Only the params are read (partial restore): the optimizer state, twice their size, stays on disk."""
    shardings = train_step.clip_param_shardings(model, mesh)
    shapes = nn.unbox(jax.eval_shape(lambda: model_lib.init_params(model, jax.random.key(0))))
    target = {"params": jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                     shapes, shardings)}
    tree, step = checkpoints.restore_params(workdir, target, field)
    return tree["params"], step


def load_clip_for_eval(config) -> tuple[Any, Any, Any, int]:
    """(model, params, tokenizer, text_length) from config.model.checkpoint or config.model.hf_dir."""
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
    model, _ = build_model(run.model, tokenizer)
    params, step = latest_params(config.model.checkpoint, model, make_mesh(dict(config.mesh)))
    logging.info("loaded step %d of %s", step, config.model.checkpoint)
    return model, params, tokenizer, config.text_length or text_length(run.data)


def build_encoders(config) -> evaluate.Encoders:
    """`evaluate.Encoders` for the model of `config.model` on the mesh of `config.mesh`."""
    mesh = make_mesh(dict(config.mesh))
    model, params, tokenizer, length = load_clip_for_eval(config)
    if length > model.cfg.text_context:
        raise ConfigError(f"text_length: {length} exceeds the model's {model.cfg.text_context} positions")
    shardings = train_step.clip_param_shardings(model, mesh)
    params = jax.device_put(params, shardings)  # once, placed by logical axes (HF params are numpy)
    return evaluate.make_encoders(model, mesh, params, tokenizer, text_length=length,
                                  batch_size=config.batch_size, param_shardings=shardings)
