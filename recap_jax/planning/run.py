"""The plan command's job: compile the caption job (and the CLIP train step) for a TPU slice on
a machine without one, and report memory per chip, collectives and the throughput bound
(`python -m recap_jax.plan`; docs/tpu_plan.md)."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import ml_collections

from recap_jax.errors import ConfigError
from recap_jax.parallel.mesh import make_mesh
from recap_jax.planning import caption_plan, chips, report
from recap_jax.planning.clip_plan import compile_clip_step
from recap_jax.planning.model_spec import planned_model


@dataclasses.dataclass(frozen=True)
class PlanSettings:
    """The plan command's flags."""
    topology: str = ""  # "" = the config's tpu.topology
    new_tokens: int = 49  # mean generated tokens per image
    efficiency: float = 0.6  # realistic fraction of the bound, for the days estimate
    reserve_gib: float = 1.0  # HBM per chip kept free for the runtime
    all_buckets: bool = False  # also compile the prefill buckets other prompts would use


def plan(config: ml_collections.ConfigDict, settings: PlanSettings,
         clip_config: ml_collections.ConfigDict | None = None) -> tuple[dict[str, Any], list[str], bool]:
    """(JSON-ready result, text lines, fits?) for the caption config (and the CLIP config)."""
    pod = chips.compile_slice(settings.topology or config.tpu.topology)
    hosts = chips.hosts_of(pod.devices)
    for devices in hosts.values():  # each host builds its own mesh over its chips
        make_mesh(dict(config.mesh), devices)
    devices = chips.host_program_devices(pod)
    reserve = int(settings.reserve_gib * chips.GIB)
    model = planned_model(config)
    lines = [f"[plan] {pod.name} ({pod.topology}): {pod.num_chips} chips, {pod.num_hosts} hosts x "
             f"{len(devices)}; per-host mesh {dict(config.mesh)} builds on every host",
             f"[plan] model: {caption_plan.describe_params(model)}; prompt {model.prompt_length} tokens"]
    print("\n".join(lines) + "\n[plan] compiling (minutes for an 8B model) ...", file=sys.stderr, flush=True)
    refused = ""
    try:
        compiled = caption_plan.compile_caption(config, model, devices, all_buckets=settings.all_buckets,
                                                costs=False)
        ok = caption_plan.fits(compiled, pod.chip, reserve)
    except caption_plan.CompilerOutOfMemory as e:
        compiled, ok, refused = None, False, str(e)
    largest, rate, fitting = 0, None, None
    if ok:  # the cost of a program that does not fit is not worth its compiles
        rate = caption_plan.throughput(caption_plan.count_costs(config, model, devices, compiled), model, config,
                                       pod.chip, len(devices), settings.new_tokens)
    else:
        largest, fitting = caption_plan.largest_fitting_batch(config, model, devices, compiled, pod.chip, reserve)
    if compiled is not None:
        lines += [""] + report.caption_text(compiled, pod.chip, reserve, ok, largest, rate, pod.num_chips,
                                            settings.efficiency, settings.new_tokens, len(devices))
    else:
        lines += ["", f"The TPU compiler refused decode.batch_size={config.decode.batch_size}: {refused}"]
        if fitting is not None:
            lines += ["", "The largest batch that fits:"] + report.caption_text(
                fitting, pod.chip, reserve, True, 0, None, pod.num_chips, settings.efficiency, settings.new_tokens,
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
                                 "decode_flops": rate.decode_flops, "decode_bytes": rate.decode_bytes,
                                 "decode_kernel_bytes": rate.decode_kernel_bytes,
                                 "prefill_int8_flops": rate.prefill_int8_flops, "prefill_s_per_chip": rate.prefill_s,
                                 "decode_s_per_chip": rate.decode_s,
                                 "bound_s_per_chip": rate.prefill_s + rate.decode_s,
                                 "model_flops": rate.model_flops, "physical_s_per_chip": rate.physical_s},
                      images_per_s_per_chip=rate.images_per_s_per_chip, days_at_bound=rate.days(pod.num_chips),
                      efficiency=settings.efficiency, days_realistic=rate.days(pod.num_chips, settings.efficiency),
                      mfu_realistic=rate.mfu(settings.efficiency),
                      days_at_physical_limit=rate.days(pod.num_chips) * rate.mfu())
    if clip_config is not None:
        result["clip"], clip_lines, _ = plan_clip(clip_config, settings, pod)
        lines += [""] + clip_lines
    return result, lines, ok


def plan_clip(clip_config: ml_collections.ConfigDict, settings: PlanSettings,
              pod: chips.Slice | None = None) -> tuple[dict[str, Any], list[str], bool]:
    """(JSON-ready result, text lines, fits?) for a CLIP train config, over the whole slice."""
    pod = pod or chips.compile_slice(settings.topology or clip_config.tpu.topology)
    reserve = int(settings.reserve_gib * chips.GIB)
    print(f"[plan] compiling the CLIP train step for {pod.name} ({pod.num_chips} chips) ...", file=sys.stderr,
          flush=True)
    clip = compile_clip_step(clip_config, pod.devices)
    ok = clip.total_bytes + reserve <= pod.chip.hbm_bytes
    result = {"topology": pod.topology, "params": clip.params, "state_bytes": clip.state_bytes,
              "batch_per_chip": clip.batch_per_chip, "fits": ok, "step": report.stats_json(clip.step),
              "step_flops_per_chip": clip.step_cost.flops, "step_bytes_accessed_per_chip": clip.step_cost.bytes_accessed,
              "model_flops_per_chip": clip.model_flops}
    return result, report.clip_text(clip, pod.chip, reserve), ok


def plan_dit(dit_config: ml_collections.ConfigDict, settings: PlanSettings, text: str,
             samples: float = 0) -> tuple[dict[str, Any], list[str], bool]:
    """(JSON-ready result, text lines, fits?) for a Recap-DiT train config, over the whole slice;
    `text`: the CLIP text tower it reads, `samples`: training samples for the days (0: the config's)."""
    from recap_jax.planning import dit_plan

    if text not in dit_plan.TEXT_EMBED:
        raise ConfigError(f"--dit_text={text!r}: expected one of {sorted(dit_plan.TEXT_EMBED)}")
    pod = chips.compile_slice(settings.topology or "v4-8")
    print(f"[plan] compiling the Recap-DiT train step for {pod.name} ({pod.num_chips} chips) ...", file=sys.stderr,
          flush=True)
    base = {"topology": pod.topology, "slice": pod.name, "chips": pod.num_chips}
    try:
        step = dit_plan.compile_dit_step(dit_config, pod.devices, text)
    except dit_plan.DoesNotFit as e:
        return {**base, "fits": False, "compiler_refused": str(e)}, [f"Recap-DiT: DOES NOT FIT: {e}"], False
    t = dit_config.train
    samples = samples or float(t.num_steps) * t.global_batch_size
    result, lines, ok = dit_plan.plan_lines(step, pod.chip, int(settings.reserve_gib * chips.GIB), pod.num_chips,
                                            samples, settings.efficiency)
    return {**base, **result}, lines, ok
