"""The plan as text (a table per section) and as JSON."""

from __future__ import annotations

from typing import Any

from recap_jax.planning import hlo
from recap_jax.planning.caption_plan import CaptionPlan, Throughput
from recap_jax.planning.chips import GIB, Chip
from recap_jax.planning.clip_plan import ClipPlan

MIB = 2**20


def _gib(n: float) -> str:
    return f"{n / GIB:8.2f} GiB"


def _size(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / MIB:.2f} MiB" if n >= MIB else f"{int(n)} B"


def collectives_lines(name: str, found: list[hlo.Collective], limit: int = 12) -> list[str]:
    if not found:
        return [f"  {name}: none"]
    summary = ", ".join(f"{k} x{v['count']} ({_size(v['bytes'])})"
                        for k, v in hlo.summarize_collectives(found).items())
    lines = [f"  {name}: {summary}"]
    for c in sorted(found, key=lambda c: -c.bytes)[:limit]:
        lines.append(f"    {c.kind:<18} {_size(c.bytes):>11}  {c.shape}  {c.source[-70:]}")
    if len(found) > limit:
        lines.append(f"    ... {len(found) - limit} more")
    return lines


def caption_text(plan: CaptionPlan, chip: Chip, reserve: int, verdict: bool, largest: int,
                 rate: Throughput | None, chips: int, efficiency: float, new_tokens: int,
                 devices_per_host: int) -> list[str]:
    total = plan.total_bytes
    lines = [f"Memory per chip (TPU {chip.name}, HBM {chip.hbm_bytes / GIB:.0f} GiB; decode.batch_size="
             f"{plan.batch_size} = {plan.batch_size / devices_per_host:g} captions per chip):",
             f"  params            {_gib(plan.params_bytes)}",
             f"  KV cache          {_gib(plan.cache_bytes)}",
             f"  decode state      {_gib(plan.state_bytes)}  (tokens, positions, flags)",
             f"  temps (worst)     {_gib(plan.temp_bytes)}",
             f"  total (worst fn)  {_gib(total)}  of {chip.hbm_bytes / GIB:.0f} GiB, {reserve / GIB:.1f} GiB "
             f"kept for the runtime",
             "  verdict: " + ("fits" if verdict else "DOES NOT FIT") + (
                 f"; largest decode.batch_size that fits: {largest} (compiled)" if largest else ""),
             "", "Compiled functions, per chip (args / outputs not aliasing args / temps / peak; cost):"]
    for name, s in plan.functions.items():
        lines.append(f"  {name:<12} {_size(s.argument_bytes):>10} / {_size(s.output_bytes - s.alias_bytes):>10}"
                     f" / {_size(s.temp_bytes):>10} / {_size(s.peak_bytes):>10};  {s.flops / 1e12:8.3f} TFLOP,"
                     f" {s.bytes_accessed / GIB:7.2f} GiB accessed")
    lines += ["", "Collectives, per chip (each op once, loop bodies included once):"]
    for name, s in plan.functions.items():
        lines += collectives_lines(name, s.collectives)
    if rate is not None:
        ips = rate.images_per_s_per_chip
        lines += ["", f"Throughput bound per chip (prompt {plan.prompt_length} tokens in bucket {plan.bucket}, "
                      f"{new_tokens} new tokens per image; XLA counts a while body once: the decode loop's cost "
                      "is one step, and the layer scans' missing layers are added from each layer compiled alone):",
                  f"  prefill: {rate.prefill_flops / 1e12:.2f} TFLOP, {rate.prefill_bytes / GIB:.2f} GiB per image"
                  f" -> {rate.prefill_s * 1e3:.1f} ms at peak FLOP/s" + (
                      f" ({rate.prefill_int8_flops / 1e12:.2f} TFLOP of it int8 x int8 matmuls, at the chip's "
                      f"int8 peak {chip.peak_int8_ops / 1e12:.0f} TOP/s)" if rate.prefill_int8_flops else ""),
                  f"  decode:  {rate.decode_flops / 1e12:.2f} TFLOP, {rate.decode_bytes / GIB:.2f} GiB per image"
                  f" -> {rate.decode_s * 1e3:.1f} ms at HBM bandwidth" + (
                      f" (of which {rate.decode_kernel_bytes / GIB:.2f} GiB: the ragged attention kernel's live "
                      f"cache reads, {plan.attention_block}-column blocks, added: XLA does not count them)"
                      if plan.attention_block else " (attention: XLA, the whole cache read every step)"),
                  f"  bound: {(rate.prefill_s + rate.decode_s) * 1e3:.1f} ms/image = {ips:.1f} images/s/chip; "
                  f"physical limit {rate.model_flops / 1e12:.2f} TFLOP/image at peak = {rate.physical_s * 1e3:.1f} ms "
                  f"(bound / limit = {(rate.prefill_s + rate.decode_s) / rate.physical_s:.2f}x)",
                  f"  1.3B images on {chips} chips: {rate.days(chips):.2f} days at the bound, "
                  f"{rate.days(chips, efficiency):.2f} days at {efficiency:.0%} of it "
                  f"({rate.mfu(efficiency):.0%} MFU); {rate.days(chips) * rate.mfu():.2f} days "
                  "at 100% MFU"]
    return lines


def clip_text(plan: ClipPlan, chip: Chip, reserve: int) -> list[str]:
    s = plan.step
    fits = s.peak_bytes + reserve <= chip.hbm_bytes
    return [f"CLIP train step ({plan.params / 1e6:.0f}M params, {plan.batch_per_chip:g} examples per chip):",
            f"  params + optimizer state {_gib(plan.state_bytes)} per chip; temps {_gib(s.temp_bytes)}; "
            f"peak {_gib(s.peak_bytes)} of {chip.hbm_bytes / GIB:.0f} GiB -> {'fits' if fits else 'DOES NOT FIT'}",
            *_clip_cost_lines(plan, chip),
            *collectives_lines("train_step", s.collectives, limit=6)]


def _clip_cost_lines(plan: ClipPlan, chip: Chip) -> list[str]:
    s, c = plan.step, plan.step_cost
    if c is None:
        return [f"  {s.flops / 1e12:.1f} TFLOP and {s.bytes_accessed / GIB:.1f} GiB accessed per chip per step "
                "(layer loops counted once)"]
    seconds = max(c.flops / chip.peak_bf16_flops, c.bytes_accessed / chip.hbm_bytes_per_s)
    return [f"  per chip per step: {c.flops / 1e12:.1f} TFLOP, {c.bytes_accessed / GIB:.1f} GiB accessed (compiled "
            f"step {s.flops / 1e12:.2f} TFLOP with each tower's layer loop counted once, + the other layers, "
            f"each compiled alone); model matmul FLOPs {plan.model_flops / 1e12:.1f} TFLOP",
            f"  bound: {seconds * 1e3:.0f} ms per step at peak FLOP/s / HBM bandwidth "
            f"({plan.batch_per_chip / seconds:.0f} examples/s/chip)"]


def stats_json(s: hlo.CompiledStats) -> dict[str, Any]:
    return {"argument_bytes": s.argument_bytes, "output_bytes": s.output_bytes, "alias_bytes": s.alias_bytes,
            "temp_bytes": s.temp_bytes, "code_bytes": s.code_bytes, "peak_bytes": s.peak_bytes,
            "flops": s.flops, "bytes_accessed": s.bytes_accessed,
            "collectives": hlo.summarize_collectives(s.collectives),
            "collective_ops": [{"kind": c.kind, "bytes": c.bytes, "shape": c.shape, "source": c.source}
                               for c in s.collectives]}
