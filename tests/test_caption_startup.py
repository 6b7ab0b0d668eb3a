"""The caption job's start-up and input path: uint8 pixels normalised on the device give the host
path's values and captions; programs compiled ahead leave the sampler nothing to compile; the
tokenizer loads without PyTorch; the compile cache setting reaches JAX."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from recap_jax.captioning import model_loading
from recap_jax.captioning.compile_ahead import compile_ahead, use_compile_cache
from recap_jax.conversion.bundle import load_tokenizer
from recap_jax.conversion.llava import abstract_params
from recap_jax.decoding.programs import decode_programs
from recap_jax.decoding.sampler import Request, Sampler
from recap_jax.decoding.settings import DecodeSettings
from recap_jax.models.llava import LlavaModel
from recap_jax.parallel import mesh as mesh_lib
from recap_jax.preprocess.image import (ImageSettings, normalise_by_matching, normalise_on_device, normalise_table,
                                        preprocess_image, resize_image)
from tiny_llava import sample_images, save_tiny_llava

PROMPTS = ["describe the image .", "what is in this picture ?", "a photo of", "describe the scene ."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    hf_dir = save_tiny_llava(tmp_path_factory.mktemp("hf") / "tiny", kv_heads=2, seed=5)
    spec, params = model_loading.load_captioner(hf_dir=str(hf_dir))
    return hf_dir, spec, params


@pytest.mark.parametrize("mode", ["pad", "crop"])
def test_device_normalisation_equals_host(mode):
    settings = ImageSettings(size=24, mode=mode, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25))
    images = sample_images(0) + sample_images(1)
    host = np.stack([preprocess_image(im, settings) for im in images])
    raw = np.stack([resize_image(im, settings) for im in images])
    assert raw.dtype == np.uint8
    device = np.asarray(jax.jit(lambda x: normalise_on_device(x, normalise_table(settings)))(raw))
    np.testing.assert_array_equal(device, host)  # bit-identical, not close
    # The form other platforms compile (no gather), run here: every uint8 value of each channel.
    every = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    table = normalise_table(settings)
    matched = jax.jit(lambda x: normalise_by_matching(x, table))(every)
    np.testing.assert_array_equal(np.asarray(matched), table.T)


def _requests(spec, pixels_of):
    encoder = spec.prompt_encoder()
    images = sample_images(2)
    return [Request(encoder.encode(p), pixels_of(im), i) for i, (p, im) in enumerate(zip(PROMPTS, images))]


def test_uint8_requests_caption_like_float32(tiny):
    _, spec, params = tiny
    model = LlavaModel(spec.config)
    length = max(len(r.token_ids) for r in _requests(spec, lambda im: np.zeros(1)))
    settings = DecodeSettings(max_new_tokens=8, batch_size=4, prefill_batch=2).for_prompt(length)
    floats = Sampler(model, params, settings).generate(_requests(spec, lambda im: preprocess_image(im, spec.image)))
    bytes_ = Sampler(model, params, settings, image=spec.image).generate(
        _requests(spec, lambda im: resize_image(im, spec.image)))
    expected = {r.tag: r.tokens.tolist() for r in floats}
    got = {r.tag: r.tokens.tolist() for r in bytes_}
    assert got == expected and len(got) == len(PROMPTS)


def test_uint8_pixels_without_image_settings_are_refused(tiny):
    _, spec, params = tiny
    requests = _requests(spec, lambda im: resize_image(im, spec.image))
    settings = DecodeSettings(max_new_tokens=2, batch_size=2, prefill_batch=2).for_prompt(
        max(len(r.token_ids) for r in requests))
    with pytest.raises(ValueError, match="uint8 pixels"):
        list(Sampler(LlavaModel(spec.config), params, settings).generate(requests))


def test_compiled_ahead_programs_are_not_compiled_again(tiny):
    _, spec, params = tiny
    model = LlavaModel(spec.config)
    mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, jax.local_devices())
    requests = _requests(spec, lambda im: resize_image(im, spec.image))
    settings = DecodeSettings(max_new_tokens=6, batch_size=2, prefill_batch=2, steps_per_sync=3).for_prompt(
        max(len(r.token_ids) for r in requests))
    params = jax.tree.map(jax.device_put, params,
                          mesh_lib.params_shardings(mesh, abstract_params(spec.config)))
    programs = decode_programs(model, settings, jnp.float32, mesh, spec.image)
    compiles = []

    def on_event(event, seconds, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(seconds)

    jax.monitoring.register_event_duration_secs_listener(on_event)
    try:
        compile_ahead(model, settings, mesh, jnp.float32, programs, pixels_dtype=jnp.uint8).wait()
        ahead = len(compiles)
        sampler = Sampler(model, params, settings, mesh=mesh, image=spec.image, programs=programs)
        results = list(sampler.generate(requests))
    finally:
        jax.monitoring.unregister_event_duration_listener(on_event)
    assert ahead >= 3  # init, prefill, decode (and the small programs they build)
    assert len(results) == len(PROMPTS)
    # The calls hit the executables compiled ahead: nothing compiled while captioning.
    assert len(compiles) == ahead


def test_tokenizer_loads_without_torch_and_equals_autotokenizer(tiny):
    hf_dir = tiny[0]
    ours = load_tokenizer(hf_dir)
    auto = transformers.AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True)
    assert type(ours) is type(auto)
    text = "<|begin_of_text|>describe <image> the photo , left to right ."
    assert ours(text)["input_ids"] == auto(text)["input_ids"]
    ids = auto(text)["input_ids"]
    assert ours.decode(ids, skip_special_tokens=True) == auto.decode(ids, skip_special_tokens=True)
    script = ("import sys; from recap_jax.conversion.bundle import load_tokenizer; "
              f"load_tokenizer({str(hf_dir)!r}); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.stdout.strip() == "False"


def test_compile_cache_dir_reaches_jax(tmp_path, monkeypatch):
    before = jax.config.jax_compilation_cache_dir
    monkeypatch.setenv("HOME", str(tmp_path))
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        use_compile_cache("~/xla")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
        use_compile_cache("~/other")  # a folder JAX already has (JAX_COMPILATION_CACHE_DIR) wins
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
        use_compile_cache("")  # off
        assert jax.config.jax_compilation_cache_dir is None
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
