"""On CPU the caption programs take the decoder's weights one array per layer, views of the
stacked checkpoint arrays: no copy at load, no copy of a layer's weights out of a stack in the
compiled decode step, and the same logits and tokens as the stacked model."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from recap_jax.captioning.tiny_demo import tiny_llava_hf_config
from recap_jax.decoding import programs as programs_lib
from recap_jax.decoding import steps
from recap_jax.decoding.sampler import Request, Sampler
from recap_jax.decoding.settings import DecodeSettings
from recap_jax.models.config import llava_config_from_hf
from recap_jax.models.llama import split_layer_params
from recap_jax.models.llava import LlavaModel
from recap_jax.parallel import mesh as mesh_lib
from recap_jax.parallel.layer_views import layer_views

# Layer weight shapes distinct from every other array of the program (hidden 40, mlp 80).
CONFIG = llava_config_from_hf(tiny_llava_hf_config(vocab_size=96, hidden=40, heads=4, kv_heads=2,
                                                   text_layers=3, image_size=28, patch_size=14,
                                                   vision_layers=1))
SETTINGS = DecodeSettings(max_new_tokens=6, batch_size=4, prefill_batch=2, prompt_buckets=(12,), attention="xla")


def _params():
    model = LlavaModel(CONFIG)
    token_ids = jnp.zeros((1, 12), jnp.int32)
    pixels = jnp.zeros((1, 28, 28, 3), jnp.float32)
    return model, nn.unbox(model.init(jax.random.key(0), token_ids, pixels))["params"]


def test_layer_views_share_the_stack_memory():
    stacked = jax.device_put(np.arange(4 * 16 * 32, dtype=np.float32).reshape(4, 16, 32))
    views = layer_views(stacked)
    assert len(views) == 4
    for i, view in enumerate(views):
        np.testing.assert_array_equal(np.asarray(view), np.asarray(stacked)[i])
        assert view.unsafe_buffer_pointer() == stacked.unsafe_buffer_pointer() + i * 16 * 32 * 4


def test_layer_views_keep_the_shardings_of_the_layers():
    mesh = mesh_lib.make_mesh({"data": -1}, jax.devices()[:1])
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data"))
    abstract = layer_views(jax.ShapeDtypeStruct((3, 8, 2), jnp.bfloat16, sharding=sharding))
    assert [(a.shape, a.dtype, a.sharding.spec) for a in abstract] == \
        [((8, 2), jnp.bfloat16, jax.sharding.PartitionSpec("data"))] * 3
    by_layer = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    assert layer_views(jax.ShapeDtypeStruct((3, 8), jnp.float32, sharding=by_layer)) is None


def test_split_model_gives_the_stacked_model_logits():
    model, params = _params()
    rng = np.random.default_rng(1)
    token_ids = jnp.asarray(rng.integers(8, 96, (2, 12)), jnp.int32)
    pixels = jnp.asarray(rng.normal(size=(2, 28, 28, 3)), jnp.float32)
    split = {**params, "language_model": split_layer_params(params["language_model"])}
    assert "layers" not in split["language_model"] and "blocks_2" in split["language_model"]
    np.testing.assert_allclose(model.clone(split_layers=True).apply({"params": split}, token_ids, pixels),
                               model.apply({"params": params}, token_ids, pixels), rtol=1e-5, atol=1e-5)


def _decode_hlo(model, params, arrange) -> str:
    state = jax.eval_shape(functools.partial(steps.init_state, model, SETTINGS, jnp.float32))
    decode = jax.jit(functools.partial(steps.decode_steps, model, SETTINGS, 1), donate_argnums=(1,))
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), arrange(params))
    return decode.lower(abstract, state, jax.ShapeDtypeStruct((), jnp.int32)).compile().as_text()


def _weight_slices(hlo: str) -> int:
    """Slice ops and fusions of compiled HLO that make one layer's MLP kernel ([40, 80], [80, 40])."""
    return sum(1 for line in hlo.splitlines() if re.match(r"\s*(ROOT )?%\S*slice\S* = f32\[(1,)?(40,80|80,40)\]", line))


def test_cpu_decode_program_slices_no_weights_out_of_stacks():
    model, params = _params()
    programs = programs_lib.decode_programs(model, SETTINGS, jnp.float32, None)
    assert programs.arrange_params is programs_lib.split_decoder_layers  # the CPU programs' layout
    stacked = _decode_hlo(model, params, lambda p: p)
    split = _decode_hlo(model.clone(split_layers=True), params, programs.arrange_params)
    assert _weight_slices(stacked) > 0  # the copy this layout avoids
    assert _weight_slices(split) == 0 and "f32[3,40,80]" not in split and "f32[3,80,40]" not in split


def test_bf16_cpu_programs_keep_the_stack():
    """bf16 on CPU: XLA converts each layer's weights to f32 where the layer loop slices them, so the
    slice is the conversion, one layer at a time; unrolled per-layer params would convert all at once."""
    model = LlavaModel(CONFIG, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    programs = programs_lib.decode_programs(model, SETTINGS, jnp.bfloat16, None)
    params = {"language_model": {"layers": {"w": jnp.zeros((3, 2))}}}
    assert programs.arrange_params(params) is params


def test_sampler_tokens_equal_with_split_and_stacked_layers(monkeypatch):
    model, params = _params()
    rng = np.random.default_rng(2)
    requests = [Request(rng.integers(8, 96, 10).astype(np.int32),
                                    rng.normal(size=(28, 28, 3)).astype(np.float32), i) for i in range(6)]

    def tokens():
        return {r.tag: r.tokens.tolist() for r in Sampler(model, params, SETTINGS).generate(requests)}

    split = tokens()
    monkeypatch.setattr(programs_lib, "_platform", lambda mesh: "tpu")  # the stacked layout TPUs run
    stacked = tokens()
    assert split == stacked and all(len(t) == SETTINGS.max_new_tokens for t in split.values())
