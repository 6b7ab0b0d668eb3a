"""GenEval-mini's clauses and scoring, the DiT report's table and findings, the judge's files.

(The trained judge's accuracy and the scores of real, noise and generated images are asserted on
the `--quick` reproduce run in tests/test_reproduce.py.)"""

import numpy as np
import pytest

from recap_jax.clip import mini_world as world
from recap_jax.mini_paper import dit_report, geneval
from recap_jax.mini_paper import judge as judge_lib


def _perfect(scenes):
    """Judge predictions equal to the scenes' truth (small-object attributes of empty scenes: class 0)."""
    return {k: np.maximum(v, 0) for k, v in judge_lib.scene_labels(scenes).items()}


def test_descriptions_are_followed_exactly_by_their_own_scenes():
    scenes = world.make_scenes(60, seed=0, split="eval")
    clauses = [geneval.description_clauses(s) for s in scenes]
    result = geneval.prompt_following(_perfect(scenes), clauses)
    assert set(result["tasks"]) == set(geneval.TASKS) and result["overall"] == 1.0
    assert result["tasks"]["two_objects"]["num_images"] == sum(s.small_count > 0 for s in scenes)
    # A wrong background breaks colour attribution only; a wrong count breaks counting only.
    predictions = _perfect(scenes)
    predictions["background"] = (predictions["background"] + 1) % len(world.BACKGROUNDS)
    predictions["small_count"] = (predictions["small_count"] + 1) % 4
    tasks = geneval.prompt_following(predictions, clauses)["tasks"]
    assert tasks["colour_attribution"]["score"] == 0.0 and tasks["counting"]["score"] == 0.0
    assert tasks["colour"]["score"] == tasks["shape"]["score"] == tasks["position"]["score"] == 1.0
    # small_count is now wrong, and 3 -> 0 leaves no small objects: two_objects fails exactly there
    expected = np.mean([s.small_count != 3 for s in scenes if s.small_count])
    assert tasks["two_objects"]["score"] == pytest.approx(expected)


def test_alt_text_clauses_are_what_the_alt_text_states():
    assert geneval.alt_text_clauses("click here to buy now") == {}
    assert geneval.alt_text_clauses("star clipart") == {"shape": [("object", ("", "star"))]}
    out = geneval.alt_text_clauses("photo of a red circle")
    assert set(out) == {"shape", "colour"} and out["colour"] == [("object", ("red", "circle"))]
    out = geneval.alt_text_clauses("blue square on snow")
    assert out["colour_attribution"] == [("object", ("blue", "square")), ("background", "snow")]
    # "a dog on the beach": no shape, nothing to follow
    assert geneval.alt_text_clauses("a dog on the beach") == {}


def test_an_alt_text_object_may_be_the_main_or_the_small_one():
    scene = world.Scene("red", "circle", "plain", "left", "grass", "blue", "star", 2, seed=1)
    predictions = _perfect([scene])
    for text, holds in (("red circle", True), ("blue star", True), ("blue circle", False), ("star", True),
                        ("triangle picture", False)):
        clauses = geneval.alt_text_clauses(text)
        task = "colour" if "colour" in clauses else "shape"
        assert geneval.prompt_following(predictions, [clauses])["tasks"][task]["score"] == float(holds), text


def test_dit_table_and_findings_follow_the_numbers():
    def scores(geneval_overall, clip, fid_raw, fid_recap):
        return {"raw": {"overall": geneval_overall / 2, "clip_score": clip - 1, "fid": fid_raw},
                "recap": {"overall": geneval_overall, "clip_score": clip, "fid": fid_recap}}

    rows = {"1.0": dit_report.row_numbers(scores(0.2, 20.0, 30.0, 40.0)),
            "0.0": dit_report.row_numbers(scores(0.6, 25.0, 31.0, 30.0))}
    table = dit_report.markdown_table(rows).splitlines()
    assert table[0] == ("| p (original caption) | Raw FID | Raw CLIP | Raw GenEval | Recap FID | Recap CLIP "
                        "| Recap GenEval |")
    assert table[3] == "| 0.0 | 31.0 | 24.0 | 30.0 | 30.0 | 25.0 | 60.0 |"
    found = dit_report.findings(rows, num_prompts=100)
    assert len(found) == 3 and all("REPRODUCED" in f and "NOT" not in f for f in found)
    rows["0.0"] = dit_report.row_numbers(scores(0.1, 19.0, 20.0, 45.0))
    assert all("NOT reproduced" in f for f in dit_report.findings(rows, num_prompts=100))
    # A rise within two standard errors is not a finding: 20% -> 26% of 100 prompts (2 SE = 8 points)
    rows["0.0"] = dit_report.row_numbers(scores(0.26, 25.0, 31.0, 30.0))
    assert "NOT reproduced" in dit_report.findings(rows, num_prompts=100)[0]
    assert "REPRODUCED" in dit_report.findings(rows, num_prompts=1000)[0]


def test_reliability_names_the_weak_attributes():
    accuracy = {name: 1.0 for name in judge_lib.ATTRIBUTES}
    assert "RELIABLE" in dit_report.reliability(accuracy) and "UNRELIABLE" not in dit_report.reliability(accuracy)
    accuracy["small_shape"] = 0.5  # not read by any clause of GenEval-mini's scores
    assert "UNRELIABLE" not in dit_report.reliability(accuracy)
    accuracy["position"] = 0.9
    assert "UNRELIABLE: position below 95%" in dit_report.reliability(accuracy)


def test_judge_files_round_trip(tmp_path):
    import jax

    settings = judge_lib.JudgeSettings(image_size=16, render_size=24)
    params = judge_lib.JudgeNet(settings.features).init(jax.random.key(0), np.zeros((1, 16, 16, 3), np.uint8))
    judge = judge_lib.Judge(params["params"], settings)
    judge.save(str(tmp_path / "judge"))
    loaded = judge_lib.Judge.load(str(tmp_path / "judge"))
    scenes = world.make_scenes(5, seed=0, split="eval")
    images = judge_lib.render_scenes(scenes, settings.render_size, 24)  # resized to 16 by the judge
    np.testing.assert_array_equal(judge.features(images), loaded.features(images))
    assert loaded.settings == settings and judge.features(images).shape == (5, settings.features)


def test_a_dit_text_row_without_its_clip_row_is_refused_before_any_stage_runs(tmp_path):
    import configs_loader
    from recap_jax.errors import ConfigError
    from recap_jax.mini_paper.run import run

    config = configs_loader.load("mini_paper.py")
    config.workdir = str(tmp_path / "run")
    config.clip.concat = False
    with pytest.raises(ConfigError, match="dit.text_row: 'concat'"):
        run(config)
    assert not (tmp_path / "run").exists()
