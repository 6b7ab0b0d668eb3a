"""Write fine-tuned params as a converted checkpoint (what `recap_jax.caption` loads) and as a
llava-hf folder (what transformers' `LlavaForConditionalGeneration.from_pretrained` loads).

The llava-hf weights are the inverse of the converter's `ParamRule`s, so conversion and export
cannot drift apart: exporting and converting back gives the same params. The converted
checkpoint stores only the vision blocks LLaVA runs (up to its feature layer), so the exported
vision tower has that many blocks and takes its features from the last one: the same features.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
import transformers
from etils import epath
from flax import traverse_util
from jax.experimental import multihost_utils
from safetensors.numpy import save_file

from recap_jax.conversion import bundle
from recap_jax.conversion.llava import param_rules
from recap_jax.errors import ConfigError
from recap_jax.models.config import LlavaConfig
from recap_jax.preprocess import text as text_lib

# Our canonical tensor prefixes -> transformers 5 llava-hf names (the converter reads them back).
HF_PREFIXES = {"vision:": "model.vision_tower.", "projector:": "model.multi_modal_projector.",
               "text:": "model.language_model.", "lm_head:": "lm_head."}
SHARD_BYTES = 4 * 2**30

# Our layout -> PyTorch's, per `conversion.llava._TRANSFORMS` entry.
_TO_TORCH = {
    "same": lambda t: t,
    "linear": lambda t: t.T,
    "heads_in": lambda t: t.reshape(t.shape[0], -1).T,  # [D, H, Dh] -> [H*Dh, D]
    "heads_out": lambda t: t.reshape(-1, t.shape[-1]).T,  # [H, Dh, D] -> [D, H*Dh]
    "heads_bias": lambda t: t.reshape(-1),
    "conv": lambda t: t.transpose(3, 2, 0, 1),  # HWIO -> OIHW
}


def hosts() -> tuple[int, int]:
    """(this process's index, the number of processes): who writes the export folders."""
    return jax.process_index(), jax.process_count()


def host_leaves(params, dtype) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    """Each param gathered to this host as numpy `dtype`, one at a time (multi-host safe)."""
    for path, value in traverse_util.flatten_dict(params).items():
        if isinstance(value, jax.Array) and not value.is_fully_addressable:
            value = multihost_utils.process_allgather(value, tiled=True)
        yield path, np.asarray(jax.device_get(value)).astype(dtype)


def hf_tensors(config: LlavaConfig, params) -> Iterator[tuple[str, np.ndarray]]:
    """(llava-hf tensor name, PyTorch-layout array) for every param (also works on gradients)."""
    flat = traverse_util.flatten_dict(params)
    for rule in param_rules(config):
        if rule.path not in flat:
            continue  # vision blocks of a feature layer 0 tower
        value = np.asarray(flat[rule.path])
        prefix = next(p for p in HF_PREFIXES if rule.source.startswith(p))
        name = HF_PREFIXES[prefix] + rule.source[len(prefix):]
        if "{i}" in rule.source:
            for i in range(value.shape[0]):
                yield name.format(i=i), np.ascontiguousarray(_TO_TORCH[rule.transform](value[i]))
        else:
            yield name, np.ascontiguousarray(_TO_TORCH[rule.transform](value))


def hf_vocab_size(config: LlavaConfig) -> int:
    """The llava-hf text vocabulary: the original layout's `<image>` id is the first one past the
    LLaMA vocabulary, and llava-hf looks every input id up in the embedding table, so it grows."""
    return max(config.text.vocab_size, config.image_token_id + 1)


def hf_config(config: LlavaConfig, tokenizer) -> transformers.LlavaConfig:
    used = config.num_vision_layers_used
    if used == 0:
        raise ConfigError("export: a vision_feature_layer of 0 (embeddings only) has no llava-hf form")
    t, v = config.text, config.vision
    text = {"model_type": "llama", "vocab_size": hf_vocab_size(config), "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size, "num_hidden_layers": t.num_layers,
            "num_attention_heads": t.num_heads, "num_key_value_heads": t.num_kv_heads,
            "head_dim": t.head_dim, "rms_norm_eps": t.rms_norm_eps, "rope_theta": t.rope_theta,
            "max_position_embeddings": t.max_position_embeddings,
            "tie_word_embeddings": t.tie_word_embeddings, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    if t.rope_scaling is not None:
        text["rope_scaling"] = {"rope_type": "llama3", "rope_theta": t.rope_theta,
                                **{k: getattr(t.rope_scaling, k) for k in (
                                    "factor", "low_freq_factor", "high_freq_factor",
                                    "original_max_position_embeddings")}}
    vision = {"model_type": "clip_vision_model", "hidden_size": v.hidden_size,
              "intermediate_size": v.intermediate_size, "num_hidden_layers": used,
              "num_attention_heads": v.num_heads, "image_size": v.image_size, "patch_size": v.patch_size,
              "hidden_act": v.hidden_act, "layer_norm_eps": v.layer_norm_eps}
    return transformers.LlavaConfig(
        text_config=text, vision_config=vision, image_token_index=config.image_token_id,
        vision_feature_layer=-1, vision_feature_select_strategy=config.vision_feature_select_strategy,
        projector_hidden_act=config.projector_hidden_act,
        multimodal_projector_bias=config.projector_bias, tie_word_embeddings=t.tie_word_embeddings)


def _image_processor(spec: bundle.CaptionerSpec):
    im = spec.image
    settings = dict(size={"shortest_edge": im.size}, crop_size={"height": im.size, "width": im.size},
                    do_pad=im.mode == "pad", do_center_crop=True, resample=int(im.resample),
                    rescale_factor=im.rescale_factor, image_mean=list(im.mean), image_std=list(im.std))
    # The PIL processor computes what preprocess.image computes (transformers >= 5 names it so).
    cls = getattr(transformers, "LlavaImageProcessorPil", None) or transformers.LlavaImageProcessor
    return cls(**settings)


def _save(tensors: dict[str, np.ndarray], path: epath.Path) -> None:
    """safetensors' save_file leaves its file 0600; an exported model is meant to be shared like
    the JSON files beside it, so it gets the mode a new file of this process gets (the umask's)."""
    save_file(tensors, str(path), metadata={"format": "pt"})
    if "://" in str(path):
        return
    probe = path.parent / f".{path.name}.mode-{os.getpid()}"
    probe.write_bytes(b"")  # os.umask() would have to change the process-wide mask to read it
    os.chmod(path, stat.S_IMODE(os.stat(probe).st_mode))
    probe.unlink()


def _write_safetensors(out: epath.Path, tensors: Iterator[tuple[str, np.ndarray]]) -> None:
    """Shards of at most SHARD_BYTES plus the index transformers reads for sharded folders."""
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, value in tensors:
        if size and size + value.nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = value
        size += value.nbytes
    if len(shards) == 1:
        _save(shards[0], out / "model.safetensors")
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        _save(shard, out / file)
        weight_map.update({name: file for name in shard})
    total = sum(v.nbytes for s in shards for v in s.values())
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))


def export_hf(out: epath.PathLike, spec: bundle.CaptionerSpec, params, dtype: str) -> epath.Path:
    """A llava-hf folder: config, safetensors weights, tokenizer, processor, generation config.

    Multi-host: every host takes part in gathering the params; host 0 alone writes the folder."""
    out = epath.Path(out)
    host = traverse_util.unflatten_dict(dict(host_leaves(params, bundle.param_dtype(dtype))))
    if hosts()[0] != 0:
        return out
    out.mkdir(parents=True, exist_ok=True)
    config = hf_config(spec.config, spec.tokenizer)
    config.save_pretrained(str(out))
    tensors = dict(hf_tensors(spec.config, host))
    # The CLIP tower's final norm is never used by LLaVA; an identity keeps the folder complete.
    side = spec.config.vision.hidden_size
    tensors["model.vision_tower.post_layernorm.weight"] = np.ones(side, bundle.param_dtype(dtype))
    tensors["model.vision_tower.post_layernorm.bias"] = np.zeros(side, bundle.param_dtype(dtype))
    extra = range(spec.config.text.vocab_size, hf_vocab_size(spec.config))  # ids our model never emits
    for name in ("model.language_model.embed_tokens.weight", "lm_head.weight"):  # zero rows for them
        if extra and name in tensors:
            tensors[name] = np.concatenate([tensors[name], np.zeros((len(extra), tensors[name].shape[1]),
                                                                   tensors[name].dtype)])
    _write_safetensors(out, iter(tensors.items()))
    chat_template = (text_lib.hf_chat_template(spec.template) if spec.template else
                     spec.chat_template or getattr(spec.tokenizer, "chat_template", None))
    processor = transformers.LlavaProcessor(
        image_processor=_image_processor(spec), tokenizer=spec.tokenizer, chat_template=chat_template,
        patch_size=spec.config.vision.patch_size, num_additional_image_tokens=1,
        vision_feature_select_strategy=spec.config.vision_feature_select_strategy)
    processor.save_pretrained(str(out))
    transformers.GenerationConfig(
        eos_token_id=list(spec.stop_ids), bos_token_id=spec.tokenizer.bos_token_id,
        pad_token_id=spec.tokenizer.pad_token_id,
        suppress_tokens=list(extra) or None).save_pretrained(str(out))
    return out


def export_converted(out: epath.PathLike, spec: bundle.CaptionerSpec, params, dtype: str,
                     source: dict[str, Any]) -> epath.Path:
    """The converted-checkpoint bundle (recap_config.json, tokenizer, Orbax params).

    Multi-host: Orbax saves the params collectively into one temporary folder (named by the step,
    the same on every host); host 0 alone writes the tokenizer and recap_config.json and renames it."""
    leaves = ((path, value) for path, value in host_leaves(params, bundle.param_dtype(dtype)))
    index, count = hosts()
    single = count == 1
    out = bundle.save_converted(out, spec, leaves, dtype, source, overwrite=True, primary=index == 0,
                                tmp_suffix=None if single else f"step{source.get('step', 0)}")
    if not single:  # no host returns (and reads the export) before host 0 has renamed it
        multihost_utils.sync_global_devices("recap_jax export written")
    return out
