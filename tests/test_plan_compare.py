"""`python -m recap_jax.plan --compare`: slices side by side in days and dollars, and its misuse.

The figures' arithmetic is checked on plan results; the command end to end (two tiny captioners
compiled for a v4 and a v5e host, w8a8 on the v5e) is slow-marked. Misuse must fail in one line
with exit 2 before anything compiles."""

import json
import pathlib
import subprocess
import sys

import pytest

from recap_jax.errors import ConfigError
from recap_jax.planning import compare

REPO = pathlib.Path(__file__).resolve().parent.parent


def plan_result(slice_name: str, chips: int, hosts: int, rate: float, fits: bool = True, **extra) -> dict:
    """The fields of `plan --json` the comparison reads."""
    return {"topology": slice_name, "slice": slice_name, "chips": chips, "hosts": hosts, "batch_size": 384,
            "fits": fits, "images_per_s_per_chip": rate if fits else None,
            "per_image": {"bound_s_per_chip": 1 / rate}, **extra}


def test_rows_price_chip_hours_days_and_dollars():
    prices = compare.parse_prices(["v6e=2.0"])
    assert prices["v6e"] == 2.0 and prices["v4"] == compare.PRICES["v4"]
    v4 = compare.row("a", plan_result("v4-256", 128, 32, 20.0), prices, 1.3e9, 0.5)
    v6e = compare.row("b", plan_result("v6e-256", 256, 64, 80.0, chip="v6e", quantize="w8a8"), prices, 1.3e9, 0.5)
    assert v4["chip"] == "v4" and v4["captions_per_chip"] == 96 and v4["quantize"] == "none"
    assert v4["chip_hours"] == pytest.approx(1.3e9 / 20.0 / 3600)
    assert v4["days"] == pytest.approx(v4["chip_hours"] / 128 / 24)
    assert v4["dollars"] == pytest.approx(v4["chip_hours"] * compare.PRICES["v4"])
    assert v4["days_realistic"] == pytest.approx(2 * v4["days"]) and v4["ms_per_image"] == pytest.approx(50.0)
    assert v6e["dollars"] == pytest.approx(1.3e9 / 80.0 / 3600 * 2.0)
    assert compare.cheapest([v4, v6e])["label"] == "b"
    lost = compare.row("c", plan_result("v5e-256", 256, 64, 1.0, fits=False), prices, 1.3e9, 0.5)
    assert "dollars" not in lost and compare.cheapest([lost]) is None
    text = "\n".join(compare.table([v4, v6e, lost], 0.5, 1.3e9))
    assert "cheapest: b (v6e-256, w8a8)" in text and "does not fit" in text and compare.PRICE_SOURCE in text


@pytest.mark.parametrize("item", ["v7=1.0", "v6e", "v6e=-1", "v6e=nan", "v6e=cheap"])
def test_a_price_for_an_unknown_chip_or_a_bad_price_names_the_flag(item):
    with pytest.raises(ConfigError, match="--price"):
        compare.parse_prices([item])


def test_entries_are_checked_before_anything_compiles(tmp_path):
    bad = tmp_path / "v4_typo.py"
    bad.write_text("import ml_collections\n\ndef get_config():\n    return ml_collections.ConfigDict("
                   "{'tpu': {'topology': 'v4-265'}})\n")
    with pytest.raises(ConfigError, match=r"v4_typo.py: topology 'v4-265': did you mean 'v4-256'"):
        compare.read_entries([str(REPO / "configs" / "v4_256.py"), str(bad)])
    with pytest.raises(ConfigError, match="no such file"):
        compare.read_entries([str(tmp_path / "missing.py")])
    not_a_plan = tmp_path / "x.json"
    not_a_plan.write_text("{}")
    with pytest.raises(ConfigError, match="not the JSON of"):
        compare.read_entries([str(not_a_plan)])
    saved = tmp_path / "plan.json"
    saved.write_text(json.dumps(plan_result("v6e-256", 256, 64, 80.0)))
    entry, = compare.read_entries([str(saved)])
    assert entry.config is None and entry.result["slice"] == "v6e-256"


def run_plan(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recap_jax.plan", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)


@pytest.mark.parametrize("args, says", [
    (["--config", "configs/v4_256.py", "--clip_config", "/nope.py"], "--clip_config: cannot load"),
    (["--compare", "configs/v4_256.py", "--price", "v9=1"], "--price 'v9=1'"),
    (["--config", "configs/v4_256.py", "--topology", "v6e:3x5"], "libtpu cannot describe v6e:3x5"),
])
def test_misuse_fails_in_one_line_before_compiling(args, says):
    done = run_plan(*args)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "compiling" not in done.stderr  # nothing compiled: the 8B takes minutes
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and says in errors[0] and "Traceback" not in done.stderr


TINY_CONFIG = """
import ml_collections
from recap_jax.captioning.defaults import base_config

def get_config():
    c = base_config()
    c.model.checkpoint = {checkpoint!r}
    c.model.dtype = "bfloat16"
    c.model.quantize = {quantize!r}
    c.mesh = ml_collections.ConfigDict(dict(data=4, fsdp=1, tensor=1))
    c.decode.batch_size, c.decode.prefill_batch, c.decode.max_new_tokens = 8, 4, 16
    c.tpu = ml_collections.ConfigDict(dict(topology={topology!r}, model="llava-llama-3-8b"))
    return c
"""


@pytest.mark.slow  # a subprocess compiling two tiny captioners (programs + per-layer costs) for TPU
def test_compare_command_on_tiny_captioners(tmp_path):
    from recap_jax.captioning.tiny_demo import build_tiny_checkpoint
    checkpoint = str(build_tiny_checkpoint(str(tmp_path / "tiny")))
    paths = []
    for name, topology, quantize in (("tiny_v4.py", "v4-8", ""), ("tiny_v5e.py", "v5e-4", "w8a8")):
        (tmp_path / name).write_text(TINY_CONFIG.format(checkpoint=checkpoint, quantize=quantize, topology=topology))
        paths.append(str(tmp_path / name))
    done = run_plan("--compare", *paths, "--price", "v5e=1.0", "--images", "1e6", "--json", timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    v4, v5e = out["rows"]
    assert (v4["slice"], v4["quantize"], v5e["slice"], v5e["quantize"]) == ("v4-8", "none", "v5e-4", "w8a8")
    assert v4["fits"] and v5e["fits"] and v5e["price_per_chip_hour"] == 1.0
    for r in (v4, v5e):
        assert r["images_per_s_per_chip"] > 0
        assert r["chip_hours"] == pytest.approx(1e6 / r["images_per_s_per_chip"] / 3600)
    assert out["cheapest"] in ("tiny_v4.py", "tiny_v5e.py")
    assert "int8 x int8 matmuls" in done.stderr  # the v5e plan counted its prefill's int8 FLOPs


def test_int8_matmuls_are_read_from_the_hlo_and_timed_at_the_int8_peak():
    from recap_jax.planning import caption_plan, chips, hlo
    from recap_jax.planning.layer_cost import Cost
    text = "\n".join([
        "  %p.1 = s8[32,48]{1,0} parameter(0)",
        "  %p.2 = s8[48,96]{1,0} parameter(1)",
        "  %p.3 = bf16[32,48]{1,0} parameter(2)",
        "  %convolution.7 = bf16[32,96]{1,0:T(8,128)} convolution(%p.1, %p.2), dim_labels=bf_io->bf",
        "  %dot.2 = f32[32,96]{1,0} dot(%p.3, %p.2), lhs_contracting_dims={1}, rhs_contracting_dims={0}"])
    assert hlo.int8_matmul_flops(text) == 2 * 32 * 48 * 96  # the bf16 x s8 dot is not an int8 matmul
    v6e = chips.CHIPS["v6e"]
    mixed = Cost(flops=3e12, bytes_accessed=0.0, int8_flops=2e12)
    assert caption_plan.compute_s(mixed, v6e) == pytest.approx(2e12 / 1836e12 + 1e12 / 918e12)
    assert caption_plan.compute_s(Cost(3e12, 0.0), v6e) == pytest.approx(3e12 / 918e12)
    assert (mixed * 2).int8_flops == 4e12 and (mixed + mixed).int8_flops == 4e12
