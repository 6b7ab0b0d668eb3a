"""A diffusers-layout `AutoencoderKL` folder (config.json + *.safetensors) -> our Flax autoencoder.

Read with the converter's machinery (`tensors.py` names, `rules.py` rules), never pickle:
`encoder.down_blocks.{i}.resnets.{j}.conv1.weight` [out, in, kh, kw] becomes our
`encoder/down_{i}_resnets_{j}/conv1/kernel` [kh, kw, in, out], and so on. Checkpoints saved
before diffusers renamed the attention (`query`, `key`, `value`, `proj_attn`, e.g.
stabilityai/sd-vae-ft-ema) load as well. The scale factor comes from the config
(`scaling_factor`, 0.18215 for Stable Diffusion's KL-f8).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from recap_jax.conversion.rules import ParamRule, params_from_plan, plan_params
from recap_jax.conversion.tensors import CheckpointTensors
from recap_jax.errors import ConfigError, ConversionError
from recap_jax.models.autoencoder_kl import AutoencoderKLConfig, check_blocks, init_params

_ATTENTION_NAMES = (("query.", "to_q."), ("key.", "to_k."), ("value.", "to_v."), ("proj_attn.", "to_out.0."))
RENAMES = (("encoder.", "encoder."), ("decoder.", "decoder."), ("quant_conv.", "quant_conv."),
           ("post_quant_conv.", "post_quant_conv."),
           *((f"{part}.mid_block.attentions.0.{old}", f"{part}.mid_block.attentions.0.{new}")
             for part in ("encoder", "decoder") for old, new in _ATTENTION_NAMES))


def read_config(folder: str, field: str = "autoencoder.dir") -> AutoencoderKLConfig:
    """Our config from a diffusers `AutoencoderKL` config.json; ConfigError naming `field`."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{field}: {folder} has no config.json (a diffusers AutoencoderKL folder is expected)")
    with open(path) as f:
        hf = json.load(f)
    if hf.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise ConfigError(f"{field}: {folder} holds a {hf['_class_name']}, not an AutoencoderKL")
    if hf.get("act_fn", "silu") != "silu":
        raise ConfigError(f"{field}: act_fn={hf['act_fn']!r} is not supported (silu only)")
    channels = tuple(int(c) for c in hf.get("block_out_channels", (64,)))
    try:
        check_blocks(hf.get("down_block_types", ["DownEncoderBlock2D"] * len(channels)),
                     hf.get("up_block_types", ["UpDecoderBlock2D"] * len(channels)))
    except ValueError as e:
        raise ConfigError(f"{field}: {folder}: {e}") from None
    # Defaults are diffusers' AutoencoderKL defaults (used when a field is absent).
    return AutoencoderKLConfig(
        in_channels=int(hf.get("in_channels", 3)), out_channels=int(hf.get("out_channels", 3)),
        block_out_channels=channels, layers_per_block=int(hf.get("layers_per_block", 1)),
        latent_channels=int(hf.get("latent_channels", 4)), norm_num_groups=int(hf.get("norm_num_groups", 32)),
        scaling_factor=float(hf.get("scaling_factor", 0.18215)),
        shift_factor=float(hf.get("shift_factor") or 0.0),
        use_quant_conv=bool(hf.get("use_quant_conv", True)),
        use_post_quant_conv=bool(hf.get("use_post_quant_conv", True)),
        mid_block_add_attention=bool(hf.get("mid_block_add_attention", True)))


def _conv(path: tuple[str, ...], source: str) -> list[ParamRule]:
    return [ParamRule(path + ("kernel",), f"{source}.weight", "conv"),
            ParamRule(path + ("bias",), f"{source}.bias", "same")]


def _norm(path: tuple[str, ...], source: str) -> list[ParamRule]:
    return [ParamRule(path + ("scale",), f"{source}.weight", "same"),
            ParamRule(path + ("bias",), f"{source}.bias", "same")]


def _resnet(path: tuple[str, ...], source: str, shortcut: bool) -> list[ParamRule]:
    rules = [*_norm(path + ("norm1",), f"{source}.norm1"), *_conv(path + ("conv1",), f"{source}.conv1"),
             *_norm(path + ("norm2",), f"{source}.norm2"), *_conv(path + ("conv2",), f"{source}.conv2")]
    return rules + (_conv(path + ("conv_shortcut",), f"{source}.conv_shortcut") if shortcut else [])


def _mid(path: tuple[str, ...], source: str, attention: bool) -> list[ParamRule]:
    rules = _resnet(path + ("resnets_0",), f"{source}.resnets.0", False)
    rules += _resnet(path + ("resnets_1",), f"{source}.resnets.1", False)
    if attention:
        a, s = path + ("attentions_0",), f"{source}.attentions.0"
        rules += _norm(a + ("group_norm",), f"{s}.group_norm")
        for ours, theirs in (("to_q", "to_q"), ("to_k", "to_k"), ("to_v", "to_v"), ("to_out_0", "to_out.0")):
            rules += [ParamRule(a + (ours, "kernel"), f"{s}.{theirs}.weight", "linear"),
                      ParamRule(a + (ours, "bias"), f"{s}.{theirs}.bias", "same")]
    return rules


def param_rules(cfg: AutoencoderKLConfig) -> list[ParamRule]:
    """Rules of every `AutoencoderKL` parameter from a diffusers checkpoint's tensors."""
    enc, dec, channels = ("encoder",), ("decoder",), cfg.block_out_channels
    rules = _conv(enc + ("conv_in",), "encoder.conv_in")
    previous = channels[0]
    for i, c in enumerate(channels):
        for j in range(cfg.layers_per_block):
            rules += _resnet(enc + (f"down_{i}_resnets_{j}",), f"encoder.down_blocks.{i}.resnets.{j}",
                             shortcut=j == 0 and previous != c)
        if i < len(channels) - 1:
            rules += _conv(enc + (f"down_{i}_downsample",), f"encoder.down_blocks.{i}.downsamplers.0.conv")
        previous = c
    rules += _mid(enc + ("mid",), "encoder.mid_block", cfg.mid_block_add_attention)
    rules += _norm(enc + ("conv_norm_out",), "encoder.conv_norm_out") + _conv(enc + ("conv_out",), "encoder.conv_out")
    reversed_channels = tuple(reversed(channels))
    rules += _conv(dec + ("conv_in",), "decoder.conv_in")
    rules += _mid(dec + ("mid",), "decoder.mid_block", cfg.mid_block_add_attention)
    previous = reversed_channels[0]
    for i, c in enumerate(reversed_channels):
        for j in range(cfg.layers_per_block + 1):
            rules += _resnet(dec + (f"up_{i}_resnets_{j}",), f"decoder.up_blocks.{i}.resnets.{j}",
                             shortcut=j == 0 and previous != c)
        if i < len(channels) - 1:
            rules += _conv(dec + (f"up_{i}_upsample",), f"decoder.up_blocks.{i}.upsamplers.0.conv")
        previous = c
    rules += _norm(dec + ("conv_norm_out",), "decoder.conv_norm_out") + _conv(dec + ("conv_out",), "decoder.conv_out")
    if cfg.use_quant_conv:
        rules += _conv(("quant_conv",), "quant_conv")
    if cfg.use_post_quant_conv:
        rules += _conv(("post_quant_conv",), "post_quant_conv")
    return rules


def load_autoencoder(folder: str, field: str = "autoencoder.dir") -> tuple[AutoencoderKLConfig, dict]:
    """(config, float32 params) of the diffusers AutoencoderKL in `folder` (safetensors only).

    Names and shapes are checked before a tensor is read; a checkpoint that does not fit raises
    ConversionError naming the tensor and `field`."""
    cfg = read_config(folder, field)
    tensors = CheckpointTensors().add_folder(folder, RENAMES)
    shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0), image_size=2 * cfg.downsample))
    try:
        plan = plan_params(param_rules(cfg), shapes, tensors)
    except ConversionError as e:
        raise ConversionError(f"{field}: {folder}: {e}; is it an AutoencoderKL checkpoint of this config?"
                              ) from None
    return cfg, params_from_plan(plan, tensors, np.float32)
