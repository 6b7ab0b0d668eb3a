"""`python -m recap_jax.reproduce --quick`: table, plot and JSON; the captioner names what it sees."""

import json
import os
import subprocess
import sys

import pytest

from configs_loader import load
from recap_jax.errors import ConfigError
from recap_jax.mini_paper import report
from recap_jax.mini_paper.run import apply_quick

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = ["1.0", "0.8", "0.5", "0.2", "0.0", "concat"]


def _metrics(r1: float, top1: float) -> dict:
    recalls = {f"{d}/R@{k}": r1 if k == 1 else min(1.0, 2 * r1) for d in ("image_to_text", "text_to_image")
               for k in (1, 5)}
    return {"true": recalls, "alt": recalls, "zeroshot": {"top1": top1}}


def test_table_and_findings_follow_the_numbers():
    rows = {"1.0": report.row_numbers(_metrics(0.30, 0.5)), "0.8": report.row_numbers(_metrics(0.40, 0.45)),
            "0.0": report.row_numbers(_metrics(0.20, 0.2)), "concat": report.row_numbers(_metrics(0.25, 0.3))}
    assert rows["0.8"]["retrieval mean R@1"] == pytest.approx(40.0)
    table = report.markdown_table(rows).splitlines()
    assert table[0].startswith("| p (original caption) | zero-shot top1 |")
    assert [line.split("|")[1].strip() for line in table[2:]] == ["1.0", "0.8", "0.0", "concat"]
    found = report.findings(rows)
    assert "REPRODUCED" in found[0] and "REPRODUCED" in found[1] and "REPRODUCED" in found[2]
    rows["0.8"] = report.row_numbers(_metrics(0.10, 0.45))
    assert "NOT reproduced" in report.findings(rows)[0]


def test_quick_fields_replace_the_fields_of_the_same_path():
    config = load("mini_paper.py")
    config.quick.clip.num_steps = 7  # what --config.quick.clip.num_steps=7 does
    quick = apply_quick(config)
    assert (quick.clip.num_steps, quick.clip.batch_size, quick.world.num_web) == (7, 32, 512)
    assert quick.clip.learning_rate == config.clip.learning_rate and quick.workdir == config.workdir + "_quick"
    config.quick.clip.num_stepz = 1
    with pytest.raises(ConfigError, match="quick.clip.num_stepz"):
        apply_quick(config)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    # RECAP_MINI_PAPER_WORKDIR: continue a run there (complete stages are skipped) instead of a fresh one.
    workdir = os.environ.get("RECAP_MINI_PAPER_WORKDIR") or str(tmp_path_factory.mktemp("mini") / "run")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, "-m", "recap_jax.reproduce", "--config", os.path.join(ROOT, "configs/mini_paper.py"),
                    "--quick", f"--config.workdir={workdir}"], check=True, env=env, cwd=ROOT, timeout=1800)
    return workdir + "_quick"


def test_quick_run_writes_table_plot_json(quick_run):
    with open(os.path.join(quick_run, "results.json")) as f:
        results = json.load(f)
    assert list(results["rows"]) == ROWS
    lines = open(os.path.join(quick_run, "table.md")).read().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| p (original caption)"))
    assert lines[header].count("|") == 8
    assert [lines[header + 2 + i].split("|")[1].strip() for i in range(len(ROWS))] == ROWS
    for row in results["rows"].values():
        assert all(0.0 <= v <= 100.0 for v in row.values())
    assert os.path.getsize(os.path.join(quick_run, "plot.png")) > 1000
    stats = results["caption_statistics"]
    assert stats["re_mean_words"] > stats["org_mean_words"]  # recaptions are the long descriptions
    scores = results["clip_scores"]  # Section 4's win rate, under the concat CLIP row
    assert scores["clip_row"] == "concat" and scores["scored"] == 512
    assert scores["re_win_rate"] + scores["org_win_rate"] == pytest.approx(1.0)
    assert -1.0 <= scores["re_mean_score"] <= 1.0 and "CLIP score win rate" in "\n".join(lines)
    # rerun = continue: every stage is complete, nothing is retrained
    out = subprocess.run([sys.executable, "-m", "recap_jax.reproduce", "--config",
                          os.path.join(ROOT, "configs/mini_paper.py"), "--quick",
                          f"--config.workdir={quick_run[:-len('_quick')]}"],
                         capture_output=True, text=True, check=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert "captioner: complete" in out.stdout and "clip: complete" in out.stdout


def test_quick_captioner_names_the_main_object(quick_run):
    with open(os.path.join(quick_run, "results.json")) as f:
        held_out = json.load(f)["captioner_held_out"]
    assert held_out["num_images"] == 100
    # Colour and shape of the main object, both named, in at least 80% of the held-out scenes
    # (new colour x shape x background combinations; chance is 1/36).
    assert held_out["main_object_named"] >= 0.8


def test_outputs_carry_the_caption_statistics_and_clip_score_win_rate(tmp_path):
    from recap_jax.mini_paper.run import write_outputs

    rows = {"1.0": report.row_numbers(_metrics(0.30, 0.5)), "concat": report.row_numbers(_metrics(0.25, 0.3))}
    results = {"rows": rows, "noise": "noise note",
               "caption_statistics": {"org_mean_words": 3.3, "re_mean_words": 15.5, "org_vocab_share": 0.7,
                                      "re_vocab_share": 0.6},
               "captioner_held_out": {"num_images": 10, "main_object_named": 0.8, "colour_named": 0.9,
                                      "shape_named": 0.85, "exact_description": 0.1},
               "clip_scores": {"clip_row": "concat", "scored": 512, "re_win_rate": 0.625, "org_win_rate": 0.375,
                               "re_mean_score": 0.41, "org_mean_score": 0.33},
               "findings": report.findings(rows)}
    write_outputs(str(tmp_path), results)
    table = (tmp_path / "table.md").read_text()
    assert "| CLIP score win rate (CLIP row concat, 512 images) | 37.5% | 62.5% |" in table
    assert "| mean CLIP score (cosine) | 0.330 | 0.410 |" in table
    assert "main object's colour and shape named in 80.0% (colour 90.0%, shape 85.0%)" in table
    assert json.loads((tmp_path / "results.json").read_text())["clip_scores"]["scored"] == 512
    assert (tmp_path / "plot.png").stat().st_size > 1000


def test_a_bad_captioner_init_is_refused_before_any_stage_runs(tmp_path):
    import configs_loader
    from recap_jax.errors import ConfigError
    from recap_jax.mini_paper.run import run

    config = configs_loader.load("mini_paper.py")
    config.workdir = str(tmp_path / "run")
    config.captioner.init = str(tmp_path / "no_such_captioner")
    with pytest.raises(ConfigError, match="captioner.init="):
        run(config)
    assert not (tmp_path / "run").exists()  # the world was not generated


DIT_ROWS = ["1.0", "0.5", "0.1", "0.0"]


def test_quick_run_adds_the_dit_table_in_table_7s_shape(quick_run):
    with open(os.path.join(quick_run, "results.json")) as f:
        dit = json.load(f)["dit"]
    assert list(dit["table"]) == DIT_ROWS and dit["text_row"] == "concat"
    lines = open(os.path.join(quick_run, "table.md")).read().splitlines()
    header = lines.index("| p (original caption) | Raw FID | Raw CLIP | Raw GenEval | Recap FID | Recap CLIP "
                         "| Recap GenEval |")
    assert [lines[header + 2 + i].split("|")[1].strip() for i in range(len(DIT_ROWS))] == DIT_ROWS
    for row in dit["table"].values():
        assert all(0.0 <= row[c] <= 100.0 for c in ("Raw CLIP", "Raw GenEval", "Recap CLIP", "Recap GenEval"))
        assert row["Raw FID"] >= 0.0 and row["Recap FID"] >= 0.0
    assert len(dit["findings"]) == 3 and all("REPRODUCED" in f or "NOT reproduced" in f for f in dit["findings"])
    for name in ("dit_plot.png", "dit_grid.png"):
        assert os.path.getsize(os.path.join(quick_run, name)) > 1000


def test_quick_judge_reads_real_held_out_scenes(quick_run):
    with open(os.path.join(quick_run, "results.json")) as f:
        dit = json.load(f)["dit"]
    accuracy = dit["judge_accuracy"]
    # Every attribute GenEval-mini's clauses read, on the 100 real held-out scenes (new colour x
    # shape x background combinations): at least 95%, the bar under which scores are marked unreliable.
    for name in ("colour", "shape", "position", "background", "small_count", "small_colour"):
        assert accuracy[name] >= 0.95, (name, accuracy)
    assert "RELIABLE" in dit["reliability"] and "UNRELIABLE" not in dit["reliability"]


def test_geneval_mini_scores_real_images_far_above_noise(quick_run):
    import numpy as np

    from recap_jax.mini_paper import dit_stage, geneval
    from recap_jax.mini_paper.judge import Judge

    with open(os.path.join(quick_run, "results.json")) as f:
        results = json.load(f)
    real = results["dit"]["real"]["recap"]
    assert real["overall"] >= 0.9  # real scenes follow their own descriptions (~ the judge's accuracy)
    import ml_collections

    judge = Judge.load(os.path.join(quick_run, "judge"))
    prompts = dit_stage.held_out_prompts(ml_collections.ConfigDict(results["config"]))
    noise = np.random.default_rng(0).integers(0, 256, size=(len(prompts["keys"]), 32, 32, 3), dtype=np.uint8)
    noise_score = geneval.prompt_following(judge.predict(noise), prompts["clauses"]["recap"])
    assert noise_score["overall"] < real["overall"] - 0.5
