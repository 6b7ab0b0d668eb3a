"""The folder input format: image files with .txt / .json sidecars."""

import json

from bad_images import good_jpeg
from input_helpers import keys_of, read_all
from recap_jax.data import inputs
from recap_jax.data.inputs import Failure


def test_folder_units_keys_and_sidecars(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b", "a", "sub/c"):
        (tmp_path / f"{name}.jpg").write_bytes(good_jpeg())
    (tmp_path / "a.txt").write_text("alt text of a\n")
    (tmp_path / "b.json").write_text(json.dumps({"url": "http://b", "caption": "json caption of b"}))
    (tmp_path / "notes.md").write_text("not an image")
    (tmp_path / ".DS_Store.jpg").write_bytes(b"hidden")
    units = inputs.plan_work_units("folder", str(tmp_path), files_per_unit=2)
    assert [len(u.files) for u in units] == [2, 1] and [u.index for u in units] == [0, 1]
    samples = read_all(units)
    assert keys_of(samples) == ["a", "b", "sub/c"]
    assert samples[0].org_caption == "alt text of a" and samples[0].url == ""
    assert samples[1].org_caption == "json caption of b" and samples[1].url == "http://b"
    assert samples[2].source == str(tmp_path / "sub" / "c.jpg")


def test_folder_keys_stay_unique(tmp_path):
    for root in ("r1", "r2"):
        (tmp_path / root).mkdir()
        (tmp_path / root / "same.jpg").write_bytes(good_jpeg())
    (tmp_path / "r1" / "cat.jpg").write_bytes(good_jpeg())
    (tmp_path / "r1" / "cat.png").write_bytes(b"not really")
    units = inputs.plan_work_units("folder", [str(tmp_path / "r1"), str(tmp_path / "r2")])
    keys = keys_of(read_all(units))
    assert len(keys) == len(set(keys)) == 4
    assert "cat.jpg" in keys and "cat.png" in keys


def test_unreadable_file_is_a_failure(tmp_path):
    (tmp_path / "gone.jpg").write_bytes(good_jpeg())
    (unit,) = inputs.plan_work_units("folder", str(tmp_path))
    (tmp_path / "gone.jpg").unlink()  # removed between planning and reading
    (item,) = inputs.read_unit(unit)
    assert isinstance(item, Failure) and item.key == "gone" and "unreadable" in item.reason


# --- TFDS and ArrayRecord --------------------------------------------------------------------------


