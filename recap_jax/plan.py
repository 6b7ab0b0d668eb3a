"""Compile the caption job (and the CLIP train step) for a TPU slice on a machine without one.

    pip install -e '.[tpu]'   # libtpu: compiles for TPU devices, no TPU needed
    python -m recap_jax.plan --config configs/v4_256.py [--topology v4-256] [--json]
    python -m recap_jax.plan --config configs/v4_256.py --clip_config configs/clip_v4_pod.py
    python -m recap_jax.plan --clip_config configs/clip_v4_pod.py --topology v4-256   # CLIP only
    python -m recap_jax.plan --dit_config configs/recap_dit_b4.py --topology v4-64    # Recap-DiT only
    python -m recap_jax.plan --compare configs/v4_256.py configs/v5e_256.py configs/v5p_128.py configs/v6e_256.py
    python -m recap_jax.plan --compare benchmarks/results/plan_v6e_256.json --price v6e=1.89 --images 1e9

Prints per chip: params, KV cache, decode state, temporaries and total against the chip's HBM,
the verdict (exit 0: fits; exit 3: does not fit, naming the largest decode.batch_size that does),
the collectives of each compiled function, and FLOPs/bytes per image with the images/s/chip
bound and the days 1.3B images take. Config errors exit 2 (one line naming the field), before
anything compiles. `--compare` takes caption configs (each planned for its tpu.topology) or plans
saved with --json, and prints one row per slice: fit, ms/image, images/s/chip, chip-hours, days
and dollars for --images (planning/compare.py; exit 0 once the table is printed).
"""

import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the host's own backend; TPU devices come from libtpu

from collections.abc import Sequence  # noqa: E402

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from recap_jax import cli  # noqa: E402
from recap_jax.errors import ConfigError  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Caption config (configs/*.py).", lock_config=True)
_CLIP = config_flags.DEFINE_config_file("clip_config", None, "Optional CLIP train config to plan too.")
_DIT = config_flags.DEFINE_config_file("dit_config", None, "Optional Recap-DiT train config to plan too "
                                       "(configs/recap_dit_*.py).")
_DIT_TEXT = flags.DEFINE_string("dit_text", "L", "CLIP text tower the DiT reads: tiny, B, L (CLIP ViT-L/14's) or H.")
_DIT_SAMPLES = flags.DEFINE_float("dit_samples", 0, "DiT training samples for the days estimate "
                                  "(0: train.num_steps x train.global_batch_size).")
_TOPOLOGY = flags.DEFINE_string("topology", None, "Slice (v4-256, v5e-256) or libtpu topology (v4:4x4x8); "
                                "default: the config's tpu.topology, else v4-8.")
_JSON = flags.DEFINE_bool("json", False, "Print the plan as one JSON object.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 49, "Mean generated tokens per image (the paper: ~49).")
_EFFICIENCY = flags.DEFINE_float("efficiency", 0.6, "Realistic fraction of the bound, for the days estimate "
                                  "(0.6: about MaxText's published v4 MFU, 53-59%, applied to the bound).")
_RESERVE = flags.DEFINE_float("reserve_gib", 1.0, "HBM per chip kept free for the runtime.")
_ALL_BUCKETS = flags.DEFINE_bool("all_buckets", False, "Also compile the prefill buckets other prompts "
                                 "would use (the job compiles only its prompt's bucket).")
_COMPARE = flags.DEFINE_bool("compare", False, "Compare slices: the arguments are caption configs "
                              "(configs/*.py, each planned for its tpu.topology) or plan JSON files.")
_PRICE = flags.DEFINE_multi_string("price", [], "CHIP=USD per chip-hour, over the built-in list prices "
                                   "(planning/compare.py states their source and date).")
_IMAGES = flags.DEFINE_float("images", 1.3e9, "Images to recaption, for --compare's chip-hours, days and dollars.")

EXIT_DOES_NOT_FIT = 3


def main(argv: Sequence[str]) -> int:
    check_flags(argv)
    from recap_jax.planning import run  # deferred past the flags (cli.job_main)

    settings = run.PlanSettings(topology=_TOPOLOGY.value or "", new_tokens=_NEW_TOKENS.value,
                                efficiency=_EFFICIENCY.value, reserve_gib=_RESERVE.value,
                                all_buckets=_ALL_BUCKETS.value)
    if _COMPARE.value:
        return compare(list(argv[1:]), settings)
    result, lines, ok = {}, [], True
    if _CONFIG.value is not None:
        result, lines, ok = run.plan(_CONFIG.value, settings, _CLIP.value)
    elif _CLIP.value is not None:
        result, lines, ok = run.plan_clip(_CLIP.value, settings)
    if _DIT.value is not None:
        dit, dit_lines, dit_ok = run.plan_dit(_DIT.value, settings, _DIT_TEXT.value, _DIT_SAMPLES.value)
        result, lines, ok = ({**result, "dit": dit} if result else dit), lines + [""] * bool(lines) + dit_lines, ok and dit_ok
    print(json.dumps(result, indent=1) if _JSON.value else "\n".join(lines), flush=True)
    return 0 if ok else EXIT_DOES_NOT_FIT


def check_flags(argv: Sequence[str]) -> None:
    """Every flag, file and slice checked before the first compile (minutes for an 8B model)."""
    from recap_jax.planning import chips, compare as compare_lib
    if len(argv) > 1 and not _COMPARE.value:
        raise ConfigError(f"unexpected arguments {list(argv[1:])}; see --help")
    if not 0 < _EFFICIENCY.value <= 1:
        raise ConfigError(f"--efficiency={_EFFICIENCY.value}: expected a fraction of the bound in (0, 1]")
    if _NEW_TOKENS.value < 1 or _RESERVE.value < 0:
        raise ConfigError(f"--new_tokens={_NEW_TOKENS.value} / --reserve_gib={_RESERVE.value}: expected "
                          ">= 1 token and >= 0 GiB")
    if not _IMAGES.value > 0:
        raise ConfigError(f"--images={_IMAGES.value}: expected a positive number of images")
    compare_lib.parse_prices(_PRICE.value)
    if _COMPARE.value:
        if _CONFIG.value is not None or _CLIP.value is not None or _DIT.value is not None or _TOPOLOGY.value:
            raise ConfigError("--compare takes its configs as arguments, each planned for its own tpu.topology: "
                              "drop --config, --clip_config, --dit_config and --topology")
        return
    if _CONFIG.value is None and _CLIP.value is None and _DIT.value is None:
        raise ConfigError("--config (a caption config, e.g. configs/v4_256.py), --clip_config and/or "
                          "--dit_config is required")
    clip = _loaded(_CLIP, "clip_config")
    caption = _loaded(_CONFIG, "config")
    dit = _loaded(_DIT, "dit_config")
    topology = _TOPOLOGY.value or (caption or clip or dit).get("tpu", {}).get("topology", "v4-8")
    chips.compile_slice(topology)  # a misspelled slice, or one the installed libtpu cannot describe


def _loaded(flag, name: str):
    """The config of a config-file flag, its file read now (ml_collections defers the read)."""
    if flag.value is None:
        return None
    try:
        flag.value.keys()
    except (OSError, AttributeError, ImportError, SyntaxError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise ConfigError(f"--{name}: cannot load the config file ({lines[-1] if lines else type(e).__name__})"
                          ) from None
    return flag.value


def compare(paths: list[str], settings) -> int:
    """The --compare table (or its JSON): one plan per entry, each compiled or read."""
    from recap_jax.planning import compare as compare_lib, run
    entries = compare_lib.read_entries(paths)
    prices = compare_lib.parse_prices(_PRICE.value)
    rows = []
    for entry in entries:
        if entry.result is None:
            print(f"[plan] {entry.label}: planning {entry.config.tpu.topology} ...", file=sys.stderr, flush=True)
            entry.result, lines, _ = run.plan(entry.config, settings)
            print("\n".join(lines), file=sys.stderr, flush=True)
        rows.append(compare_lib.row(entry.label, entry.result, prices, _IMAGES.value, _EFFICIENCY.value))
    if _JSON.value:
        print(json.dumps({"rows": rows, "cheapest": (compare_lib.cheapest(rows) or {}).get("label"),
                          "price_source": compare_lib.PRICE_SOURCE, "prices": prices}, indent=1))
    else:
        print("\n".join(compare_lib.table(rows, _EFFICIENCY.value, _IMAGES.value)), flush=True)
    return 0


if __name__ == "__main__":
    cli.run_config_command(main, __doc__, __name__)
