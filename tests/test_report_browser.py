"""The HTML report in a real headless Chromium: loads without console errors, shows the gallery,
filters by flag, and is screenshotted (CI installs Chromium from the OS packages: .ci/run)."""

import os
import re
import shutil
import subprocess

import pytest
from PIL import Image

from analysis_helpers import known_records
from recap_jax.analysis.run import AnalyzeSettings, analyze
from recap_jax.analysis.stats import key_priority
from recap_jax.clip import synthetic

GALLERY, PER_FLAG = 3, 1


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    raise AssertionError("Chromium is not installed: apt-get install -y chromium (.ci/run does this)")


def _run(url, tmp_path, *args):
    """(stdout, console lines) of one headless Chromium run on `url`."""
    proc = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,2000", *args, url],
                          capture_output=True, text=True, timeout=180)
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    records = known_records()
    # k2 (template-flagged, so always in the gallery) carries markup: shown as text, never run
    records[2]["re_caption"] += " <script>alert(1)</script> & a </script> tag"
    output = synthetic.write_captioner_output(str(root / "out"), records)
    analyze(output, AnalyzeSettings(out=str(root / "a"), gallery_size=GALLERY, gallery_per_flag=PER_FLAG,
                                    progress=False))
    return root / "a" / "report.html", records


def _expected_gallery(records):
    """The 3 keys of lowest priority, plus each flagged row (one of each flag in the fixture)."""
    random_sample = sorted((r["key"] for r in records), key=key_priority)[:GALLERY]
    return set(random_sample) | {"k2", "k3", "k4", "k5"}


def test_report_loads_without_console_errors_and_shows_the_gallery(report, tmp_path):
    path, records = report
    dom, console = _run(f"file://{path}", tmp_path, "--dump-dom")
    assert console == [], console
    assert 'data-ready="true"' in dom
    expected = _expected_gallery(records)
    assert dom.count('class="card"') == len(expected)
    assert f'data-shown="{len(expected)}"' in dom
    assert {f"key {k}" for k in expected} <= set(re.findall(r"key k\d", dom))
    # the caption with markup is text in the page, not an element
    assert "a dog. &lt;script&gt;alert(1)&lt;/script&gt; &amp; a &lt;/script&gt; tag</div>" in dom


@pytest.mark.parametrize("flag,shown", [("template", 1), ("repetition", 1), ("empty", 1), ("truncated", 1)])
def test_filter_by_flag(report, tmp_path, flag, shown):
    path, _ = report
    dom, console = _run(f"file://{path}#flag={flag}", tmp_path, "--dump-dom")
    assert console == [] and f'data-shown="{shown}"' in dom
    assert dom.count('style="display: none;"') == dom.count('class="card"') - shown


def test_screenshot(report, tmp_path):
    path, _ = report
    shot = tmp_path / "report.png"
    _run(f"file://{path}", tmp_path, f"--screenshot={shot}")
    with Image.open(shot) as image:
        assert image.size == (1400, 2000)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # a rendered page, not a blank one
    os.makedirs("/tmp/recap_report_screenshots", exist_ok=True)
    shutil.copy(shot, "/tmp/recap_report_screenshots/report.png")


def test_console_errors_are_seen(tmp_path):
    """The check above is not vacuous: a page with a script error shows up on the console."""
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    _, console = _run(f"file://{page}", tmp_path, "--dump-dom")
    assert any("undefinedFunction is not defined" in line for line in console)
