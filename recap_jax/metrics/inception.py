"""InceptionV3 pool features for FID, in Flax: the network of pytorch-fid's `InceptionV3` with
`use_fid_inception=True` (the TensorFlow FID Inception: torchvision's InceptionV3 with its
`FIDInceptionA/C/E` blocks, whose average pools exclude the padding and whose last block max-pools).

Weights come from a file the user names: pytorch-fid's `pt_inception-2015-12-05` state dict saved
as safetensors (never a pickle here; docs/dit_eval.md shows the one-off conversion with torch).
Images go in as uint8 (or floats in [0, 1]) NHWC of any size: like pytorch-fid they are resized
to 299 x 299 bilinearly (no antialiasing, half-pixel centres) and scaled to [-1, 1]; out come the
2048 average-pooled features of the last block.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from recap_jax.conversion.rules import ParamRule, params_from_plan, plan_params
from recap_jax.conversion.tensors import CheckpointTensors
from recap_jax.errors import ConfigError, ConversionError

FEATURES = 2048
SIZE = 299


class BasicConv(nn.Module):
    """torchvision's BasicConv2d: conv (no bias), BatchNorm (eps 1e-3, running statistics), ReLU."""
    features: int
    kernel: tuple[int, int]
    stride: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pad = ((self.padding[0], self.padding[0]), (self.padding[1], self.padding[1]))
        x = nn.Conv(self.features, self.kernel, strides=self.stride, padding=pad, use_bias=False, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _avg_pool(x: jax.Array) -> jax.Array:
    """3x3, stride 1, padding 1, padding not counted (pytorch-fid's FID blocks)."""
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool(x: jax.Array, stride: int = 2, padding: int = 0) -> jax.Array:
    return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=((padding, padding), (padding, padding)))


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(64, (1, 1), name="branch1x1")(x)
        b5 = BasicConv(48, (1, 1), name="branch5x5_1")(x)
        b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = BasicConv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(384, (3, 3), stride=2, name="branch3x3")(x)
        bd = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = BasicConv(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool(x)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c7, row, col = self.channels_7x7, dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        b1 = BasicConv(192, (1, 1), name="branch1x1")(x)
        b7 = BasicConv(c7, (1, 1), name="branch7x7_1")(x)
        b7 = BasicConv(c7, **row, name="branch7x7_2")(b7)
        b7 = BasicConv(192, **col, name="branch7x7_3")(b7)
        bd = BasicConv(c7, (1, 1), name="branch7x7dbl_1")(x)
        bd = BasicConv(c7, **col, name="branch7x7dbl_2")(bd)
        bd = BasicConv(c7, **row, name="branch7x7dbl_3")(bd)
        bd = BasicConv(c7, **col, name="branch7x7dbl_4")(bd)
        bd = BasicConv(192, **row, name="branch7x7dbl_5")(bd)
        bp = BasicConv(192, (1, 1), name="branch_pool")(_avg_pool(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(192, (1, 1), name="branch3x3_1")(x)
        b3 = BasicConv(320, (3, 3), stride=2, name="branch3x3_2")(b3)
        b7 = BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool(x)], axis=-1)


class InceptionE(nn.Module):
    max_pool: bool  # FIDInceptionE_2 (Mixed_7c) max-pools; FIDInceptionE_1 (Mixed_7b) averages

    @nn.compact
    def __call__(self, x):
        row, col = dict(kernel=(1, 3), padding=(0, 1)), dict(kernel=(3, 1), padding=(1, 0))
        b1 = BasicConv(320, (1, 1), name="branch1x1")(x)
        b3 = BasicConv(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate([BasicConv(384, **row, name="branch3x3_2a")(b3),
                              BasicConv(384, **col, name="branch3x3_2b")(b3)], axis=-1)
        bd = BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([BasicConv(384, **row, name="branch3x3dbl_3a")(bd),
                              BasicConv(384, **col, name="branch3x3dbl_3b")(bd)], axis=-1)
        pooled = _max_pool(x, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        bp = BasicConv(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
    """Images in [-1, 1], 299 x 299 NHWC -> [batch, 2048] pool features."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = BasicConv(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool(x)
        x = BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool(x)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(c7, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(max_pool=False, name="Mixed_7b")(x)
        x = InceptionE(max_pool=True, name="Mixed_7c")(x)
        return jnp.mean(x, axis=(1, 2))


def prepare(images: jax.Array) -> jax.Array:
    """uint8 (or [0, 1] float) NHWC of any size -> [-1, 1] at 299 x 299, as pytorch-fid does."""
    x = images.astype(jnp.float32) / 255.0 if images.dtype == jnp.uint8 else images.astype(jnp.float32)
    if x.shape[1:3] != (SIZE, SIZE):
        # torch's F.interpolate(mode="bilinear", align_corners=False): half-pixel centres, no antialias
        x = jax.image.resize(x, (x.shape[0], SIZE, SIZE, x.shape[3]), "bilinear", antialias=False)
    return 2.0 * x - 1.0


def _variables_shapes() -> Any:
    return jax.eval_shape(lambda: FIDInceptionV3().init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3))))


def _rules(shapes: Any) -> list[ParamRule]:
    """Our names are torchvision's (Mixed_5b/branch1x1/conv/kernel <- Mixed_5b.branch1x1.conv.weight)."""
    torch_names = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
                   "var": "running_var"}
    rules = []
    for path, _ in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        keys = tuple(k.key for k in path)
        source = ".".join(keys[1:-1] + (torch_names[keys[-1]],))
        rules.append(ParamRule(keys, source, "conv" if keys[-1] == "kernel" else "same"))
    return rules


def load_inception(weights: str, field: str = "eval.inception_weights") -> dict:
    """The network's variables from a safetensors file of pytorch-fid's FID Inception state dict."""
    if not weights or not os.path.isfile(weights):
        raise ConfigError(f"{field}: {weights or '(empty)'} is not a file; convert pytorch-fid's "
                          "pt_inception-2015-12-05 weights to safetensors once (docs/dit_eval.md)")
    tensors = CheckpointTensors().add_files([weights], (("", ""),))
    shapes = _variables_shapes()
    try:
        plan = plan_params(_rules(shapes), shapes, tensors,
                           ignore=lambda n: n.startswith("fc.") or n.endswith("num_batches_tracked"))
    except ConversionError as e:
        raise ConversionError(f"{field}: {weights}: {e}; is it pytorch-fid's FID Inception state dict?") from None
    return params_from_plan(plan, tensors, np.float32)


@functools.partial(jax.jit, static_argnums=())
def _features(variables, images):
    return FIDInceptionV3().apply(variables, prepare(images))


def inception_features(variables: dict, images: np.ndarray, batch_size: int = 50) -> np.ndarray:
    """[n, 2048] float64 pool features of uint8 NHWC images, batch by batch (the last one padded)."""
    out = []
    for start in range(0, len(images), batch_size):
        chunk = np.asarray(images[start:start + batch_size])
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), 0)]) \
            if len(chunk) < batch_size else chunk
        out.append(np.asarray(_features(variables, jnp.asarray(padded)), np.float64)[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, FEATURES))
