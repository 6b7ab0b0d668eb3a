"""Reading the released data as users hold it: img2dataset tars with a captions map, Parquet joined by key."""

import pytest
import tensorflow_datasets as tfds

from recap_jax.clip import synthetic
from recap_jax.errors import ConfigError
from recap_jax.data.captions_map import CaptionSource, parse_captions_map
from recap_jax.release.parquet_export import export_parquet
from recap_jax.release.webdataset_records import WebdatasetRecords
from release_helpers import write_img2dataset_tar

MAP = "org_caption=txt,re_caption=json:re_caption"


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    root = tmp_path_factory.mktemp("released")
    records = synthetic.make_records(12, 16, seed=4)
    write_img2dataset_tar(root / "00000.tar", records[:7])
    write_img2dataset_tar(root / "00001.tar", records[7:])
    return root, records


def test_captions_map_parsing():
    assert parse_captions_map(MAP) == {"org_caption": CaptionSource("txt"),
                                       "re_caption": CaptionSource("json", "re_caption")}
    assert parse_captions_map("re_caption=parquet:re_caption,org_caption=json:caption")["org_caption"] == \
        CaptionSource("json", "caption")
    for bad, match in (("org_caption=txt", r"no source for \['re_caption'\]"),
                       ("org_caption=txt,re_caption=json", "json:FIELD"),
                       ("caption=txt,re_caption=txt", "TARGET=SOURCE")):
        with pytest.raises(ConfigError, match=match):
            parse_captions_map(bad)


def test_tars_give_the_records_of_our_output(samples, tmp_path):
    root, records = samples
    source = WebdatasetRecords([str(root / "00000.tar"), str(root / "00001.tar")], MAP)
    assert len(source) == 12 and source.missing == []
    ours = tfds.builder_from_directory(synthetic.write_captioner_output(str(tmp_path / "out"), records)) \
        .as_data_source("train")
    for i in range(12):
        got, want = source[i], ours[i]
        assert got["key"] == want["key"].decode() and got["url"] == want["url"].decode()
        assert got["org_caption"] == want["org_caption"].decode()
        assert got["re_caption"] == want["re_caption"].decode()
        assert got["image"] == bytes(want["image"])


def test_missing_mapped_captions_are_reported_per_sample(tmp_path):
    records = synthetic.make_records(5, 16, seed=6)
    drop = {(records[1]["key"], "re_caption"), (records[3]["key"], "txt"), (records[4]["key"], "png")}
    write_img2dataset_tar(tmp_path / "a.tar", records, drop=drop)
    source = WebdatasetRecords([str(tmp_path / "a.tar")], MAP)
    assert [source[i]["key"] for i in range(len(source))] == [records[0]["key"], records[2]["key"]]
    reasons = {m["key"]: m["reason"] for m in source.missing}
    assert reasons == {records[1]["key"]: "mapped caption missing: re_caption (json:re_caption)",
                       records[3]["key"]: "mapped caption missing: org_caption (txt)",
                       records[4]["key"]: "no image member (has ['json', 'txt'])"}
    with pytest.raises(ConfigError, match="no sample of 1 tar"):
        WebdatasetRecords([str(tmp_path / "a.tar")], "org_caption=txt,re_caption=json:no_such_field")


def test_parquet_captions_joined_by_key(samples, tmp_path):
    root, records = samples
    # Tars as img2dataset made them from the released Parquet: only the alt-text in .txt.
    write_img2dataset_tar(tmp_path / "only_images.tar", records, json_fields=())
    export_parquet(synthetic.write_captioner_output(str(tmp_path / "out"), records), str(tmp_path / "pq"),
                   progress=False)
    source = WebdatasetRecords([str(tmp_path / "only_images.tar")], "org_caption=txt,re_caption=parquet:re_caption",
                               parquet=[str(tmp_path / "pq" / "train-00000.parquet")])
    assert [source[i]["re_caption"] for i in range(len(source))] == [r["re_caption"] for r in records]
    with pytest.raises(ConfigError, match="captions_parquet"):
        WebdatasetRecords([str(tmp_path / "only_images.tar")], "org_caption=txt,re_caption=parquet:re_caption")


def test_clip_trained_from_tars_equals_clip_trained_from_our_output(tmp_path):
    """20 steps from img2dataset tars (captions in .txt/.json) and from our ArrayRecord output of
    the same samples give bit-identical params."""
    import jax
    import numpy as np

    from clip_helpers import tiny_config
    from recap_jax.clip import trainer

    records = synthetic.make_records(48, 32, seed=8)
    write_img2dataset_tar(tmp_path / "00000.tar", records[:30])
    write_img2dataset_tar(tmp_path / "00001.tar", records[30:], drop={(records[40]["key"], "txt")})
    kept = [r for r in records if r["key"] != records[40]["key"]]
    paths = {"train": synthetic.write_captioner_output(str(tmp_path / "ours"), kept, num_units=2),
             "tokenizer": synthetic.write_word_tokenizer(str(tmp_path / "tok"), synthetic.vocabulary())}
    results = []
    for source in ("ours", "tars"):
        config = tiny_config(paths, tmp_path / f"run_{source}", num_steps=20, warmup_steps=2, log_every=10,
                             checkpoint_every=20, global_batch_size=16)
        config.eval.datasets.heldout.folder = ""
        if source == "tars":
            config.data.format = "webdataset"
            config.data.folders = str(tmp_path / "0000*.tar")
            config.data.captions_map = MAP
        results.append(trainer.train(config)["params"])
    same = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))), *results)
    assert all(jax.tree.leaves(same))
    report = (tmp_path / "run_tars" / "missing_captions.jsonl").read_text().splitlines()
    assert len(report) == 1 and records[40]["key"] in report[0] and "org_caption (txt)" in report[0]
    # and the runs did move the params (the comparison is not between two untouched inits)
    import json
    rows = [json.loads(line) for line in (tmp_path / "run_ours" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["grad_norm"] > 0 and r["learning_rate"] > 0 for r in rows)


def test_caption_job_takes_the_alt_text_from_the_mapped_member(tmp_path):
    """Released data fetched with re_caption as img2dataset's caption_col: the alt-text is in the json."""
    from recap_jax.data import inputs

    records = synthetic.make_records(4, 16, seed=9)
    write_img2dataset_tar(tmp_path / "a.tar", records, txt="re_caption", json_fields=("org_caption",),
                          drop={(records[2]["key"], "org_caption")})
    units = inputs.plan_work_units("webdataset", str(tmp_path / "a.tar"), org_caption="json:org_caption")
    items = [item for unit in units for item in inputs.read_unit(unit)]
    assert [type(i).__name__ for i in items] == ["Sample", "Sample", "Failure", "Sample"]
    assert [i.org_caption for i in items if isinstance(i, inputs.Sample)] == [
        records[k]["org_caption"] for k in (0, 1, 3)]
    assert items[2].reason == "mapped caption missing: org_caption (json:org_caption)"
    # without the mapping the .txt member (here the recaption) would be taken: the config decides
    default = [item for unit in inputs.plan_work_units("webdataset", str(tmp_path / "a.tar"))
               for item in inputs.read_unit(unit)]
    assert default[0].org_caption == records[0]["re_caption"]
    with pytest.raises(ConfigError, match="input.org_caption"):
        inputs.plan_work_units("webdataset", str(tmp_path / "a.tar"), org_caption="parquet:org_caption")
