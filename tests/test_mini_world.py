"""The miniature world: deterministic, held-out combinations are new, alt-text noise as configured."""

import json
import tarfile

import numpy as np

from recap_jax.clip import mini_world as world
from recap_jax.mini_paper import world_files


def test_scenes_and_images_are_deterministic():
    a, b = world.make_scenes(20, seed=3, split="web"), world.make_scenes(20, seed=3, split="web")
    assert a == b
    assert np.array_equal(np.asarray(world.render(a[0], 56)), np.asarray(world.render(b[0], 56)))
    assert world.make_scenes(20, seed=4, split="web") != a
    rng_a, rng_b = np.random.default_rng(0), np.random.default_rng(0)
    assert [world.alt_text(s, rng_a)[0] for s in a] == [world.alt_text(s, rng_b)[0] for s in a]


def test_scene_contents_and_descriptions():
    scenes = world.make_scenes(400, seed=0, split="hq")
    counts = {s.small_count for s in scenes}
    assert counts == {0, 1, 2, 3}  # 1-4 objects
    assert {s.pattern for s in scenes} == set(world.PATTERNS)
    assert {s.background for s in scenes} == set(world.BACKGROUNDS)
    for s in scenes[:50]:
        text = s.description()
        assert world.names_main_object(text, s.label)
        assert set(text.split()) <= set(world.vocabulary())
        assert s.background in text and s.position in text


def test_held_out_combinations_are_new():
    key = lambda s: (s.colour, s.shape, s.background)  # noqa: E731
    train = {key(s) for split in ("web", "hq") for s in world.make_scenes(3000, seed=0, split=split)}
    held = {key(s) for s in world.make_scenes(300, seed=0, split="eval")}
    assert held and not held & train
    assert held <= world.held_out_triples()
    # every zero-shot class (colour x shape) still occurs in training, with other backgrounds
    assert {(c, s) for c, s, _ in held} <= {(c, s) for c, s, _ in train}


def test_alt_text_noise_rates_within_tolerance():
    rates = world.AltTextRates(unrelated=0.1, wrong_colour=0.2, no_colour=0.15, other_object=0.3)
    scenes = world.make_scenes(4000, seed=1, split="web")
    rng = np.random.default_rng(7)
    out = [world.alt_text(s, rng, rates) for s in scenes]
    unrelated = np.mean([m["unrelated"] for _, m in out])
    assert abs(unrelated - 0.1) < 0.02
    related = [(s, t, m) for s, (t, m) in zip(scenes, out) if not m["unrelated"]]
    with_small = [m for s, _, m in related if s.small_count]
    assert abs(np.mean([m["object"] == "small" for m in with_small]) - 0.3) < 0.03
    # wrong colour is flagged only if a colour was written (20% wrong x 85% kept)
    assert abs(np.mean([m["wrong_colour"] for _, _, m in related]) - 0.2 * 0.85) < 0.025
    for s, text, m in related:
        colour = s.colour if m["object"] == "main" else s.small_colour
        named = [w for w in text.split() if w in world.COLOURS]
        if m["wrong_colour"]:
            assert named and named[0] != colour
        elif named:
            assert named[0] == colour
    assert np.mean([len(t.split()) for _, t, _ in related]) < 6  # short, like web alt-text


def test_names_main_object():
    assert world.names_main_object("a large red striped circle at the left on a sky background", "red circle")
    assert not world.names_main_object("a large red striped square and two small blue circles", "blue circle")
    assert not world.names_main_object("red circle", "red circle")


def test_world_files_are_webdataset_tars(tmp_path):
    paths = world_files.write_world(str(tmp_path), num_web=12, num_hq=6, num_eval=5, image_size=32, seed=0,
                                    per_shard=8, rates=world.AltTextRates())
    tars = sorted((tmp_path / "web").glob("*.tar"))
    assert len(tars) == 2
    with tarfile.open(tars[0]) as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile(names[2]).read())
        assert names[:3] == ["web0000000.jpg", "web0000000.txt", "web0000000.json"]
        assert tar.extractfile(names[1]).read().decode() == meta["caption"]
    truth = world_files.read_truth(paths["eval"])
    assert len(truth) == 5 and all(world.names_main_object(t["description"], t["label"]) for t in truth.values())
    import tensorflow_datasets as tfds
    classes = tfds.builder_from_directory(paths["eval_classes"]).as_data_source("test")
    assert len(classes) == 5
    # rerun = nothing rewritten
    before = tars[0].stat().st_mtime_ns
    world_files.write_world(str(tmp_path), num_web=12, num_hq=6, num_eval=5, image_size=32, seed=0,
                            per_shard=8, rates=world.AltTextRates())
    assert tars[0].stat().st_mtime_ns == before
