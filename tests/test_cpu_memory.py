"""bf16 weights on CPU hold one copy: the loader writes blocks in place, at most two reads in
flight, and the caption programs up-cast one layer and one LM-head slice at a time (XLA:CPU
computes bf16 in f32), with the tokens of the programs that up-cast everything at once."""

import functools
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from caption_helpers import chunked_tiny_checkpoint
from recap_jax.captioning import model_loading, param_reads
from recap_jax.captioning.tiny_demo import tiny_llava_hf_config
from recap_jax.conversion import bundle
from recap_jax.conversion.llava import abstract_params
from recap_jax.decoding import programs as programs_lib
from recap_jax.decoding import steps
from recap_jax.decoding.sampler import Request, Sampler
from recap_jax.decoding.settings import DecodeSettings
from recap_jax.models.config import llava_config_from_hf
from recap_jax.models.llama import column_chunked_dot, head_columns
from recap_jax.models.llava import LlavaModel

CPU = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return chunked_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), seed=3)


def test_block_update_writes_bf16_in_place():
    compiled = param_reads.block_update(CPU).lower(
        jax.ShapeDtypeStruct((64, 4096), jnp.bfloat16), jax.ShapeDtypeStruct((4, 4096), jnp.bfloat16),
        jax.ShapeDtypeStruct((2,), jnp.int32)).compile()
    text = compiled.as_text()
    assert "f32[" not in text  # not rewritten through f32 (XLA:CPU's float normalisation)
    assert "input_output_alias={ {}: (0," in text  # written into the donated leaf
    assert compiled.memory_analysis().temp_size_in_bytes < 4 * 4096 * 2


class _CountingStore:
    """A TensorStore whose host reads are tracked while alive (`most`: the most at once)."""

    def __init__(self, store):
        self._store, self._alive, self.most, self.reads = store, [], 0, 0
        self.shape, self.dtype, self.chunk_layout = store.shape, store.dtype, store.chunk_layout

    def __getitem__(self, index):
        return _CountingRead(self, self._store[index])

    def read(self):
        return _CountingRead(self, self._store).read()

    def track(self, array: np.ndarray) -> np.ndarray:
        self._alive = [r for r in self._alive if r() is not None] + [weakref.ref(array)]
        self.most, self.reads = max(self.most, len(self._alive)), self.reads + 1
        return array


class _CountingRead:
    def __init__(self, owner: _CountingStore, view):
        self._owner, self._view = owner, view

    def read(self):
        return _Done(self._owner.track(np.array(self._view.read().result())))


class _Done:  # a finished read (TensorStore's future)
    def __init__(self, array: np.ndarray):
        self._array = array

    def result(self) -> np.ndarray:
        return self._array


def test_leaf_reads_are_blocks_two_at_most_in_flight(checkpoint, monkeypatch):
    monkeypatch.setattr(param_reads, "READ_BYTES", 4000)
    path = ("language_model", "embed_tokens", "embedding")
    store = param_reads.open_leaf(checkpoint / "params" / bundle.PYTREE_DIR, path)
    counting = _CountingStore(store)
    leaf = param_reads.read_leaf(counting, jax.ShapeDtypeStruct(store.shape, np.float32, sharding=CPU), "embedding")
    assert counting.reads >= 4  # read in blocks, not whole ...
    assert counting.most <= 2  # ... and the reads do not pile up behind the updates
    np.testing.assert_array_equal(np.asarray(leaf), store.read().result())


def test_read_block_splits_the_second_axis_when_a_row_is_large(checkpoint, monkeypatch):
    path = ("language_model", "layers", "gate_proj", "kernel")
    store = param_reads.open_leaf(checkpoint / "params" / bundle.PYTREE_DIR, path)
    chunk = store.chunk_layout.read_chunk.shape
    assert chunk[1] < store.shape[1]  # the fixture's chunks split axis 1
    monkeypatch.setattr(param_reads, "READ_BYTES", chunk[1] * store.shape[2] * 4)  # one chunk of one row
    assert param_reads.read_block(store, np.float32) == (1, chunk[1], store.shape[2])
    leaf = param_reads.read_leaf(store, jax.ShapeDtypeStruct(store.shape, jnp.bfloat16, sharding=CPU), "gate")
    np.testing.assert_array_equal(np.asarray(leaf), store.read().result().astype(jnp.bfloat16))


def _decode_temp_bytes(model: LlavaModel, settings: DecodeSettings, options) -> int:
    params = nn.unbox(abstract_params(model.config, jnp.bfloat16))
    state = jax.eval_shape(functools.partial(steps.init_state, model, settings, jnp.bfloat16))
    decode = jax.jit(functools.partial(steps.decode_steps, model, settings, 1), donate_argnums=(1,),
                     compiler_options=options)
    return decode.lower(params, state, jax.ShapeDtypeStruct((), jnp.int32)).compile().memory_analysis() \
        .temp_size_in_bytes


def test_cpu_decode_upcasts_a_layer_at_a_time():
    """Compiled temps of a weight-heavy bf16 decode loop: below half the params' bytes with the
    CPU options and a sliced LM head; above the params' bytes (every weight in f32) without."""
    config = llava_config_from_hf(tiny_llava_hf_config(vocab_size=4096, hidden=256, heads=4, kv_heads=2,
                                                       text_layers=4, image_size=28, patch_size=14,
                                                       vision_layers=1))
    params_bytes = sum(x.size * 2 for x in jax.tree.leaves(nn.unbox(abstract_params(config, jnp.bfloat16))))
    settings = DecodeSettings(max_new_tokens=4, batch_size=1, prefill_batch=1, prompt_buckets=(32,))
    model = LlavaModel(config, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    options = programs_lib.cpu_upcast_options(model, None)
    assert options is not None and programs_lib.cpu_upcast_options(LlavaModel(config), None) is None  # f32: none
    columns = head_columns(config.text.vocab_size, config.text.hidden_size, 256 * 1024)
    assert columns == 256
    per_layer = _decode_temp_bytes(model.clone(head_columns=columns), settings, options)
    hoisted = _decode_temp_bytes(model, settings, None)
    assert per_layer < 0.5 * params_bytes < params_bytes < hoisted, (per_layer, params_bytes, hoisted)


def test_column_chunked_dot_equals_one_dot():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 48)), jnp.bfloat16)
    kernel = jnp.asarray(rng.normal(size=(48, 256)), jnp.bfloat16)
    dims = (((1,), (0,)), ((), ()))
    chunked = jax.jit(lambda a, b: column_chunked_dot(64)(a, b, dims))(x, kernel)
    np.testing.assert_array_equal(np.asarray(chunked), np.asarray(jax.lax.dot_general(x, kernel, dims)))
    with pytest.raises(ValueError, match="multiple of 100"):
        column_chunked_dot(100)(x, kernel, dims)


def test_cpu_bf16_captions_equal_the_hoisted_programs(checkpoint, monkeypatch):
    """Per-layer up-casts and a sliced LM head give the tokens of the programs that up-cast every
    weight at once (both rounding every bf16 op: with XLA's excess precision, which
    intermediates stay f32 follows the fusions, and ties can break either way)."""
    spec, params = model_loading.load_captioner(checkpoint=str(checkpoint), dtype="bfloat16")
    model = LlavaModel(spec.config, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    settings = DecodeSettings(max_new_tokens=12, batch_size=2, prefill_batch=1, prompt_buckets=(64,))
    encoder = spec.prompt_encoder()
    side = spec.config.vision.image_size
    rng = np.random.default_rng(5)
    requests = [Request(encoder.encode(text), rng.uniform(-1, 1, (side, side, 3)).astype(np.float32), i)
                for i, text in enumerate(["describe the image", "what is here"])]

    def tokens():
        return {r.tag: r.tokens.tolist() for r in Sampler(model, params, settings, cache_dtype=jnp.bfloat16)
                .generate(iter(requests))}

    monkeypatch.setattr(programs_lib, "CPU_HEAD_SLICE_BYTES", 48 * 4 * 64)  # the head in 4 slices
    assert head_columns(spec.config.text.vocab_size, spec.config.text.hidden_size, 48 * 4 * 64) == 64
    per_layer = tokens()
    monkeypatch.setattr(programs_lib, "CPU_HEAD_SLICE_BYTES", 2**40)  # one head dot
    monkeypatch.setattr(programs_lib, "cpu_upcast_options", lambda *_: {"xla_allow_excess_precision": False})
    assert per_layer == tokens()
    assert all(len(t) == 12 for t in per_layer.values())
