"""Slices side by side: what recaptioning N images costs on each, in days and dollars.

`python -m recap_jax.plan --compare configs/v4_256.py configs/v5e_256.py ...` plans each caption
config for its slice (`tpu.topology`), or reads a plan already made (`plan --json` output, a
`.json` file), and prints per slice: the fit, ms/image and images/s/chip at the compiled bound,
chip-hours, days and dollars for N images, at the bound and at `--efficiency` of it. Every
figure comes from the compiled programs (`caption_plan.throughput`); prices from `PRICES` below
or `--price CHIP=USD_PER_CHIP_HOUR`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import pathlib
from typing import Any

import ml_collections

from recap_jax.errors import ConfigError
from recap_jax.planning import chips

# On-demand list price per chip-hour in USD, the lowest of the US regions, from
# https://cloud.google.com/tpu/pricing as published in 2025 (v4 $3.22, v5e $1.20, v5p $4.20,
# v6e $2.70). Not re-read on the date of this plan: committed-use and spot prices are lower and
# prices change, so set yours with --price CHIP=USD (e.g. --price v6e=1.89).
PRICES = {"v4": 3.22, "v5e": 1.20, "v5p": 4.20, "v6e": 2.70}
PRICE_SOURCE = "cloud.google.com/tpu/pricing, on-demand, US regions, as published in 2025"


def parse_prices(items: list[str]) -> dict[str, float]:
    """`PRICES` with `--price CHIP=USD` overrides (USD per chip-hour)."""
    prices = dict(PRICES)
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in chips.CHIPS:
            raise ConfigError(f"--price {item!r}: expected CHIP=USD_PER_CHIP_HOUR with CHIP one of "
                              f"{sorted(chips.CHIPS)}")
        try:
            prices[name] = float(value)
        except ValueError:
            prices[name] = -1.0
        if not math.isfinite(prices[name]) or prices[name] <= 0:
            raise ConfigError(f"--price {item!r}: the price must be a positive number of USD per chip-hour")
    return prices


def load_config(path: str) -> ml_collections.ConfigDict:
    """A config file as `--config` loads it (`configs/X.py` or `configs/X.py:a=1`)."""
    file, _, arg = path.partition(":")
    spec = importlib.util.spec_from_file_location(pathlib.Path(file).stem + "_compared_config", file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        return module.get_config(arg) if arg else module.get_config()
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - a broken config file is the user's to fix
        raise ConfigError(f"--compare {path}: cannot load the config ({type(e).__name__}: {e})") from None


@dataclasses.dataclass
class Entry:
    """One item of `--compare`: a caption config to plan, or a plan read from its JSON."""
    label: str
    config: ml_collections.ConfigDict | None = None
    result: dict[str, Any] | None = None


def read_entries(paths: list[str]) -> list[Entry]:
    """Every entry checked (file, config fields, slice, libtpu) before anything compiles."""
    if not paths:
        raise ConfigError("--compare: give the caption configs (configs/*.py) or plan JSON files to compare")
    entries = []
    for path in paths:
        file = pathlib.Path(path.partition(":")[0])
        if file.suffix not in (".py", ".json"):
            raise ConfigError(f"--compare {path}: expected a caption config (.py) or a plan (.json, from --json)")
        if not file.is_file():
            raise ConfigError(f"--compare {path}: no such file")
        if file.suffix == ".json":
            entries.append(Entry(file.name, result=_read_plan(file)))
            continue
        config = load_config(path)
        topology = config.get("tpu", {}).get("topology")
        if not topology:
            raise ConfigError(f"--compare {path}: tpu.topology is not set (the slice to plan for)")
        _in_entry(path, chips.parse_slice, topology)
        entries.append(Entry(file.name, config=config))
    for path, entry in zip(paths, entries):  # a slice the installed libtpu cannot describe fails here
        if entry.config is not None:
            _in_entry(path, chips.compile_slice, entry.config.tpu.topology)
    return entries


def _in_entry(path: str, check, *args) -> Any:
    try:
        return check(*args)
    except ConfigError as e:
        raise ConfigError(f"--compare {path}: {e}") from None


def _read_plan(file: pathlib.Path) -> dict[str, Any]:
    try:
        result = json.loads(file.read_text())
    except ValueError as e:
        raise ConfigError(f"--compare {file}: not a plan's JSON ({e})") from None
    if not isinstance(result, dict) or "fits" not in result or "topology" not in result:
        raise ConfigError(f"--compare {file}: not the JSON of `python -m recap_jax.plan --json` (no fits/topology)")
    chips.parse_slice(result["topology"])
    return result


def row(label: str, result: dict[str, Any], prices: dict[str, float], images: float, efficiency: float
        ) -> dict[str, Any]:
    """The comparison's figures for one plan result (None where the plan has no bound)."""
    chip = result.get("chip") or chips.parse_slice(result["topology"])[2].name
    per_chip = result["batch_size"] / (result["chips"] // result["hosts"])
    out = {"label": label, "slice": result.get("slice", result["topology"]), "chip": chip,
           "chips": result["chips"], "quantize": result.get("quantize") or "none", "fits": result["fits"],
           "captions_per_chip": per_chip, "price_per_chip_hour": prices[chip], "images": images,
           "efficiency": efficiency}
    rate = result.get("images_per_s_per_chip")
    if not result["fits"] or not rate:
        return out
    chip_hours = images / rate / 3600
    out.update(ms_per_image=result["per_image"]["bound_s_per_chip"] * 1e3, images_per_s_per_chip=rate,
               chip_hours=chip_hours, days=chip_hours / result["chips"] / 24,
               dollars=chip_hours * prices[chip], days_realistic=chip_hours / result["chips"] / 24 / efficiency,
               dollars_realistic=chip_hours * prices[chip] / efficiency)
    return out


def cheapest(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    fitting = [r for r in rows if "dollars" in r]
    return min(fitting, key=lambda r: r["dollars"]) if fitting else None


def table(rows: list[dict[str, Any]], efficiency: float, images: float) -> list[str]:
    n = f"{images / 1e9:g}B" if images >= 1e9 else f"{images:g}"
    lines = [f"{'config':<22} {'slice':<9} {'quantize':<8} {'fit':<5} {'capt/chip':>9} {'ms/image':>8} "
             f"{'img/s/chip':>10} {'chip-hours':>10} {'days':>6} {'$/chip-h':>8} {'dollars':>10} "
             f"{'days@' + format(efficiency, '.0%'):>9} {'$@' + format(efficiency, '.0%'):>10}"]
    for r in rows:
        head = (f"{r['label'][:22]:<22} {r['slice']:<9} {r['quantize']:<8} {'yes' if r['fits'] else 'NO':<5} "
                f"{r['captions_per_chip']:>9g}")
        if "dollars" not in r:
            lines.append(head + "   (no bound: " + ("does not fit" if not r["fits"] else "costs not counted") + ")")
            continue
        lines.append(head + f" {r['ms_per_image']:>8.1f} {r['images_per_s_per_chip']:>10.1f} "
                     f"{r['chip_hours']:>10,.0f} {r['days']:>6.2f} {r['price_per_chip_hour']:>8.2f} "
                     f"{r['dollars']:>10,.0f} {r['days_realistic']:>9.2f} {r['dollars_realistic']:>10,.0f}")
    best = cheapest(rows)
    lines.append("")
    lines.append(f"{n} images; ms/image and img/s/chip per chip at the compiled bound; days on the whole slice; "
                 f"@{efficiency:.0%}: at --efficiency of the bound. Prices: {PRICE_SOURCE}, or --price.")
    if best:
        lines.append(f"cheapest: {best['label']} ({best['slice']}, {best['quantize']}): {best['days']:.2f} days and "
                     f"${best['dollars']:,.0f} at the bound, {best['days_realistic']:.2f} days and "
                     f"${best['dollars_realistic']:,.0f} at {efficiency:.0%} of it")
    return lines
