"""model.quantize = "int8" / "w8a8" (Qwix): the tiny captioner loads with int8 decoder weights, the
compiled prefill and decode take them as int8 (w8a8: the prefill multiplies int8 by int8 on TPU),
and it captions end to end close to the float model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recap_jax.captioning import model_loading
from recap_jax.captioning.tiny_demo import build_tiny_checkpoint
from recap_jax.decoding.sampler import Request, Sampler
from recap_jax.decoding.settings import DecodeSettings
from recap_jax.errors import ConfigError
from recap_jax.models import quantization
from recap_jax.parallel import mesh as mesh_lib
from recap_jax.decoding.lowering import lower_caption_programs

PROMPTS = ["describe the image .", "what is in this picture ?", "a photo of", "describe the scene ."]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    checkpoint = str(build_tiny_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "tiny"), seed=2))
    mesh = mesh_lib.make_mesh({"data": 1}, jax.devices()[:1])
    shardings_fn = lambda b: mesh_lib.params_shardings(mesh, b)  # noqa: E731
    spec, params = model_loading.load_captioner(checkpoint=checkpoint, shardings_fn=shardings_fn)
    _, qparams = model_loading.load_captioner(checkpoint=checkpoint, shardings_fn=shardings_fn, quantize="int8")
    rng = np.random.default_rng(0)
    side = spec.config.vision.image_size
    encoder = spec.prompt_encoder()
    requests = [Request(encoder.encode(p), rng.random((side, side, 3), np.float32), i) for i, p in enumerate(PROMPTS)]
    return spec, params, qparams, requests


def test_decoder_weights_are_int8_the_rest_float(loaded):
    _, params, qparams, _ = loaded
    q = qparams["language_model"]["layers"]["q_proj"]["kernel"].array
    assert q.qvalue.dtype == jnp.int8 and q.qvalue.shape == params["language_model"]["layers"]["q_proj"]["kernel"].shape
    assert q.scale.shape[0] == q.qvalue.shape[0]  # one scale set per scanned layer
    assert qparams["language_model"]["lm_head"]["kernel"].array.qvalue.dtype == jnp.int8
    assert qparams["vision_tower"]["layers"]["fc1"]["kernel"].dtype == jnp.float32
    assert qparams["language_model"]["embed_tokens"]["embedding"].dtype == jnp.float32
    int8_bytes = sum(x.nbytes for x in jax.tree.leaves(qparams["language_model"]["layers"]))
    float_bytes = sum(x.nbytes for x in jax.tree.leaves(params["language_model"]["layers"]))
    assert int8_bytes < 0.4 * float_bytes


def _entry_params(hlo: str) -> str:
    entry = hlo[hlo.index("ENTRY"):]
    return "\n".join(line for line in entry.splitlines() if "parameter(" in line)


def test_compiled_programs_take_int8_weights(loaded):
    """The sampler's prefill and decode loop, lowered as the job jits them (decoding.lowering)."""
    spec, _, qparams, _ = loaded
    model = quantization.caption_model(spec.config, jnp.float32, "int8")
    settings = DecodeSettings(max_new_tokens=4, batch_size=2, prefill_batch=1, prompt_buckets=(32,))
    mesh = mesh_lib.make_mesh({"data": 1}, jax.devices()[:1])
    programs = lower_caption_programs(model, settings, mesh, jnp.float32, [32])
    kernel = qparams["language_model"]["layers"]["gate_proj"]["kernel"].array.qvalue
    int8_param = "s8[" + ",".join(map(str, kernel.shape)) + "]"
    for lowered in (programs.prefill[32], programs.decode):
        assert int8_param in _entry_params(lowered.compile().as_text())


def test_int8_captions_end_to_end_close_to_float(loaded):
    spec, params, qparams, requests = loaded
    settings = DecodeSettings(max_new_tokens=12, batch_size=4, prefill_batch=2, prompt_buckets=(32,))
    float_model = quantization.caption_model(spec.config, jnp.float32)
    int8_model = quantization.caption_model(spec.config, jnp.float32, "int8")
    ref = {r.tag: r.tokens for r in Sampler(float_model, params, settings).generate(iter(requests))}
    got = {r.tag: r.tokens for r in Sampler(int8_model, qparams, settings).generate(iter(requests))}
    assert sorted(got) == list(range(len(requests)))
    assert all(len(t) > 0 for t in got.values())
    # Teacher-forced on the float model's captions, the int8 logits stay close to the float ones.
    tokens = np.stack([np.concatenate([requests[i].token_ids, ref[i]])[:40] for i in range(2)])
    pixels = np.stack([requests[i].pixels for i in range(2)])
    float_logits = float_model.apply({"params": params}, tokens, pixels)
    int8_logits = int8_model.apply({"params": qparams}, tokens, pixels)
    assert float(jnp.abs(int8_logits - float_logits).max()) < 0.05 * float(jnp.abs(float_logits).max())


def test_unknown_mode_names_the_field():
    with pytest.raises(ConfigError, match="model.quantize"):
        quantization.check_mode("int4")


def _lowered_tiny(mode: str, devices, dtype=jnp.bfloat16):
    from recap_jax.captioning.tiny_demo import tiny_llava_hf_config
    from recap_jax.models.config import llava_config_from_hf
    config = llava_config_from_hf(tiny_llava_hf_config(image_size=56, patch_size=14))
    model = quantization.caption_model(config, dtype, mode)
    settings = DecodeSettings(max_new_tokens=4, batch_size=2 * len(devices), prefill_batch=len(devices),
                              prompt_buckets=(32,))
    mesh = mesh_lib.make_mesh({"data": len(devices)}, list(devices))
    return config, lower_caption_programs(model, settings, mesh, dtype, [32])


@pytest.mark.parametrize("slice_name", ["v5e-4", "v6e-4"])
def test_w8a8_prefill_multiplies_int8_by_int8_on_tpu(slice_name):
    """The compiled TPU prefill has int8 x int8 matmuls: every dense matmul of the decoder layer
    (the scan body, counted once), one prompt row of 32 tokens per chip; decode has none."""
    from recap_jax.planning import chips, hlo
    devices = chips.host_program_devices(chips.compile_slice(slice_name))
    config, programs = _lowered_tiny("w8a8", devices)
    prefill = programs.prefill[32].compile().as_text()
    t = config.text
    q, kv = t.num_heads * t.head_dim, t.num_kv_heads * t.head_dim
    dense = t.hidden_size * (2 * q + 2 * kv) + 3 * t.hidden_size * t.intermediate_size  # q, o, k, v, MLP
    assert hlo.int8_matmul_flops(prefill) == 2 * 32 * dense
    assert hlo.int8_matmul_flops(programs.decode.compile().as_text()) == 0
    _, weight_only = _lowered_tiny("int8", devices)
    assert hlo.int8_matmul_flops(weight_only.prefill[32].compile().as_text()) == 0
    assert weight_only.decode.as_text() == programs.decode.as_text()  # decode: int8 weights, as "int8"


def test_w8a8_captions_end_to_end_and_only_the_prefill_changes(loaded):
    spec, params, qparams, requests = loaded
    settings = DecodeSettings(max_new_tokens=12, batch_size=4, prefill_batch=2, prompt_buckets=(32,))
    int8_model = quantization.caption_model(spec.config, jnp.float32, "int8")
    w8a8_model = quantization.caption_model(spec.config, jnp.float32, "w8a8")
    assert quantization.mode_of(w8a8_model) == "w8a8"
    got = {r.tag: r.tokens for r in Sampler(w8a8_model, qparams, settings).generate(iter(requests))}
    assert sorted(got) == list(range(len(requests))) and all(len(t) > 0 for t in got.values())
    r = requests[0]
    tokens = np.zeros((1, 32), np.int32)
    tokens[0, :len(r.token_ids)] = r.token_ids
    args = (tokens, r.pixels[None], np.array([len(r.token_ids)], np.int32))
    float_model = quantization.caption_model(spec.config, jnp.float32)
    ref, _ = float_model.apply({"params": params}, *args, method="prefill")
    weights_only, _ = int8_model.apply({"params": qparams}, *args, method="prefill")
    both, _ = w8a8_model.apply({"params": qparams}, *args, method="prefill")
    assert float(jnp.abs(both - weights_only).max()) > 0  # int8 activations change the prefill
    assert float(jnp.abs(both - ref).max()) < 0.1 * float(jnp.abs(ref).max())
    assert float(jnp.abs(weights_only - ref).max()) < 0.1 * float(jnp.abs(ref).max())
