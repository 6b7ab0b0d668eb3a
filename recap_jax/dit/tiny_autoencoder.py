"""A tiny random KL autoencoder in diffusers' layout (config.json + diffusion_pytorch_model.safetensors),
for the offline CPU demo and tests: `encode_latents` with `autoencoder.build_tiny_if_missing=true`
builds it where `autoencoder.dir` points. diffusers' `AutoencoderKL.from_pretrained` loads it, and
so does our converter (the same rules, run backwards)."""

from __future__ import annotations

import jax
import numpy as np
from etils import epath

from recap_jax.conversion.autoencoder_kl import param_rules
from recap_jax.conversion.rules import tree_get
from recap_jax.data.identity import write_json
from recap_jax.models.autoencoder_kl import AutoencoderKLConfig, init_params

TINY = AutoencoderKLConfig(block_out_channels=(16, 32, 32, 32), layers_per_block=1, latent_channels=4,
                           norm_num_groups=8, scaling_factor=0.18215)
# Ours -> stored (PyTorch) layout: the inverse of conversion.rules.TRANSFORMS.
_TO_STORED = {"conv": lambda t: t.transpose(3, 2, 0, 1), "linear": lambda t: t.T, "same": lambda t: t}


def diffusers_config(cfg: AutoencoderKLConfig, sample_size: int = 256) -> dict:
    """The config.json diffusers writes for this autoencoder."""
    n = len(cfg.block_out_channels)
    return {"_class_name": "AutoencoderKL", "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
            "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n,
            "block_out_channels": list(cfg.block_out_channels), "layers_per_block": cfg.layers_per_block,
            "act_fn": "silu", "latent_channels": cfg.latent_channels, "norm_num_groups": cfg.norm_num_groups,
            "sample_size": sample_size, "scaling_factor": cfg.scaling_factor,
            "use_quant_conv": cfg.use_quant_conv, "use_post_quant_conv": cfg.use_post_quant_conv,
            "mid_block_add_attention": cfg.mid_block_add_attention}


def save_diffusers(folder: str, cfg: AutoencoderKLConfig, params) -> None:
    """Write `params` of `AutoencoderKL(cfg)` as a diffusers folder (the weights file last)."""
    from safetensors.numpy import save_file
    out = epath.Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {rule.source: np.ascontiguousarray(_TO_STORED[rule.transform](np.asarray(tree_get(params, rule.path))),
                                                 np.float32)
               for rule in param_rules(cfg)}
    write_json(out / "config.json", diffusers_config(cfg))
    tmp = out / ".diffusion_pytorch_model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(out / "diffusion_pytorch_model.safetensors")


def build_tiny_autoencoder(folder: str, seed: int = 0, cfg: AutoencoderKLConfig = TINY) -> None:
    """A random `cfg` autoencoder (KL-f8 downsampling, 4 latent channels) saved in diffusers' layout.

    Drawn with numpy from the abstract params (LeCun-normal kernels, zero biases, unit norm
    scales): no init program to compile."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0), image_size=cfg.downsample * 2))

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            return (rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(np.float32)
        return np.full(leaf.shape, 1.0 if name == "scale" else 0.0, np.float32)

    save_diffusers(folder, cfg, jax.tree_util.tree_map_with_path(draw, shapes))
