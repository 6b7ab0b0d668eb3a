"""Conversion: layouts, dtypes, and refusals that name the offending tensor and write nothing."""

import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from recap_jax import convert
from recap_jax.captioning import model_loading
from recap_jax.conversion import bundle
from recap_jax.conversion.llava import LLAVA_HF_RENAMES, convert_params
from recap_jax.conversion.tensors import CheckpointTensors
from recap_jax.models.llava import LlavaModel
from tiny_llava import save_tiny_llava

K_PROJ = "language_model.model.layers.1.self_attn.k_proj.weight"


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return save_tiny_llava(tmp_path_factory.mktemp("hf") / "tiny")


def _copy_with(tmp_path, hf_dir, edit):
    """A copy of the checkpoint folder whose tensors went through `edit(dict)`."""
    folder = tmp_path / "edited"
    folder.mkdir()
    for f in hf_dir.iterdir():
        if f.suffix != ".safetensors":
            (folder / f.name).write_bytes(f.read_bytes())
    tensors = load_file(hf_dir / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors")
    return folder


def _run_convert(hf, out, capsys):
    code = convert.main(["--hf_dir", str(hf), "--out", str(out), "--dtype", "float32"])
    return code, capsys.readouterr().err


def test_wrong_shape_is_refused_naming_the_tensor(tmp_path, hf_dir, capsys):
    bad = _copy_with(tmp_path, hf_dir, lambda t: t.__setitem__(K_PROJ, np.zeros((48, 48), np.float32)))
    code, err = _run_convert(bad, tmp_path / "out", capsys)
    assert code == 2
    assert K_PROJ in err and "(48, 48)" in err
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.tmp*"))


def test_missing_tensor_is_refused_naming_the_tensor(tmp_path, hf_dir, capsys):
    bad = _copy_with(tmp_path, hf_dir, lambda t: t.pop("multi_modal_projector.linear_2.bias"))
    code, err = _run_convert(bad, tmp_path / "out", capsys)
    assert code == 2 and "projector:linear_2.bias" in err
    assert not (tmp_path / "out").exists()


def test_extra_layer_is_refused(tmp_path, hf_dir, capsys):
    extra = "language_model.model.layers.2.mlp.up_proj.weight"
    bad = _copy_with(tmp_path, hf_dir, lambda t: t.__setitem__(extra, np.zeros((96, 48), np.float32)))
    code, err = _run_convert(bad, tmp_path / "out", capsys)
    assert code == 2 and extra in err
    assert not (tmp_path / "out").exists()


def test_pickle_checkpoints_are_refused(tmp_path, hf_dir, capsys):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_bytes((hf_dir / "config.json").read_bytes())
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(Exception, match="pickle"):
        CheckpointTensors().add_folder(folder, LLAVA_HF_RENAMES)


def test_transformers5_key_names_convert_identically(tmp_path, hf_dir):
    def rename(t):
        for key in list(t):
            new = key.replace("language_model.model.", "model.language_model.").replace(
                "vision_tower.", "model.vision_tower.").replace("multi_modal_projector.", "model.multi_modal_projector.")
            t[new.replace("language_model.lm_head.", "lm_head.")] = t.pop(key)
    renamed = _copy_with(tmp_path, hf_dir, rename)
    spec = bundle.read_llava_hf_spec(hf_dir)
    a = convert_params(spec.config, bundle.llava_hf_tensors(hf_dir))
    b = convert_params(spec.config, bundle.llava_hf_tensors(renamed))
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_bfloat16_checkpoint_round_trip(tmp_path, hf_dir):
    assert convert.main(["--hf_dir", str(hf_dir), "--out", str(tmp_path / "bf16")]) == 0  # default bf16
    spec, params = model_loading.load_captioner(checkpoint=str(tmp_path / "bf16"), dtype="bfloat16")
    assert {x.dtype for x in jax.tree.leaves(params)} == {np.dtype(ml_dtypes.bfloat16)}
    _, params32 = model_loading.load_captioner(hf_dir=str(hf_dir))
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(params32)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y).astype(ml_dtypes.bfloat16))
    model = LlavaModel(spec.config, dtype=jax.numpy.bfloat16, param_dtype=jax.numpy.bfloat16)
    tokens = spec.prompt_encoder().encode("describe the image .")[None]
    pixels = np.zeros((1, 28, 28, 3), np.float32)
    logits = model.apply({"params": params}, tokens, pixels)
    logits32 = LlavaModel(spec.config).apply({"params": params32}, tokens, pixels)
    assert np.all(np.isfinite(np.asarray(logits)))
    # bf16 against f32, measured against the logits' own spread over the vocabulary (an absolute
    # tolerance says nothing if the logits are small): measured 0.046 off at a spread of 0.66.
    a, b = np.asarray(logits, np.float32), np.asarray(logits32)
    spread = float(b.std(axis=-1).mean())
    assert spread > 0 and np.abs(a - b).max() <= 0.1 * spread, (np.abs(a - b).max(), spread)
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.9  # the same greedy choices
    # A second conversion to the same folder needs --overwrite.
    assert convert.main(["--hf_dir", str(hf_dir), "--out", str(tmp_path / "bf16")]) == 2


def test_help():
    out = subprocess.run([sys.executable, "-m", "recap_jax.convert", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--hf_dir" in out.stdout and "safetensors" in out.stdout
