"""Caption configs load and validate, the TPU one included (its path runs on CPU elsewhere)."""

import importlib.util
import pathlib

import pytest

from recap_jax.captioning.run import decode_settings, validate
from recap_jax.captioning.defaults import base_config
from recap_jax.decoding.settings import DecodeSettings
from recap_jax.errors import ConfigError

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"


def load(name, arg=None):
    spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg is not None else module.get_config()


def test_v4_256_config_validates_and_fits_a_v4_host():
    c = load("v4_256", "input=gs://b/datacomp,output=gs://b/recap,checkpoint=gs://b/ckpt/hqedit")
    validate(c)  # gs:// paths are checked when opened, not at start-up
    assert c.model.checkpoint == "gs://b/ckpt/hqedit" and c.input.paths == "gs://b/datacomp/*.tar"
    assert c.model.dtype == "bfloat16" and c.decode.max_new_tokens == 128
    chips_per_host = 4
    assert c.mesh.data * c.mesh.fsdp * c.mesh.tensor == chips_per_host
    assert c.decode.batch_size % c.mesh.data == 0 and c.decode.prefill_batch % c.mesh.data == 0
    settings = decode_settings(c, (128009,)).for_prompt(576 + 40)  # 576 image tokens + the paper's prompt
    assert settings.bucket(576 + 40) == 616  # prefill pads to the prompt's own length
    assert settings.cache_length == 768  # 616 + 128 new tokens, rounded up to a 128 tile
    with pytest.raises(ValueError, match="unknown config argument"):
        load("v4_256", "inputs=gs://typo")


@pytest.mark.parametrize("name,slice_name,captions_per_chip", [
    ("v5e_256", "v5e-256", 32), ("v5p_128", "v5p-128", 256), ("v6e_256", "v6e-256", 144)])
def test_every_generations_config_validates_with_w8a8(name, slice_name, captions_per_chip):
    """The configs `plan --compare` chose (docs/tpu_plan.md, "Every generation"): one replica per chip."""
    c = load(name, "input=gs://b/datacomp,output=gs://b/recap,checkpoint=gs://b/ckpt/hqedit")
    validate(c)
    assert c.model.quantize == "w8a8" and c.tpu.topology == slice_name and c.model.dtype == "bfloat16"
    assert c.mesh.data == 4 and c.mesh.fsdp * c.mesh.tensor == 1  # 4 chips per host, one replica each
    assert c.decode.batch_size == captions_per_chip * c.mesh.data and c.decode.prefill_batch % c.mesh.data == 0
    c.model.quantize = "int4"
    with pytest.raises(ConfigError, match="model.quantize"):
        validate(c)


@pytest.mark.parametrize("field,value,message", [
    ("model.dtype", "fp8", "model.dtype"), ("decode.max_new_tokens", 0, "max_new_tokens"),
    ("decode.prefill_batch", 99, "prefill_batch"), ("output.dir", "", "output.dir"),
    ("distributed.mode", "maybe", "distributed.mode"), ("prompt", " ", "prompt"),
    ("decode.sampling", "beam", "decode.sampling"), ("decode.top_p", 1.5, "decode.top_p"),
    ("decode.temperature", 0.0, "decode.temperature")])
def test_bad_fields_are_named(field, value, message):
    c = load("demo")
    section, name = field.split(".") if "." in field else (None, field)
    (c[section] if section else c)[name] = value
    with pytest.raises(ConfigError, match=message):
        validate(c)


def test_cpu_and_demo_configs_validate(tmp_path):
    validate(load("demo"))
    c = load("cpu_small")
    c.model.hf_dir, c.output.dir = str(tmp_path), str(tmp_path / "out")
    validate(c)
    c.model.checkpoint = "also-set"
    with pytest.raises(ConfigError, match="exactly one"):
        validate(c)


def test_decode_fields_are_the_settings_fields():
    c = base_config()
    assert dict(c.decode) == DecodeSettings.config_fields()
    assert decode_settings(c, (6,)) == DecodeSettings(stop_ids=(6,))
    c.decode.sampling, c.decode.top_k, c.decode.seed = "top_k", 1, 3
    settings = decode_settings(c, ())
    assert (settings.sampling, settings.top_k, settings.seed) == ("top_k", 1, 3)
