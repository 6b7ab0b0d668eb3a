"""Loading a converted checkpoint leaf by leaf, a chunk of rows at a time, into its shardings and
dtype: values equal Orbax's own whole-tree load, chunks that do not divide a leaf included."""

import jax
import numpy as np
import orbax.checkpoint.experimental.v1 as ocp
import pytest
from flax import traverse_util

from caption_helpers import chunked_tiny_checkpoint
from recap_jax.captioning import model_loading, param_reads
from recap_jax.conversion import bundle
from recap_jax.errors import ConversionError
from recap_jax.parallel import mesh as mesh_lib


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return chunked_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), seed=1)


def reference(checkpoint):
    return traverse_util.flatten_dict(ocp.load(checkpoint / "params"))


def test_storage_is_chunked_along_the_first_axis(checkpoint):
    store = param_reads.open_leaf(checkpoint / "params" / bundle.PYTREE_DIR,
                                  ("language_model", "embed_tokens", "embedding"))
    assert store.shape == (256, 48)
    assert store.chunk_layout.read_chunk.shape[0] < store.shape[0]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_chunked_reads_equal_orbax_load(checkpoint, monkeypatch, dtype):
    monkeypatch.setattr(param_reads, "READ_BYTES", 5000)  # reads of a few chunks; the last one short
    spec, _ = bundle.read_converted_spec(checkpoint)
    mesh = mesh_lib.make_mesh({"data": 1}, jax.devices()[:1])
    _, params = model_loading.load_captioner(
        checkpoint=str(checkpoint), dtype=dtype, shardings_fn=lambda b: mesh_lib.params_shardings(mesh, b))
    expected = reference(checkpoint)
    got = traverse_util.flatten_dict(params)
    assert set(got) == set(expected)
    for path, value in got.items():
        assert value.dtype == np.dtype(bundle.DTYPES[dtype]), path
        assert isinstance(value.sharding, jax.sharding.NamedSharding), path
        np.testing.assert_array_equal(np.asarray(value), np.asarray(expected[path]).astype(value.dtype),
                                      err_msg=str(path))


def test_shape_mismatch_names_the_param(checkpoint):
    store = param_reads.open_leaf(checkpoint / "params" / bundle.PYTREE_DIR,
                                  ("language_model", "norm", "scale"))
    with pytest.raises(ConversionError, match="language_model/norm/scale.*shape"):
        param_reads.read_leaf(store, jax.ShapeDtypeStruct((47,), np.float32,
                                                          sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])),
                              "language_model/norm/scale")
