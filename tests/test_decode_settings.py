"""Decode settings derived from the prompt: one prompt, one prefill length; the cache is the
prompt + max_new_tokens rounded up to a tile."""

import pytest

from configs_loader import load
from recap_jax.decoding.settings import CONDITIONED_EXTRA, DecodeSettings


def test_buckets_and_cache_come_from_the_prompt():
    settings = DecodeSettings(max_new_tokens=128).for_prompt(616)
    assert settings.prompt_buckets == (616,) and settings.bucket(616) == 616
    assert settings.cache_length == 768  # 616 + 128 = 744, rounded up to the 128 tile
    cpu = DecodeSettings(max_new_tokens=64, cache_tile=16).for_prompt(89)
    assert cpu.cache_length == 160  # 153 -> 160
    with pytest.raises(ValueError, match="prompt_buckets"):
        cpu.bucket(90)


def test_a_conditioned_prompt_gets_room_for_its_alt_text():
    settings = DecodeSettings(max_new_tokens=32, cache_tile=4).for_prompt(100, conditioned=True)
    assert settings.prompt_buckets == tuple(100 + e for e in CONDITIONED_EXTRA)
    assert settings.bucket(101) == 100 + CONDITIONED_EXTRA[0]
    assert settings.cache_length == 100 + CONDITIONED_EXTRA[-1] + 32


def test_configured_buckets_override_and_unresolved_settings_say_so():
    assert DecodeSettings(prompt_buckets=(64, 128)).for_prompt(50).prompt_buckets == (64, 128)
    with pytest.raises(ValueError, match="for_prompt"):
        DecodeSettings().cache_length
    with pytest.raises(ValueError, match="cache_tile"):
        DecodeSettings(cache_tile=0)


def test_the_cpu_config_sets_no_buckets():
    config = load("cpu_small.py")
    assert tuple(config.decode.prompt_buckets) == ()
    settings = DecodeSettings.from_config(config.decode).for_prompt(90)
    assert settings.prompt_buckets == (90,) and settings.cache_length % config.decode.cache_tile == 0
