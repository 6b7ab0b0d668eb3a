"""Compile the caption job (and the CLIP train step) for a TPU slice on a machine without one.

    pip install -e '.[tpu]'   # libtpu: compiles for TPU devices, no TPU needed
    python -m recap_jax.plan --config configs/v4_256.py [--topology v4-256] [--json]
    python -m recap_jax.plan --config configs/v4_256.py --clip_config configs/clip_v4_pod.py
    python -m recap_jax.plan --clip_config configs/clip_v4_pod.py --topology v4-256   # CLIP only
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
_TOPOLOGY = flags.DEFINE_string("topology", None, "Slice (v4-256, v5e-256) or libtpu topology (v4:4x4x8); "
                                "default: the config's tpu.topology, else v4-8.")
_JSON = flags.DEFINE_bool("json", False, "Print the plan as one JSON object.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 49, "Mean generated tokens per image (the paper: ~49).")
_EFFICIENCY = flags.DEFINE_float("efficiency", 0.6, "Realistic fraction of the bound, for the days estimate "
                                  "(0.6: about MaxText's published v4 MFU, 53-59%, applied to the bound).")
_RESERVE = flags.DEFINE_float("reserve_gib", 1.0, "HBM per chip kept free for the runtime.")
_COMPARE = flags.DEFINE_bool("compare", False, "Compare slices: the arguments are caption configs "
                              "(configs/*.py, each planned for its tpu.topology) or plan JSON files.")
_PRICE = flags.DEFINE_multi_string("price", [], "CHIP=USD per chip-hour, over the built-in list prices "
                                   "(planning/compare.py states their source and date).")
_IMAGES = flags.DEFINE_float("images", 1.3e9, "Images to recaption, for --compare's chip-hours, days and dollars.")
_ALL_BUCKETS = flags.DEFINE_bool("all_buckets", False, "Also compile the prefill buckets other prompts "
                                 "would use (the job compiles only its prompt's bucket).")

EXIT_DOES_NOT_FIT = 3


def main(argv: Sequence[str]) -> int:
    check_flags(argv)
    if _COMPARE.value:
        return compare(list(argv[1:]))
    if _CONFIG.value is None:
        result, lines, ok = plan_clip(_CLIP.value)
    else:
        result, lines, ok = plan(_CONFIG.value, _CLIP.value)
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
        if _CONFIG.value is not None or _CLIP.value is not None or _TOPOLOGY.value:
            raise ConfigError("--compare takes its configs as arguments, each planned for its own tpu.topology: "
                              "drop --config, --clip_config and --topology")
        return
    if _CONFIG.value is None and _CLIP.value is None:
        raise ConfigError("--config (a caption config, e.g. configs/v4_256.py) and/or --clip_config is required")
    clip = _loaded(_CLIP, "clip_config")
    caption = _loaded(_CONFIG, "config")
    topology = _TOPOLOGY.value or (caption or clip).get("tpu", {}).get("topology", "v4-8")
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


def compare(paths: list[str]) -> int:
    """The --compare table (or its JSON): one plan per entry, each compiled or read."""
    from recap_jax.planning import compare as compare_lib
    entries = compare_lib.read_entries(paths)
    prices = compare_lib.parse_prices(_PRICE.value)
    rows = []
    for entry in entries:
        if entry.result is None:
            print(f"[plan] {entry.label}: planning {entry.config.tpu.topology} ...", file=sys.stderr, flush=True)
            entry.result, lines, _ = plan(entry.config)
            print("\n".join(lines), file=sys.stderr, flush=True)
        rows.append(compare_lib.row(entry.label, entry.result, prices, _IMAGES.value, _EFFICIENCY.value))
    if _JSON.value:
        print(json.dumps({"rows": rows, "cheapest": (compare_lib.cheapest(rows) or {}).get("label"),
                          "price_source": compare_lib.PRICE_SOURCE, "prices": prices}, indent=1))
    else:
        print("\n".join(compare_lib.table(rows, _EFFICIENCY.value, _IMAGES.value)), flush=True)
    return 0


def plan(config, clip_config=None):
    """(JSON-ready result, text lines, fits?) for the caption config (and the CLIP config)."""
    from recap_jax.parallel.mesh import make_mesh
    from recap_jax.planning import caption_plan, chips, report
    from recap_jax.planning.model_spec import planned_model

    topology = _TOPOLOGY.value or config.get("tpu", {}).get("topology", "v4-8")
    pod = chips.compile_slice(topology)
    hosts = chips.hosts_of(pod.devices)
    for devices in hosts.values():  # each host builds its own mesh over its chips
        make_mesh(dict(config.mesh), devices)
    devices = chips.host_program_devices(pod)
    reserve = int(_RESERVE.value * chips.GIB)
    model = planned_model(config)
    lines = [f"[plan] {pod.name} ({pod.topology}): {pod.num_chips} chips, {pod.num_hosts} hosts x "
             f"{len(devices)}; per-host mesh {dict(config.mesh)} builds on every host",
             f"[plan] model: {caption_plan.describe_params(model)}; prompt {model.prompt_length} tokens"]
    print("\n".join(lines) + "\n[plan] compiling (minutes for an 8B model) ...", file=sys.stderr, flush=True)
    refused = ""
    try:
        compiled = caption_plan.compile_caption(config, model, devices, all_buckets=_ALL_BUCKETS.value,
                                                costs=False)
        ok = caption_plan.fits(compiled, pod.chip, reserve)
    except caption_plan.CompilerOutOfMemory as e:
        compiled, ok, refused = None, False, str(e)
    largest, rate, fitting = 0, None, None
    if ok:  # the cost of a program that does not fit is not worth its compiles
        rate = caption_plan.throughput(caption_plan.count_costs(config, model, devices, compiled), model, config,
                                       pod.chip, len(devices), _NEW_TOKENS.value)
    else:
        largest, fitting = caption_plan.largest_fitting_batch(config, model, devices, compiled, pod.chip, reserve)
    if compiled is not None:
        lines += [""] + report.caption_text(compiled, pod.chip, reserve, ok, largest, rate, pod.num_chips,
                                            _EFFICIENCY.value, _NEW_TOKENS.value, len(devices))
    else:
        lines += ["", f"The TPU compiler refused decode.batch_size={config.decode.batch_size}: {refused}"]
        if fitting is not None:
            lines += ["", "The largest batch that fits:"] + report.caption_text(
                fitting, pod.chip, reserve, True, 0, None, pod.num_chips, _EFFICIENCY.value, _NEW_TOKENS.value,
                len(devices))
    result = {"topology": pod.topology, "slice": pod.name, "chip": pod.chip.name, "chips": pod.num_chips,
              "hosts": pod.num_hosts, "quantize": config.model.quantize, "model": model.source,
              "prompt_length": model.prompt_length, "batch_size": config.decode.batch_size,
              "hbm_bytes": pod.chip.hbm_bytes, "reserve_bytes": reserve, "fits": ok}
    if not ok:
        fix = f"set --config.decode.batch_size={largest}" if largest else "no decode.batch_size fits: use " \
              "more chips per replica (mesh.tensor/mesh.fsdp) or a smaller model.dtype"
        lines.append(f"[plan] decode.batch_size={config.decode.batch_size} does not fit a {pod.chip.name} chip: {fix}")
        result.update(compiler_refused=refused or None, largest_fitting_batch_size=largest or None)
    if compiled is not None:
        result.update(bucket=compiled.bucket, params_bytes=compiled.params_bytes, cache_bytes=compiled.cache_bytes,
                      state_bytes=compiled.state_bytes, temp_bytes=compiled.temp_bytes,
                      total_bytes=compiled.total_bytes,
                      functions={k: report.stats_json(s) for k, s in compiled.functions.items()})
    if rate is not None:
        result.update(per_image={"prefill_flops": rate.prefill_flops, "prefill_bytes": rate.prefill_bytes,
                                 "prefill_int8_flops": rate.prefill_int8_flops, "prefill_s_per_chip": rate.prefill_s,
                                 "decode_s_per_chip": rate.decode_s,
                                 "decode_flops": rate.decode_flops, "decode_bytes": rate.decode_bytes,
                                 "decode_kernel_bytes": rate.decode_kernel_bytes,
                                 "bound_s_per_chip": rate.prefill_s + rate.decode_s,
                                 "model_flops": rate.model_flops, "physical_s_per_chip": rate.physical_s},
                      images_per_s_per_chip=rate.images_per_s_per_chip, days_at_bound=rate.days(pod.num_chips),
                      efficiency=_EFFICIENCY.value, days_realistic=rate.days(pod.num_chips, _EFFICIENCY.value),
                      mfu_realistic=rate.mfu(_EFFICIENCY.value),
                      days_at_physical_limit=rate.days(pod.num_chips) * rate.mfu())
    if clip_config is not None:
        result["clip"], clip_lines, _ = plan_clip(clip_config, pod)
        lines += [""] + clip_lines
    return result, lines, ok


def plan_clip(clip_config, pod=None):
    """(JSON-ready result, text lines, fits?) for a CLIP train config, over the whole slice."""
    from recap_jax.planning import chips, report
    from recap_jax.planning.clip_plan import compile_clip_step
    pod = pod or chips.compile_slice(_TOPOLOGY.value or clip_config.get("tpu", {}).get("topology", "v4-8"))
    reserve = int(_RESERVE.value * chips.GIB)
    print(f"[plan] compiling the CLIP train step for {pod.name} ({pod.num_chips} chips) ...", file=sys.stderr,
          flush=True)
    clip = compile_clip_step(clip_config, pod.devices)
    ok = clip.total_bytes + reserve <= pod.chip.hbm_bytes
    result = {"topology": pod.topology, "params": clip.params, "state_bytes": clip.state_bytes,
              "batch_per_chip": clip.batch_per_chip, "fits": ok, "step": report.stats_json(clip.step),
              "step_flops_per_chip": clip.step_cost.flops, "step_bytes_accessed_per_chip": clip.step_cost.bytes_accessed,
              "model_flops_per_chip": clip.model_flops}
    return result, report.clip_text(clip, pod.chip, reserve), ok

if __name__ == "__main__":
    cli.run_config_command(main, __doc__, __name__)
