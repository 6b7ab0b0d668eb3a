"""analyze: exact statistics on captions chosen by hand, each health flag, shards, Parquet input."""

import json
import os
import subprocess
import sys

import pytest

from analysis_helpers import known_records
from recap_jax.analysis import health
from recap_jax.analysis.run import AnalyzeSettings, analyze, merge
from recap_jax.clip import synthetic
from recap_jax.errors import ConfigError
from recap_jax.release.parquet_export import export_parquet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = health.HealthSettings()


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    return synthetic.write_captioner_output(str(tmp_path_factory.mktemp("known") / "out"), known_records(), 2)


@pytest.fixture(scope="module")
def single(known, tmp_path_factory):
    """(summary, folder) of one unsharded analysis of the known output."""
    out = tmp_path_factory.mktemp("single") / "a"
    return analyze(known, AnalyzeSettings(out=str(out), progress=False)), out


def test_known_captions_give_exactly_the_known_statistics(single):
    s, out = single
    s = dict(s)
    assert s["num_rows"] == 6 and s["org_empty"] == 1
    # words (whitespace split): org 3+1+0+3+4+1 = 12; re 9+11+12+0+20+4 = 56
    assert s["org_words"]["mean"] == 12 / 6 and s["re_words"]["mean"] == 56 / 6
    # nearest-rank median (3rd of 6) and p95 (6th of 6)
    assert (s["org_words"]["median"], s["org_words"]["p95"], s["org_words"]["max"]) == (1, 4, 4)
    assert (s["re_words"]["median"], s["re_words"]["p95"], s["re_words"]["max"]) == (9, 20, 20)
    # tokens: the generated tokens the caption job stored; none for the originals without --tokenizer
    assert s["re_tokens"]["mean"] == (10 + 12 + 13 + 0 + 21 + 128) / 6 and s["org_tokens"] is None
    # vocabularies (lower-cased words): org {a red car dog sunset beach photo tree};
    # re adds 16 words to {a red car}/{dog tree} and lacks {sunset beach photo}
    assert (s["org_vocab_size"], s["re_vocab_size"], s["joint_vocab_size"]) == (8, 24, 27)
    assert s["re_share_of_joint_vocab"] == 24 / 27 and s["org_share_of_joint_vocab"] == 8 / 27
    assert s["re_top_words"][0] == ("a", 15)  # 2 + 2 + 2 + 0 + 8 + 1
    assert sorted(s["org_top_words"][:2]) == [("car", 3), ("red", 3)]
    assert s["flags"] == {"empty": 1, "truncated": 1, "repetition": 1, "template": 1}
    assert s["flag_keys"] == {"empty": ["k3"], "truncated": ["k5"], "repetition": ["k4"], "template": ["k2"]}
    assert "clip" not in s

    on_disk = json.loads((out / "analysis.json").read_text())
    assert on_disk["re_vocab_size"] == 24
    for png in ("word_lengths.png", "word_rank.png", "token_lengths.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((out / "images").glob("*.jpg"))) == 6  # every row is in the gallery of 48
    assert "report.html" in os.listdir(out)


def test_the_command_prints_the_summary_and_writes_next_to_the_output(known):
    proc = subprocess.run([sys.executable, "-m", "recap_jax.analyze", known, "--noprogress"], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert '"re_vocab_size": 24' in proc.stdout
    assert os.path.exists(os.path.join(known, "analysis", "report.html"))
    bad = subprocess.run([sys.executable, "-m", "recap_jax.analyze", "/no/such/output"], capture_output=True,
                         text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: /no/such/output: does not exist")


def test_sharded_run_merges_to_the_single_run(known, single, tmp_path):
    single, single_out = dict(single[0]), single[1]
    for i in range(3):
        assert analyze(known, AnalyzeSettings(out=str(tmp_path / "three"), shard_index=i, num_shards=3,
                                              progress=False)) is None
    merged = merge(str(tmp_path / "three"), AnalyzeSettings())
    assert merged.pop("shards") == 3 and single.pop("shards") == 1
    assert merged == single
    assert sorted(os.listdir(tmp_path / "three" / "images")) == sorted(os.listdir(single_out / "images"))


def test_merge_refuses_missing_shards(known, tmp_path):
    analyze(known, AnalyzeSettings(out=str(tmp_path / "s"), shard_index=0, num_shards=2, progress=False))
    with pytest.raises(ConfigError, match="1 of 2 shards"):
        merge(str(tmp_path / "s"), AnalyzeSettings())


def test_released_parquet_gives_the_same_text_statistics(known, single, tmp_path):
    export_parquet(known, str(tmp_path / "parquet"), progress=False)
    from_parquet = analyze(str(tmp_path / "parquet"), AnalyzeSettings(out=str(tmp_path / "p"), progress=False))
    from_output = single[0]
    for key in ("num_rows", "org_words", "re_words", "org_vocab_size", "re_vocab_size", "re_share_of_joint_vocab",
                "re_top_words", "org_empty"):
        assert from_parquet[key] == from_output[key], key
    # Parquet has no generated-token counts: truncation cannot be judged, the other flags can.
    assert from_parquet["flags"] == {"empty": 1, "truncated": 0, "repetition": 1, "template": 1}
    with pytest.raises(ConfigError, match="no images"):
        analyze(str(tmp_path / "parquet"), AnalyzeSettings(out=str(tmp_path / "c"), clip=str(tmp_path), progress=False))


# --- health flags on crafted captions ---------------------------------------------------------


@pytest.mark.parametrize("caption", ["", "   ", "\n\t"])
def test_empty(caption):
    assert health.caption_flags(caption, 0, SETTINGS) == ["empty"]


def test_truncated_at_max_new_tokens():
    text = "A long caption that was cut in the"
    assert health.caption_flags(text, 128, SETTINGS) == ["truncated"]
    assert health.caption_flags(text, 127, SETTINGS) == []
    assert health.caption_flags(text, None, SETTINGS) == []  # unknown token count: not judged
    assert health.caption_flags(text, 64, health.HealthSettings(max_new_tokens=64)) == ["truncated"]


@pytest.mark.parametrize("caption,flagged", [
    ("a dog a dog a dog a dog", True),  # 2-gram x 4 = 8 words
    ("The cat sits on the mat. The cat sits on the mat. The cat sits on the mat.", True),
    ("There is a red bus, a red bus, a red bus, a red bus and more.", True),
    ("very very very good", False),  # a short stutter, not a loop
    ("a dog a dog a dog", False),  # 6 words: under min_span
    ("The cat sits on the mat. The cat sits on the mat.", False),  # two copies: under min_repeats
    ("A man in a red shirt stands next to a man in a blue shirt near a man in a hat.", False),
    ("A shiny red car parked on a quiet street.", False),
])
def test_repetition(caption, flagged):
    assert ("repetition" in health.caption_flags(caption, 10, SETTINGS)) == flagged


def test_longest_loop_finds_period_and_copies():
    assert health.longest_loop("x a b c a b c a b c y".split()) == (3, 3)
    assert health.longest_loop("a b c d".split()) == (0, 1)


@pytest.mark.parametrize("caption,flagged", [
    ("The first image shows a woman holding an umbrella.", True),
    ("In the second image, the sky is darker.", True),
    ("The edited image adds a hat to the man.", True),
    ("Image 1: a kitchen with white cabinets.", True),
    ("Both images show the same street.", True),
    ("The first car in the row is red.", False),
    ("An image of a kitchen with white cabinets.", False),
    ("A photo taken at the second floor of a mall.", False),
])
def test_template_artefacts(caption, flagged):
    assert ("template" in health.caption_flags(caption, 10, SETTINGS)) == flagged


def test_several_flags_at_once():
    loop = "the first image shows a dog " * 3
    assert health.caption_flags(loop, 128, SETTINGS) == ["truncated", "repetition", "template"]
