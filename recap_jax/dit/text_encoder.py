"""The DiT's frozen text encoder: the project's CLIP text tower, from a `train_clip` workdir or a
Hugging Face `CLIPModel` / `CLIPTextModel(WithProjection)` folder.

It gives the DiT two things per caption: the token features (the tower's final LayerNorm output,
read with flax's `capture_intermediates` so the tower's code stays the one CLIP trains) with a
mask over the tokens up to the end-of-text token, for the cross-attention; and the pooled
embedding (the tower's output; for a `CLIPTextModel` without projection, the pooled state), for
adaLN. Dropping a caption means encoding the empty text.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from recap_jax.clip import hf_weights, model_loading
from recap_jax.clip.data import Tokenizer
from recap_jax.clip.model import CLIPConfig, TextTower, TowerConfig
from recap_jax.conversion.rules import params_from_plan, plan_params
from recap_jax.conversion.tensors import CheckpointTensors
from recap_jax.errors import ConfigError, ConversionError
from recap_jax.models.layers import dtype_from_name
from recap_jax.parallel.mesh import make_mesh
from recap_jax.training import checkpoints


RUN_CONFIG = "config.json"  # what the training loop writes into every workdir


@dataclasses.dataclass(frozen=True)
class TextEncoder:
    """A CLIP text tower with its (frozen) params and tokenizer."""
    cfg: CLIPConfig
    params: Any
    tokenizer: Tokenizer
    max_tokens: int

    @property
    def width(self) -> int:
        return self.cfg.text.width

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    def tokenize(self, texts: list[str]) -> np.ndarray:
        """int32 [len(texts), max_tokens]."""
        return self.tokenizer(texts, self.max_tokens)

    def encode(self, params: Any, tokens: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(token features [B, L, width] f32, mask [B, L] bool, pooled [B, embed_dim] f32); jit-able."""
        is_final_norm = lambda module, _: module.name == "final_layer_norm"  # noqa: E731
        pooled, state = TextTower(self.cfg).apply({"params": params}, tokens, capture_intermediates=is_final_norm)
        features = state["intermediates"]["final_layer_norm"]["__call__"][0]
        if self.cfg.pool_text_at_argmax:  # where the tower pools: the text ends there
            end = jnp.argmax(tokens, axis=-1)
        else:
            end = jnp.argmax(tokens == self.cfg.eos_token_id, axis=-1)
        mask = jnp.arange(tokens.shape[1])[None] <= end[:, None]
        return (jax.lax.stop_gradient(features.astype(jnp.float32)), mask,
                jax.lax.stop_gradient(pooled.astype(jnp.float32)))


def load_text_encoder(path: str, *, max_tokens: int = 77, tokenizer: str = "", dtype: str = "float32",
                      mesh=None) -> TextEncoder:
    """`text.encoder`: a train_clip workdir (config.json + checkpoints/) or a HF CLIP folder."""
    if not path or not os.path.isdir(path):
        raise ConfigError(f"text.encoder: {path!r} is not a folder (a train_clip workdir or a HF CLIP folder)")
    if os.path.isfile(os.path.join(path, RUN_CONFIG)) and checkpoints.step_folders(path):
        cfg, params, tok_dir = _from_workdir(path, tokenizer, dtype, mesh)
    else:
        cfg, params = _from_hf(path, dtype)
        tok_dir = tokenizer or path
    tok = Tokenizer(tok_dir)
    if not cfg.pool_text_at_argmax and tok.eos_id != cfg.eos_token_id:
        raise ConfigError(f"text.tokenizer: its EOS id {tok.eos_id} differs from the text encoder's "
                          f"{cfg.eos_token_id} ({tok_dir})")
    if not 2 <= max_tokens <= cfg.text_context:
        raise ConfigError(f"text.max_tokens: {max_tokens} is not in [2, {cfg.text_context}] (the encoder's positions)")
    return TextEncoder(cfg, jax.tree.map(jnp.asarray, params), tok, int(max_tokens))


def _from_workdir(workdir: str, tokenizer: str, dtype: str, mesh) -> tuple[CLIPConfig, Any, str]:
    """The text tower of a train_clip workdir's newest checkpoint (params only, checksum-verified)."""
    with open(os.path.join(workdir, RUN_CONFIG)) as f:
        run = ml_collections.ConfigDict(json.load(f))
    tok_dir = tokenizer or run.data.tokenizer
    run.model.dtype = dtype
    model, _ = model_loading.build_model(run.model, Tokenizer(tok_dir))
    params, _ = model_loading.latest_params(workdir, model, mesh or make_mesh({"data": -1}), field="text.encoder")
    return model.cfg, jax.device_get(params["text_tower"]), tok_dir


def _hf_config(hf_dir: str, dtype: str) -> CLIPConfig:
    """The text half of a CLIPModel's config, or a CLIPTextModel's own."""
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"text.encoder: {hf_dir} has no config.json (a HF CLIP folder or a train_clip workdir)")
    with open(path) as f:
        hf = json.load(f)
    if hf.get("model_type") in ("clip", None) and "text_config" in hf:
        return hf_weights.read_hf_config(hf_dir, dtype=dtype)
    if hf.get("model_type") != "clip_text_model":
        raise ConfigError(f"text.encoder: {hf_dir} holds a {hf.get('model_type')!r} model, not a CLIP text model")
    act = hf.get("hidden_act", "quick_gelu")
    eos = int(hf.get("eos_token_id", 49407))
    return CLIPConfig(
        text=TowerConfig(int(hf.get("hidden_size", 512)), int(hf.get("num_hidden_layers", 12)),
                         int(hf.get("num_attention_heads", 8)), int(hf.get("intermediate_size", 2048))),
        vocab_size=int(hf.get("vocab_size", 49408)), text_context=int(hf.get("max_position_embeddings", 77)),
        embed_dim=int(hf.get("projection_dim", 512)), eos_token_id=eos, pool_text_at_argmax=(eos == 2),
        activation={"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}.get(act, act),
        layer_norm_eps=float(hf.get("layer_norm_eps", 1e-5)), dtype=dtype_from_name(dtype))


def _is_clip_model(hf_dir: str) -> bool:
    with open(os.path.join(hf_dir, "config.json")) as f:
        return "text_config" in json.load(f)


def _from_hf(hf_dir: str, dtype: str) -> tuple[CLIPConfig, Any]:
    """Text-tower params from safetensors; without `text_projection` the pooled state itself is the
    embedding (an identity projection)."""
    cfg = _hf_config(hf_dir, dtype)
    renames = hf_weights.CLIP_RENAMES
    if not _is_clip_model(hf_dir):
        renames += (("", "text:"),)  # transformers 5 saves a CLIPTextModel without "text_model."
    tensors = CheckpointTensors().add_folder(hf_dir, renames)
    projected = tensors.info("text_projection:weight") is not None
    if not projected:
        cfg = dataclasses.replace(cfg, embed_dim=cfg.text.width)
    rules = [dataclasses.replace(r, path=r.path[1:]) for r in hf_weights.clip_param_rules()
             if r.path[0] == "text_tower" and (projected or r.path[-2:] != ("proj", "kernel"))]
    shapes = nn.unbox(jax.eval_shape(
        lambda: TextTower(cfg).init(jax.random.key(0), jnp.zeros((1, cfg.text_context), jnp.int32))["params"]))
    unused = ("vision:", "visual_projection:", "logit_scale", "logit_bias", "text:embeddings.position_ids")
    try:
        plan = plan_params(rules, shapes, tensors, ignore=lambda n: n.startswith(unused))
    except ConversionError as e:
        raise ConversionError(f"text.encoder: {hf_dir}: {e}") from None
    params = params_from_plan(plan, tensors, np.float32)
    if not projected:
        params["proj"] = {"kernel": np.eye(cfg.text.width, dtype=np.float32)}
    return cfg, params
