"""The live-only decode attention (kernels/ragged_decode.py): the Pallas kernel in interpret mode
equals the XLA `decode_attention` on ring windows (wrapping, length 1, full), reads only the live
blocks, gives the tiny captioner's greedy tokens, and compiles for a v4 host as a Mosaic call."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from caption_helpers import image_prompt_requests
from recap_jax.captioning.tiny_demo import tiny_llava_hf_config
from recap_jax.decoding.lowering import lower_caption_programs
from recap_jax.decoding.programs import decode_attention_fn
from recap_jax.decoding.sampler import Request, Sampler
from recap_jax.decoding.settings import DecodeSettings
from recap_jax.errors import ConfigError
from recap_jax.kernels.ragged_decode import block_at, live_blocks, ragged_decode_attention
from recap_jax.models.config import llava_config_from_hf
from recap_jax.models.attention import decode_attention, ring_window
from recap_jax.models.llava import LlavaModel
from recap_jax.parallel.mesh import make_mesh
from recap_jax.planning import caption_plan, chips, hlo
from recap_jax.planning.model_spec import PlannedModel


def random_step(seed: int, batch: int, kv_heads: int, group: int, cache_length: int, head_dim: int = 16,
                layers: int = 2, dtype=jnp.float32):
    ks = jax.random.split(jax.random.PRNGKey(seed), 5)
    q = jax.random.normal(ks[0], (batch, 1, kv_heads * group, head_dim), dtype)
    k = jax.random.normal(ks[1], (layers, batch, kv_heads, cache_length, head_dim), dtype)
    v = jax.random.normal(ks[2], (layers, batch, kv_heads, cache_length, head_dim), dtype)
    k_new = jax.random.normal(ks[3], (batch, 1, kv_heads, head_dim), dtype)
    v_new = jax.random.normal(ks[4], (batch, 1, kv_heads, head_dim), dtype)
    return q, k, v, k_new, v_new


# (kv heads, group, cache length, block, positions (earlier tokens per row), ring column)
CASES = [
    (2, 3, 64, 16, [1, 63, 40, 17], 0),  # length 1 and a full row (T - 1), no wrap
    (2, 3, 64, 16, [1, 63, 40, 17], 9),  # windows wrap around the ring's end
    (1, 4, 48, 8, [0, 5, 47, 30, 12, 47], 47),  # an empty row; a window ending in its own first block
    (4, 1, 32, 32, [31, 3, 16], 20),  # one block; one query head per kv head
]


@pytest.mark.parametrize("kv_heads,group,cache_length,block,positions,column", CASES)
def test_kernel_equals_xla_decode_attention(kv_heads, group, cache_length, block, positions, column):
    q, k, v, k_new, v_new = random_step(len(positions), len(positions), kv_heads, group, cache_length)
    start, length = ring_window(jnp.asarray(positions), jnp.asarray(column), cache_length)
    kernel = jax.jit(functools.partial(ragged_decode_attention, block=block, interpret=True))
    for layer in (0, 1):
        expected = decode_attention(q, k, v, k_new, v_new, start, length, jnp.asarray(layer))
        got = kernel(q, k, v, k_new, v_new, start, length, jnp.asarray(layer))
        assert got.shape == expected.shape and got.dtype == expected.dtype
        np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-5)
    # One layer's cache without the layer index: the same result.
    np.testing.assert_allclose(kernel(q, k[1], v[1], k_new, v_new, start, length),
                               decode_attention(q, k[1], v[1], k_new, v_new, start, length), rtol=2e-5, atol=2e-5)


def test_kernel_in_bfloat16_is_close_to_xla():
    q, k, v, k_new, v_new = random_step(7, 4, 2, 2, 64, head_dim=32, dtype=jnp.bfloat16)
    start, length = ring_window(jnp.asarray([5, 63, 33, 1]), jnp.asarray(50), 64)
    got = ragged_decode_attention(q, k, v, k_new, v_new, start, length, jnp.asarray(1), block=16, interpret=True)
    expected = decode_attention(q, k, v, k_new, v_new, start, length, jnp.asarray(1))
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(expected, np.float32), atol=3e-2)


def test_grid_steps_visit_exactly_the_live_blocks():
    """Step i of a row reads its i-th live block; past them the index stays on the last live one
    (the pipeline does not copy an unchanged block again), so dead blocks are never read."""
    cache_length, block = 64, 8
    blocks = cache_length // block
    rng = np.random.default_rng(0)
    for _ in range(200):
        start, length = int(rng.integers(0, cache_length)), int(rng.integers(0, cache_length))
        live = {((start + j) % cache_length) // block for j in range(length)}
        first, count = live_blocks(jnp.asarray(start), jnp.asarray(length), block, blocks)
        visited = [int(block_at(jnp.asarray(i), jnp.asarray(start), jnp.asarray(length), block, blocks))
                   for i in range(blocks)]
        assert int(count) == len(live)
        assert set(visited[:len(live)]) == live and len(set(visited[:len(live)])) == len(live)
        if live:
            assert visited[len(live):] == [visited[len(live) - 1]] * (blocks - len(live))


def test_dead_blocks_are_not_accumulated():
    """NaN in every block outside the windows: the kernel's result stays finite and exact (the XLA
    form, which reads every column, turns NaN)."""
    cache_length, block = 64, 16
    q, k, v, k_new, v_new = random_step(3, 3, 2, 2, cache_length, layers=1)
    start, length = ring_window(jnp.asarray([10, 20, 3]), jnp.asarray(40), cache_length)  # windows in blocks 1-2
    dead = np.ones((cache_length,), bool)
    dead[16:48] = False
    poisoned = jnp.where(jnp.asarray(dead)[:, None], jnp.nan, v)
    got = ragged_decode_attention(q, k, poisoned, k_new, v_new, start, length, jnp.asarray(0), block=block,
                                  interpret=True)
    assert bool(jnp.all(jnp.isfinite(got)))
    np.testing.assert_allclose(got, decode_attention(q, k, v, k_new, v_new, start, length, jnp.asarray(0)),
                               rtol=2e-5, atol=2e-5)
    assert not bool(jnp.all(jnp.isfinite(decode_attention(q, k, poisoned, k_new, v_new, start, length,
                                                          jnp.asarray(0)))))


def test_attention_setting_is_checked_and_chooses_by_platform():
    with pytest.raises(ValueError, match="decode.attention"):
        DecodeSettings(attention="paged")
    from recap_jax.captioning.run import validate
    from configs_loader import load
    config = load("demo.py")
    config.decode.attention = "flash"
    with pytest.raises(ConfigError, match="decode.attention"):
        validate(config)
    assert DecodeSettings().attention == "auto"
    assert decode_attention_fn("auto", None) is None and decode_attention_fn("xla", None) is None  # CPU: XLA
    ragged = decode_attention_fn("ragged", None)
    assert ragged.func is ragged_decode_attention and ragged.keywords["interpret"] is True


CONFIG = llava_config_from_hf(tiny_llava_hf_config(image_size=56, patch_size=14))
# cache_tile 1: bucket + new tokens columns, so 24 captions through 4 slots wrap the ring.
SETTINGS = DecodeSettings(batch_size=4, prefill_batch=2, max_new_tokens=10, steps_per_sync=5,
                          prompt_buckets=(CONFIG.num_image_tokens + 16,), cache_tile=1)


def requests(n: int) -> list[Request]:
    return image_prompt_requests(CONFIG, n, seed=1)


def test_tiny_captioner_greedy_tokens_equal_xla():
    reqs = requests(24)
    params = nn.unbox(LlavaModel(CONFIG).init(jax.random.PRNGKey(0), jnp.asarray(reqs[0].token_ids[None]),
                                              jnp.asarray(reqs[0].pixels[None])))["params"]

    def captions(model, attention):
        sampler = Sampler(model, params, dataclasses.replace(SETTINGS, attention=attention))
        out = {r.tag: r.tokens.tolist() for r in sampler.generate(iter(reqs))}
        assert sampler.generated_tokens // SETTINGS.batch_size > SETTINGS.cache_length  # the ring wrapped
        return out

    xla = captions(LlavaModel(CONFIG), "xla")
    assert captions(LlavaModel(CONFIG), "ragged") == xla
    # Several blocks per row (the cache is 42 columns): a model given the kernel directly.
    blocks = functools.partial(ragged_decode_attention, block=14, interpret=True)
    assert captions(LlavaModel(CONFIG, attention=blocks), "xla") == xla


@pytest.fixture(scope="module")
def v4_host():
    return chips.compile_slice("v4-8").host_devices(0)


def test_v4_decode_program_runs_the_kernel_and_moves_no_cache(v4_host):
    """A tiny captioner with the 8B's head size, compiled for a v4 host (libtpu, no TPU): the decode
    loop holds the Mosaic call, no collective moves the cache, and the plan fits a chip."""
    from configs_loader import load
    hf = tiny_llava_hf_config(image_size=56, patch_size=14, hidden=512, heads=4, kv_heads=2)
    config = llava_config_from_hf(hf)
    settings = DecodeSettings(batch_size=16, prefill_batch=4, max_new_tokens=24, steps_per_sync=4,
                              prompt_buckets=(64,))
    mesh = make_mesh({"data": 4}, v4_host)
    texts = {}
    for attention in ("auto", "xla"):
        model = LlavaModel(config, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
        settings = dataclasses.replace(settings, attention=attention)
        lowered = lower_caption_programs(model, settings, mesh, jnp.bfloat16, buckets=[])
        texts[attention] = lowered.decode.compile().as_text()
    assert "tpu_custom_call" in texts["auto"] and "tpu_custom_call" not in texts["xla"]
    found = hlo.collectives(texts["auto"])
    assert not {c.kind for c in found} & {"all-gather", "all-to-all"}, found
    assert all(c.bytes <= 8 for c in found), found  # the loop condition's flags only

    job = load("demo.py")
    job.model.dtype, job.mesh.data = "bfloat16", 4
    job.decode.batch_size, job.decode.prefill_batch, job.decode.prompt_buckets = 16, 4, (64,)
    job.decode.max_new_tokens, job.decode.steps_per_sync = 24, 4
    plan = caption_plan.compile_caption(job, PlannedModel(config, config.num_image_tokens + 20, "tiny"), v4_host)
    assert caption_plan.fits(plan, chips.CHIPS["v4"], reserve_bytes=chips.GIB)
    assert not {c.kind for c in plan.functions["decode"].collectives} & {"all-gather", "all-to-all"}
