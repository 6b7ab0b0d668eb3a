"""The tfds input format: TFDS dataset folders and bare ArrayRecord files."""

import pytest

from input_helpers import keys_of, read_all
from recap_jax.captioning.defaults import base_config
from recap_jax.data import inputs
from recap_jax.data.inputs import Failure
from recap_jax.data.inputs.tfds import TfdsFields, parse_tf_example
from recap_jax.data.tfds_folder import open_tfds_folder
from recap_jax.data.writer import OutputDataset
from recap_jax.errors import ConfigError


def _record(key, caption="c"):
    return {"key": key, "url": f"http://x/{key}", "org_caption": f"alt {key}", "re_caption": caption,
            "image": b"\xff\xd8" + key.encode(), "width": 2, "height": 3, "org_caption_length": 2,
            "re_caption_length": 1}


def _recap_dataset(folder, units):
    out = OutputDataset(str(folder), len(units))
    for i, keys in enumerate(units):
        out.write_unit(i, [_record(k) for k in keys], [])
    assert out.finalize()
    return out


def test_tfds_input_reads_a_recap_dataset(tmp_path):
    _recap_dataset(tmp_path / "ds", [["x", "y"], ["z"]])
    units = inputs.plan_work_units("tfds", str(tmp_path / "ds"), records_per_unit=2)
    assert [(u.start, u.stop, u.split) for u in units] == [(0, 2, "train"), (2, 3, "train")]
    samples = read_all(units)
    assert keys_of(samples) == ["x", "y", "z"]
    assert samples[0].image_bytes == b"\xff\xd8x" and samples[0].org_caption == "alt x"
    assert samples[0].url == "http://x/x" and samples[0].source == "ds[0]"


def test_tfds_field_names_are_configurable(tmp_path):
    _recap_dataset(tmp_path / "ds", [["x"]])
    fields = TfdsFields(key=("no_such_field",), caption=("re_caption",), url=("key",))
    (sample,) = read_all(inputs.plan_work_units("tfds", str(tmp_path / "ds"), fields=fields))
    assert sample.key == "0" and sample.org_caption == "c" and sample.url == "x"
    with pytest.raises(ConfigError, match=r"input\.split"):
        inputs.plan_work_units("tfds", str(tmp_path / "ds"), split="validation")
    (failure,) = read_all(inputs.plan_work_units("tfds", str(tmp_path / "ds"),
                                                   fields=TfdsFields(image=("pixels",))))
    assert isinstance(failure, Failure) and "no encoded image" in failure.reason


def test_bare_array_record_files(tmp_path):
    out = _recap_dataset(tmp_path / "ds", [["x", "y"], ["z"]])
    units = inputs.plan_work_units("tfds", str(tmp_path / "ds" / "recap-train.array_record-*"),
                                    records_per_unit=1)
    assert [(u.split, u.start) for u in units] == [("", 0), ("", 1), ("", 0)]
    samples = read_all(units)
    assert keys_of(samples) == ["x", "y", "z"] and samples[2].image_bytes == b"\xff\xd8z"
    assert samples[1].org_caption == "alt y" and samples[1].url == "http://x/y"
    assert out.shard_path(0).exists()


def test_corrupt_record_is_a_failure(tmp_path):
    from array_record.python.array_record_module import ArrayRecordWriter
    good = parse_tf_example  # the records are tf.train.Examples
    out = _recap_dataset(tmp_path / "ds", [["x"]])
    raw = bytes(out.features.serialize_example(_record("w")))
    assert good(raw)["key"] == b"w"
    writer = ArrayRecordWriter(str(tmp_path / "mixed.array_record"), "group_size:1")
    for payload in (raw, b"\x0a\xff\xff garbage", raw):
        writer.write(payload)
    writer.close()
    items = read_all(inputs.plan_work_units("tfds", str(tmp_path / "mixed.array_record")))
    assert [type(i).__name__ for i in items] == ["Sample", "Failure", "Sample"]
    assert items[1].key == "1" and "unreadable record" in items[1].reason


# --- config errors and host shares ----------------------------------------------------------------



def test_split_and_fields_are_caption_config_fields(tmp_path):
    _recap_dataset(tmp_path / "ds", [["x", "y"]])
    config = base_config().input
    config.format, config.paths, config.records_per_unit = "tfds", str(tmp_path / "ds"), 1
    assert TfdsFields.parse(config.fields.to_dict()) == TfdsFields()  # the defaults are the reader's
    config.fields.caption = "no_such_field, re_caption"  # comma-separated, first present wins
    config.split = "train"
    units = inputs.plan_from_config(config)
    assert [(u.start, u.split) for u in units] == [(0, "train"), (1, "train")]
    assert [s.org_caption for s in read_all(units)] == ["c", "c"]
    config.split = "validation"
    with pytest.raises(ConfigError, match=r"input\.split='validation': .* it has \['train'\]"):
        inputs.plan_from_config(config)
    with pytest.raises(ConfigError, match=r"input\.fields: unknown entries \['label'\]"):
        TfdsFields.parse({"label": "y"})


def test_one_tfds_folder_opener_names_the_callers_fields(tmp_path):
    _recap_dataset(tmp_path / "ds", [["x", "y"]])
    source = open_tfds_folder(str(tmp_path / "ds"), "train", field="data.folders")
    assert len(source) == 2 and source[1]["key"] == b"y"
    assert len(open_tfds_folder(str(tmp_path / "ds"), None, field="eval.folder")) == 2  # default split
    with pytest.raises(ConfigError, match=r"eval\.folder: .* is not a TFDS dataset folder"):
        open_tfds_folder(str(tmp_path), "train", field="eval.folder")
    with pytest.raises(ConfigError, match=r"eval\.split='test'"):
        open_tfds_folder(str(tmp_path / "ds"), "test", field="eval.folder", split_field="eval.split")
