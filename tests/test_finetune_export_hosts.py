"""Multi-host export gating, unit-tested by faking the process index (a 2-process run is not cheap
here): every host gathers the params and saves them with Orbax into one shared temporary folder;
host 0 alone writes recap_config.json, the tokenizer and the llava-hf folder, and renames."""

import jax
import numpy as np
import pytest
from flax import traverse_util

from recap_jax.captioning import model_loading
from recap_jax.captioning.tiny_demo import build_tiny_checkpoint
from recap_jax.finetuning import export


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    ckpt = build_tiny_checkpoint(str(tmp_path_factory.mktemp("hosts") / "ckpt"))
    return model_loading.load_captioner(checkpoint=str(ckpt))


def _fake_hosts(monkeypatch, index: int, count: int) -> list[str]:
    barriers: list[str] = []
    monkeypatch.setattr(export, "hosts", lambda: (index, count))
    monkeypatch.setattr(export.multihost_utils, "sync_global_devices", barriers.append)
    return barriers


def test_only_host_0_writes_the_export_folders(tiny, tmp_path, monkeypatch):
    spec, params = tiny
    source = {"finetuned_from": "x", "step": 3, "trainable": "projector"}
    barriers = _fake_hosts(monkeypatch, 1, 2)
    assert export.export_hf(tmp_path / "other" / "export_hf", spec, params, "float32")
    assert not (tmp_path / "other").exists()  # host 1 gathered, wrote nothing
    export.export_converted(tmp_path / "other" / "export", spec, params, "float32", source)
    written = sorted(p.relative_to(tmp_path / "other").as_posix() for p in (tmp_path / "other").rglob("*"))
    assert not (tmp_path / "other" / "export").exists()
    assert ".export.tmp-step3/params/orbax.checkpoint" in written  # its share of the collective save
    assert not any(p.endswith(("recap_config.json", "tokenizer")) for p in written), written
    assert barriers == ["recap_jax export written"]

    barriers = _fake_hosts(monkeypatch, 0, 2)
    out = export.export_converted(tmp_path / "main" / "export", spec, params, "float32", source)
    export.export_hf(tmp_path / "main" / "export_hf", spec, params, "float32")
    assert barriers == ["recap_jax export written"]
    assert (out / "recap_config.json").exists() and (out / "tokenizer").is_dir()
    assert (tmp_path / "main" / "export_hf" / "config.json").exists()
    # The weights are shared like the JSON beside them (safetensors alone writes 0600).
    hf = tmp_path / "main" / "export_hf"
    assert (hf / "model.safetensors").stat().st_mode & 0o777 == (hf / "config.json").stat().st_mode & 0o777
    assert not list(hf.glob(".*"))  # no mode probe left behind
    assert [p.name for p in (tmp_path / "main").iterdir() if p.name.startswith(".")] == []  # renamed
    monkeypatch.undo()
    _, back = model_loading.load_captioner(checkpoint=str(out))
    same = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))), params, back)
    assert all(traverse_util.flatten_dict(same).values())
