"""Planning work units: the format registry, config errors, host shares, fingerprints, I/O retries."""

import dataclasses
from typing import ClassVar

import pytest

from bad_images import good_jpeg
from recap_jax.data import inputs, storage
from recap_jax.data.inputs import Failure, Sample, WorkUnit, base
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


@dataclasses.dataclass(frozen=True)
class _LinesUnit(WorkUnit):
    format: ClassVar[str] = "lines"
    first: int = 0


class _LinesInput(base.InputFormat):
    """A toy format: each line of a text file is a sample; "bad" lines fail."""
    name = "lines"
    options = ("lines_per_unit",)

    def __init__(self, lines_per_unit: int = 2):
        self.lines_per_unit = lines_per_unit

    def plan(self, paths):
        count = sum(len(p.read_text().splitlines()) for p in paths)
        return [_LinesUnit(i, str(paths[0]), first=start)
                for i, start in enumerate(range(0, count, self.lines_per_unit))]

    @staticmethod
    def read(unit):
        lines = open(unit.path).read().splitlines()[unit.first:unit.first + 2]
        for n, line in enumerate(lines, unit.first):
            yield Failure(str(n), unit.path, "bad line") if line == "bad" else Sample(str(n), unit.path, line.encode())


def test_a_registered_format_plans_and_reads_through_the_common_entry_points(tmp_path, monkeypatch):
    monkeypatch.setitem(base.FORMATS, "lines", _LinesInput)  # what @register does, undone after the test
    (tmp_path / "in.txt").write_text("a\nbad\nc\n")
    units = inputs.plan_work_units("lines", str(tmp_path / "in.txt"), lines_per_unit=2, files_per_unit=9)
    assert [u.first for u in units] == [0, 2]  # its own option taken, another format's ignored
    items = [item for unit in units for item in inputs.read_unit(unit)]
    assert [type(i).__name__ for i in items] == ["Sample", "Failure", "Sample"]
    assert items[2].image_bytes == b"c"
    assert inputs.units_fingerprint(units) != inputs.units_fingerprint(units[:1])
    with pytest.raises(ValueError, match="registered twice"):
        base.register(_LinesInput)
    with pytest.raises(ConfigError, match=r"input\.format='parquet': expected one of \(.*'lines'"):
        inputs.plan_work_units("parquet", str(tmp_path / "in.txt"))


def test_built_in_formats_are_registered():
    assert set(base.FORMATS) >= {"folder", "webdataset", "tfds"}
    for name, cls in base.FORMATS.items():
        assert cls.name == name
