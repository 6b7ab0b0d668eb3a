"""The decode step's cache and layers: scanned and unrolled layers (`model.scan_layers`) caption
alike, the ring cache gives the tokens of a plain causal forward even after it wraps around, and
the compiled TPU decode loop never copies the KV cache (a v4 host from libtpu, no TPU needed)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from caption_helpers import image_prompt_requests
from recap_jax.captioning.tiny_demo import tiny_llava_hf_config
from recap_jax.decoding.sampler import Request, Sampler
from recap_jax.decoding.settings import DecodeSettings
from recap_jax.models.config import llava_config_from_hf
from recap_jax.models.llava import LlavaModel
from recap_jax.parallel.mesh import make_mesh
from recap_jax.planning import caption_plan, chips, hlo
from recap_jax.decoding.lowering import lower_caption_programs

CONFIG = llava_config_from_hf(tiny_llava_hf_config(image_size=56, patch_size=14))
NEW_TOKENS = 10
# cache_tile 1: the cache is exactly bucket + new tokens long, so 40 captions through 4 slots take
# more decode steps than the cache has columns and the ring wraps around.
SETTINGS = DecodeSettings(batch_size=4, prefill_batch=2, max_new_tokens=NEW_TOKENS, steps_per_sync=3,
                          prompt_buckets=(CONFIG.num_image_tokens + 16,), cache_tile=1)


def requests(n: int = 40) -> list[Request]:
    return image_prompt_requests(CONFIG, n, seed=0)


@pytest.fixture(scope="module")
def params():
    r = requests(1)[0]
    return nn.unbox(LlavaModel(CONFIG).init(jax.random.PRNGKey(0), jnp.asarray(r.token_ids[None]),
                                            jnp.asarray(r.pixels[None])))["params"]


def greedy_by_full_forward(params, request: Request) -> list[int]:
    """Greedy tokens from the model's plain causal forward over prompt + tokens so far (no cache)."""
    model, length = LlavaModel(CONFIG), SETTINGS.cache_length
    forward = jax.jit(lambda p, ids, pixels: model.apply({"params": p}, ids, pixels))
    ids = np.zeros((1, length), np.int32)
    n = len(request.token_ids)
    ids[0, :n] = request.token_ids
    tokens = []
    for _ in range(NEW_TOKENS):
        token = int(np.argmax(forward(params, ids, request.pixels[None])[0, n - 1]))
        tokens.append(token)
        ids[0, n] = token
        n += 1
    return tokens


def test_scanned_and_unrolled_layers_give_the_full_forwards_tokens(params):
    captions = {}
    for scan in (True, False):
        sampler = Sampler(LlavaModel(CONFIG, scan_layers=scan), params, SETTINGS)
        captions[scan] = {r.tag: r.tokens.tolist() for r in sampler.generate(iter(requests()))}
        steps = sampler.generated_tokens // SETTINGS.batch_size
        assert steps > SETTINGS.cache_length  # the ring wrapped around
    assert captions[True] == captions[False]
    reqs = requests()
    for i in (0, 17, 39):  # early, after a wrap, last
        assert captions[True][i] == greedy_by_full_forward(params, reqs[i])


def cache_copies(text: str, shapes: list[tuple[int, ...]]) -> list[str]:
    """Copies, transposes and loop fusions (outside other fusions: what is written to memory)
    whose result has the dims of the cache or of one layer of it, in any order: a relayout keeps
    the dims and moves them."""
    wanted = {tuple(sorted(s)) for s in shapes}
    fused = set(re.findall(r"calls=%([\w.\-]+)", text))
    found, computation = [], None
    for line in text.splitlines():
        head = re.match(r"^(?:ENTRY )?%(\S+) .*\{\s*$", line)
        if head:
            computation = head.group(1)
            continue
        m = re.match(r"\s*(?:ROOT )?%(\S+) = (\w+)\[([\d,]*)\]\S* (copy|transpose|fusion)\(", line)
        if not m or computation in fused or (m.group(4) == "fusion" and "kind=kLoop" not in line):
            continue
        dims = tuple(sorted(int(d) for d in m.group(3).split(",") if d))
        if dims in wanted and "dynamic-update-slice" not in m.group(1):
            found.append(m.group(1))
    return found


@pytest.mark.parametrize("scan", [True, False])
def test_compiled_v4_decode_loop_never_copies_the_cache(scan):
    devices = chips.compile_slice("v4-8").host_devices(0)
    settings = DecodeSettings(batch_size=16, prefill_batch=4, max_new_tokens=24, steps_per_sync=4,
                              prompt_buckets=(64,))
    # The 8B's attention tiles: head_dim 128 (the TPU's lane width), grouped heads.
    config = llava_config_from_hf(tiny_llava_hf_config(image_size=56, patch_size=14, hidden=512, heads=4,
                                                       kv_heads=2))
    model = LlavaModel(config, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, scan_layers=scan)
    lowered = lower_caption_programs(model, settings, make_mesh({"data": 4}, devices), jnp.bfloat16, buckets=[])
    text = lowered.decode.compile().as_text()
    t = config.text
    layer = (16 // 4, t.num_kv_heads, settings.cache_length, t.head_dim)  # one chip's slots
    assert cache_copies(text, [(t.num_layers, *layer), layer, (1, *layer)]) == []
    # Unrolled: the decode loop is the only loop; scanned, the layer scan runs inside it.
    assert len(hlo.while_trip_counts(text)) == (2 if scan else 1)
    stats = caption_plan.compile_stats(lowered.decode)
    assert stats.flops > 0
