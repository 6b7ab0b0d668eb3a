"""Planning work units: the format registry, config errors, host shares, fingerprints, I/O retries."""

import pytest

from bad_images import good_jpeg
from recap_jax.data import inputs, storage
from recap_jax.data.inputs.webdataset import TarUnit
from recap_jax.data.writer import OutputDataset
from recap_jax.errors import ConfigError


@pytest.mark.parametrize("fmt,paths,field", [
    ("zip", "x", "input.format"), ("folder", "/no/such/dir", "input.paths"), ("webdataset", "", "input.paths"),
    ("webdataset", "/no/such/*.tar", "input.paths"), ("tfds", "/tmp", "input.paths")])
def test_bad_input_config_names_the_field(fmt, paths, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        inputs.plan_work_units(fmt, paths)


def test_bad_unit_sizes_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"input\.files_per_unit"):
        inputs.plan_work_units("folder", str(tmp_path), files_per_unit=0)
    (tmp_path / "x.txt").write_text("no images here")
    with pytest.raises(ConfigError, match=r"input\.paths: no image files"):
        inputs.plan_work_units("folder", str(tmp_path))
    with pytest.raises(ConfigError, match=r"input\.paths: no tar shards"):
        inputs.plan_work_units("webdataset", str(tmp_path))


@pytest.mark.parametrize("hosts", range(1, 9))
def test_units_for_hosts_are_disjoint_and_cover(hosts):
    units = [TarUnit(i, f"{i}.tar") for i in range(13)]
    shares = [inputs.units_for_host(units, h, hosts) for h in range(hosts)]
    indices = sorted(u.index for share in shares for u in share)
    assert indices == list(range(13))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    with pytest.raises(ValueError):
        inputs.units_for_host(units, hosts, hosts)


def test_plan_is_deterministic_and_fingerprinted(tmp_path):
    for name in ("b", "a", "c"):
        (tmp_path / f"{name}.jpg").write_bytes(good_jpeg())
    first = inputs.plan_work_units("folder", str(tmp_path), files_per_unit=2)
    assert first == inputs.plan_work_units("folder", str(tmp_path), files_per_unit=2)
    fingerprint = inputs.units_fingerprint(first)
    (tmp_path / "d.jpg").write_bytes(good_jpeg())
    assert inputs.units_fingerprint(inputs.plan_work_units("folder", str(tmp_path), files_per_unit=2)) != fingerprint


def test_gs_paths_without_gcsfs_name_the_field(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_gcsfs(name, *args, **kwargs):
        if name == "gcsfs":
            raise ImportError("no gcsfs")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gcsfs)
    with pytest.raises(ConfigError, match=r"input\.paths: gs:// paths need gcsfs"):
        inputs.plan_work_units("webdataset", "gs://bucket/shards/*.tar")
    with pytest.raises(ConfigError, match=r"output\.dir: gs:// paths need gcsfs"):
        OutputDataset("gs://bucket/out", 2)


def test_retrying_helper(monkeypatch):
    monkeypatch.setattr(storage, "IO_BACKOFF_S", 0.0)
    calls = []

    def twice_reset():
        calls.append(1)
        if len(calls) < 3:
            raise TimeoutError("slow bucket")
        return b"ok"

    assert storage.retrying(twice_reset, "x") == b"ok" and len(calls) == 3
    calls.clear()

    def missing():
        calls.append(1)
        raise FileNotFoundError("gone")

    with pytest.raises(FileNotFoundError):
        storage.retrying(missing, "x")
    assert len(calls) == 1  # a missing file is not retried
