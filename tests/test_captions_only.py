"""output.store_images=false: a captions-only caption output, joined back with the input images."""

import json
import pathlib

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from caption_helpers import caption_command, read_output, run_caption, text, write_image_folder
from clip_helpers import tiny_config
from recap_jax.clip import synthetic
from recap_jax.data.schema import image_sha256
from recap_jax.errors import ConfigError
from recap_jax.release.image_join import ImageMismatchError, JoinedRecords
from tiny_llava import save_tiny_llava


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """A folder of images captioned with output.store_images=false, and the output the same run
    writes with its images (its records plus each input file's bytes, by the captioner's writer)."""
    root = tmp_path_factory.mktemp("captions_only")
    hf_dir = save_tiny_llava(root / "hf", kv_heads=2, seed=7)
    write_image_folder(root / "images", 12, seed=3)
    captions_dir = root / "captions-only"
    proc = run_caption(caption_command(hf_dir, root / "images", captions_dir, "--config.output.store_images=false"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    only = tfds.builder_from_directory(str(captions_dir)).as_data_source("train")
    records = []
    for i in range(len(only)):
        record = {k: text(v) if isinstance(v, bytes) else v for k, v in only[i].items()}
        record["image"] = next((root / "images").glob(record["key"] + ".*g")).read_bytes()
        records.append(record)
    full_dir = synthetic.write_captioner_output(str(root / "full"), records)
    return root, pathlib.Path(full_dir), captions_dir


def test_captions_only_output_has_no_image_feature(outputs):
    root, full_dir, captions_dir = outputs
    features = json.loads((captions_dir / "features.json").read_text())
    names = set(features["featuresDict"]["features"])
    assert "image" not in names and {"key", "url", "sha256", "re_caption", "org_caption", "width"} <= names
    only = read_output(captions_dir)
    assert len(only) >= 8 and "corrupt" not in only
    for key, record in only.items():
        assert "image" not in record and text(record["re_caption"])
        image = next((root / "images").glob(key + ".*g")).read_bytes()
        assert text(record["sha256"]) == image_sha256(image)  # computed before the bytes were dropped
    run_config = json.loads((captions_dir / "run_config.json").read_text())
    assert run_config["output.store_images"] is False and run_config["input.format"] == "folder"


def test_joined_records_equal_the_full_output_and_check_sha256(outputs, tmp_path):
    root, full_dir, captions_dir = outputs
    full = tfds.builder_from_directory(str(full_dir)).as_data_source("train")
    only = tfds.builder_from_directory(str(captions_dir)).as_data_source("train")
    joined = JoinedRecords(only, str(captions_dir))  # input.paths/format from its run_config.json
    assert len(joined) == len(full)
    for i in range(len(full)):
        assert joined[i]["key"] == full[i]["key"] and joined[i]["image"] == bytes(full[i]["image"])
    # an input changed after captioning is caught by its sha256
    import shutil
    images = tmp_path / "images"
    shutil.copytree(root / "images", images)
    keys = [text(only[i]["key"]) for i in range(len(only))]
    victim = next(images.glob(keys[1] + ".*g"))
    victim.write_bytes(victim.read_bytes()[:-1] + b"\0")
    changed = JoinedRecords(only, str(captions_dir), str(images), "folder")
    with pytest.raises(ImageMismatchError, match=keys[1]):
        changed[1]
    for p in images.glob(keys[2] + ".*"):
        p.unlink()
    with pytest.raises(ConfigError, match=rf"data.image_paths: 1 of {len(only)} records .* \['{keys[2]}'\]"):
        JoinedRecords(only, str(captions_dir), str(images), "folder")
    with pytest.raises(ConfigError, match="data.image_format='tfds'"):
        JoinedRecords(only, str(captions_dir), str(images), "tfds")


@pytest.mark.slow  # two CLIP runs: 162 s on the shared 2-core machine at load ~19
def test_clip_from_captions_only_plus_input_equals_clip_from_full_output(outputs, tmp_path):
    """N steps from (captions-only output + the input images) and from the full output: bit-identical."""
    root, full_dir, captions_dir = outputs
    tokenizer = synthetic.write_word_tokenizer(str(tmp_path / "tok"), synthetic.vocabulary())
    results = []
    for name, folder in (("full", full_dir), ("captions_only", captions_dir)):
        config = tiny_config({"train": str(folder), "tokenizer": tokenizer}, tmp_path / f"run_{name}",
                             num_steps=6, warmup_steps=1, log_every=3, checkpoint_every=6, global_batch_size=8)
        config.eval.datasets.heldout.folder = ""
        results.append(trainer_params(config))
    same = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))), *results)
    assert all(jax.tree.leaves(same))
    rows = [json.loads(line) for line in (tmp_path / "run_full" / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(r["grad_norm"] > 0 for r in rows)  # the params did move


def trainer_params(config):
    from recap_jax.clip import trainer

    return trainer.train(config)["params"]


def test_export_and_analyze_read_a_captions_only_output(outputs, tmp_path):
    import pyarrow.parquet as pq

    from recap_jax.analysis.run import AnalyzeSettings, analyze
    from recap_jax.release.parquet_export import export_parquet
    from recap_jax.release.rows import open_rows

    root, full_dir, captions_dir = outputs
    for name, folder in (("full", full_dir), ("only", captions_dir)):
        export_parquet(str(folder), str(tmp_path / f"pq_{name}"), progress=False)
    full, only = (pq.read_table(tmp_path / f"pq_{n}" / "train-00000.parquet") for n in ("full", "only"))
    assert only.num_rows == full.num_rows > 0 and only.equals(full)
    stats = {n: analyze(str(d), AnalyzeSettings(out=str(tmp_path / f"a_{n}"), progress=False))
             for n, d in (("full", full_dir), ("only", captions_dir))}
    same = [k for k, v in stats["full"].items() if str(full_dir) not in json.dumps(v, default=str)]
    assert "num_rows" in same and {k: stats["only"][k] for k in same} == {k: stats["full"][k] for k in same}
    # CLIP scores need images: joined from the caption job's input, or an error naming why
    joined = [r.image for r in open_rows(str(captions_dir), images=True)]
    assert joined == [r.image for r in open_rows(str(full_dir))] and all(joined)
    moved = tmp_path / "moved"
    import shutil
    shutil.copytree(captions_dir, moved)
    config = json.loads((moved / "run_config.json").read_text())
    config.pop("input.paths")
    (moved / "run_config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"--clip \(a captions-only output"):
        analyze(str(moved), AnalyzeSettings(out=str(tmp_path / "a_moved"), clip=str(tmp_path / "any"),
                                            progress=False))
