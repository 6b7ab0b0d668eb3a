"""The caption job's pod plan: compile its functions for TPU devices, then read memory, traffic, cost.

Memory per chip is what the compiled programs need at once (arguments + non-aliased outputs +
temporaries + code) for the worst of them, against the chip's HBM.

Cost: XLA's cost analysis counts a while loop's body once, whatever its trip count (the TPU HLO
carries no trip count to read). So (1) the decode loop's FLOPs and bytes are those of ONE decode
step: per image they are multiplied by the generated tokens and divided by the captions in
flight; (2) the layer scans inside count one text layer and one vision layer: the missing
(layers - 1) copies are added from each layer compiled alone (`layer_cost`).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence

import jax.numpy as jnp
import ml_collections

from recap_jax.decoding.settings import ORG_CAPTION_SLOT, DecodeSettings
from recap_jax.decoding.programs import decode_attention_fn
from recap_jax.kernels.ragged_decode import block_columns, mean_live_columns
from recap_jax.models.flops import image_flops, parameter_count
from recap_jax.models.llava import LlavaModel
from recap_jax.models.quantization import caption_model
from recap_jax.parallel import mesh as mesh_lib
from recap_jax.planning import hlo, layer_cost
from recap_jax.planning.chips import Chip
from recap_jax.planning.model_spec import PlannedModel
from recap_jax.decoding.lowering import lower_caption_programs

IMAGES = 1.3e9  # DataComp-1B
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass
class CaptionPlan:
    batch_size: int
    prompt_length: int
    bucket: int  # the prefill bucket the prompt uses
    params_bytes: int  # per chip
    cache_bytes: int
    state_bytes: int  # decode state besides the cache
    functions: dict[str, hlo.CompiledStats]  # "prefill_<bucket>", "decode"
    prefill_cost: layer_cost.Cost | None = None  # per chip and call, every layer counted (module doc)
    decode_step_cost: layer_cost.Cost | None = None  # per chip and step
    cache_length: int = 0  # columns per slot
    # > 0: the decode attention is the ragged kernel (kernels/ragged_decode.py) with blocks of this
    # many columns. XLA's cost analysis does not count a Mosaic call's reads: `throughput` adds them.
    attention_block: int = 0

    @property
    def temp_bytes(self) -> int:
        return max(s.temp_bytes for s in self.functions.values())

    @property
    def total_bytes(self) -> int:
        return max(s.peak_bytes for s in self.functions.values())


class CompilerOutOfMemory(Exception):
    """The TPU compiler itself refused the program: it cannot fit the chip's HBM."""


def compile_stats(lowered) -> hlo.CompiledStats:
    """Compile and read; a program the TPU compiler refuses for HBM raises CompilerOutOfMemory."""
    try:
        return hlo.compiled_stats(lowered.compile())
    except Exception as e:  # jax.errors.JaxRuntimeError
        if "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower():
            raise CompilerOutOfMemory(str(e).splitlines()[0]) from None
        raise


def settings_of(config: ml_collections.ConfigDict, prompt_length: int, batch_size: int | None = None
                ) -> DecodeSettings:
    """The job's DecodeSettings for its prompt (stop ids do not change the programs' shapes)."""
    settings = DecodeSettings.from_config(config.decode).for_prompt(prompt_length,
                                                                    ORG_CAPTION_SLOT in config.prompt)
    return dataclasses.replace(settings, batch_size=batch_size) if batch_size else settings


def compile_caption(config: ml_collections.ConfigDict, model: PlannedModel, devices: Sequence,
                    batch_size: int | None = None, all_buckets: bool = False, costs: bool = True
                    ) -> CaptionPlan:
    """Compile the job's prefill and decode loop. The job prefills one prompt, so one bucket;
    `all_buckets`: every bucket a prompt of this model could use; `costs`: also count the
    scanned layers' cost (memory alone does not need it)."""
    dtype = DTYPES[config.model.dtype]
    settings = settings_of(config, model.prompt_length, batch_size)
    bucket = settings.bucket(model.prompt_length)
    buckets = sorted(b for b in settings.prompt_buckets if b > model.config.num_image_tokens) if all_buckets \
        else [bucket]
    mesh = mesh_lib.make_mesh(dict(config.mesh), list(devices))
    llava = caption_model(model.config, dtype, config.model.quantize, config.model.scan_layers)
    lowered = lower_caption_programs(llava, settings, mesh, dtype, buckets)
    functions = {"decode": compile_stats(lowered.decode)}  # first: the cache is why a plan does not fit
    functions.update({f"prefill_{b}": compile_stats(low) for b, low in lowered.prefill.items()})
    cache = hlo.shard_bytes(lowered.state.cache)
    kernel = decode_attention_fn(settings.attention, mesh) is not None
    plan = CaptionPlan(settings.batch_size, model.prompt_length, bucket, hlo.shard_bytes(lowered.params),
                       cache, hlo.shard_bytes(lowered.state) - cache, functions, cache_length=settings.cache_length,
                       attention_block=block_columns(settings.cache_length) if kernel else 0)
    if costs:
        plan.prefill_cost, plan.decode_step_cost = looped_costs(
            llava, settings, mesh, functions[f"prefill_{bucket}"], bucket, functions["decode"], dtype)
    return plan


def count_costs(config: ml_collections.ConfigDict, model: PlannedModel, devices: Sequence,
                plan: CaptionPlan) -> CaptionPlan:
    """Fill in a plan compiled with costs=False."""
    dtype = DTYPES[config.model.dtype]
    settings = settings_of(config, model.prompt_length, plan.batch_size)
    llava = caption_model(model.config, dtype, config.model.quantize, config.model.scan_layers)
    mesh = mesh_lib.make_mesh(dict(config.mesh), list(devices))
    plan.prefill_cost, plan.decode_step_cost = looped_costs(
        llava, settings, mesh, plan.functions[f"prefill_{plan.bucket}"], plan.bucket, plan.functions["decode"],
        dtype)
    return plan


def looped_costs(llava: LlavaModel, settings: DecodeSettings, mesh, prefill: hlo.CompiledStats, seq: int,
                 decode: hlo.CompiledStats, cache_dtype) -> tuple[layer_cost.Cost, layer_cost.Cost]:
    """(prefill call, decode step) costs per chip with every scanned layer counted (unrolled
    text layers, `scan_layers` False, are all in the compiled programs already)."""
    missing_text_layers = llava.config.text.num_layers - 1 if llava.scan_layers else 0
    vision_layers = llava.config.num_vision_layers_used
    p = settings.prefill_batch
    pre = layer_cost.Cost(prefill.flops, prefill.bytes_accessed, prefill.int8_flops)
    step = layer_cost.Cost(decode.flops, decode.bytes_accessed, decode.int8_flops)
    if missing_text_layers:
        pre += layer_cost.text_layer_prefill(llava, mesh, p, seq) * missing_text_layers
        step += layer_cost.text_layer_decode(llava, mesh, settings.batch_size, settings.cache_length, cache_dtype,
                                             decode_attention_fn(settings.attention, mesh)) * missing_text_layers
    if vision_layers > 1:
        pre += layer_cost.vision_layer(llava, mesh, p) * (vision_layers - 1)
    return pre, step


def fits(plan: CaptionPlan, chip: Chip, reserve_bytes: int) -> bool:
    return plan.total_bytes + reserve_bytes <= chip.hbm_bytes


def _try(config, model, devices, batch: int, chip: Chip, reserve_bytes: int) -> CaptionPlan | None:
    """The plan at this batch size if it compiles and fits, else None."""
    print(f"[plan] compiling decode.batch_size={batch} to check that it fits ...", file=sys.stderr, flush=True)
    try:
        plan = compile_caption(config, model, devices, batch_size=batch, costs=False)
    except CompilerOutOfMemory:
        return None
    return plan if fits(plan, chip, reserve_bytes) else None


def largest_fitting_batch(config: ml_collections.ConfigDict, model: PlannedModel, devices: Sequence,
                          plan: CaptionPlan | None, chip: Chip, reserve_bytes: int, max_compiles: int = 6
                          ) -> tuple[int, CaptionPlan | None]:
    """The largest decode.batch_size that fits, checked by compiling it (0 if none does).

    `plan`: the compiled plan that did not fit (None: the compiler refused it). From a compiled
    plan the per-slot bytes (cache, state, decode temporaries) give a linear guess; without one
    the batch is halved until a plan compiles and fits, then the guess starts from that one. Each
    guess is compiled and stepped down until one fits."""
    step = max(config.mesh.data, 1) * max(config.mesh.fsdp, 1)
    if config.mesh.data == -1:
        step = len(devices) // max(config.mesh.tensor * config.mesh.fsdp, 1)
    floor = max(config.decode.prefill_batch, step)
    best: tuple[int, CaptionPlan | None] = (0, None)
    batch = config.decode.batch_size
    while plan is None and max_compiles > 0:  # the compiler refused: halve until something fits
        batch = max(floor, (batch // 2) // step * step)
        max_compiles -= 1
        plan = _try(config, model, devices, batch, chip, reserve_bytes)
        if plan is not None:
            best = (batch, plan)
        elif batch == floor:
            return best
    if plan is None:
        return best
    slots_per_device = plan.batch_size / step
    per_slot = (plan.cache_bytes + plan.state_bytes + plan.functions["decode"].temp_bytes) / slots_per_device
    fixed = plan.total_bytes - per_slot * slots_per_device
    guess = int((chip.hbm_bytes - reserve_bytes - fixed) // per_slot) * step
    guess = min(guess, config.decode.batch_size - step)
    while max_compiles > 0 and guess > best[0]:
        guess -= guess % step
        if guess < floor:
            break
        max_compiles -= 1
        candidate = _try(config, model, devices, guess, chip, reserve_bytes)
        if candidate is not None:
            return guess, candidate
        guess -= max(step, guess // 16 // step * step)
    return best


@dataclasses.dataclass(frozen=True)
class Throughput:
    prefill_flops: float  # per image (all chips together)
    prefill_bytes: float
    decode_flops: float
    decode_bytes: float
    prefill_s: float  # chip-seconds per image at the bound
    decode_s: float
    model_flops: float  # what the work needs (models.flops), per image
    physical_s: float  # model_flops at the chip's peak
    decode_kernel_bytes: float = 0.0  # per image: the decode kernel's cache reads, in decode_bytes
    prefill_int8_flops: float = 0.0  # per image, of prefill_flops: int8 x int8 matmuls (model.quantize w8a8)

    @property
    def images_per_s_per_chip(self) -> float:
        return 1.0 / (self.prefill_s + self.decode_s)

    def days(self, chips: int, efficiency: float = 1.0, images: float = IMAGES) -> float:
        return images / (self.images_per_s_per_chip * efficiency * chips) / 86400

    def mfu(self, efficiency: float = 1.0) -> float:
        """The model's FLOPs over peak FLOP/s at `efficiency` of the bound."""
        return self.physical_s * self.images_per_s_per_chip * efficiency


def throughput(plan: CaptionPlan, model: PlannedModel, config: ml_collections.ConfigDict, chip: Chip,
               devices_per_host: int, new_tokens: int) -> Throughput:
    """Per-image work from the compiled cost; prefill at peak FLOP/s, decode at HBM bandwidth
    (or peak, whichever is slower), both per chip."""
    pre, dec = plan.prefill_cost, plan.decode_step_cost
    kernel_step = kernel_cache_reads(plan, new_tokens)
    dec = dataclasses.replace(dec, bytes_accessed=dec.bytes_accessed + kernel_step)
    images_per_prefill = config.decode.prefill_batch / devices_per_host  # per device
    prefill_s = max(compute_s(pre, chip), pre.bytes_accessed / chip.hbm_bytes_per_s)
    step_s = max(compute_s(dec, chip), dec.bytes_accessed / chip.hbm_bytes_per_s)
    slots_per_device = plan.batch_size / devices_per_host
    need = image_flops(model.config, model.prompt_length, new_tokens)
    return Throughput(
        prefill_flops=pre.flops / images_per_prefill,
        prefill_bytes=pre.bytes_accessed / images_per_prefill,
        decode_flops=dec.flops * new_tokens / slots_per_device,
        decode_bytes=dec.bytes_accessed * new_tokens / slots_per_device,
        prefill_s=prefill_s / images_per_prefill, decode_s=step_s * new_tokens / slots_per_device,
        model_flops=need.total, physical_s=need.total / chip.peak_bf16_flops,
        decode_kernel_bytes=kernel_step * new_tokens / slots_per_device,
        prefill_int8_flops=pre.int8_flops / images_per_prefill)


def compute_s(cost: layer_cost.Cost, chip: Chip) -> float:
    """Seconds at peak: int8 x int8 matmuls at the chip's int8 rate, the other FLOPs at bf16's."""
    int8_peak = chip.peak_int8_ops or chip.peak_bf16_flops
    return cost.int8_flops / int8_peak + (cost.flops - cost.int8_flops) / chip.peak_bf16_flops


def kernel_cache_reads(plan: CaptionPlan, new_tokens: int) -> float:
    """Per chip and decode step: the cache bytes the ragged kernel reads (0 for XLA's attention,
    whose reads the compiled cost counts). Each slot reads its live blocks of every layer, at the
    mean live length over a caption (`ragged_decode.mean_live_columns`)."""
    if not plan.attention_block:
        return 0.0
    live = mean_live_columns(plan.prompt_length, new_tokens, plan.attention_block, plan.cache_length)
    return plan.cache_bytes * live / plan.cache_length


def describe_params(model: PlannedModel) -> str:
    return f"{parameter_count(model.config) / 1e9:.2f}B params ({model.source})"
