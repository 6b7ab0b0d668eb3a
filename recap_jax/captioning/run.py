"""The caption job: input shards -> decoded, pre-processed images -> captions -> output shards.

Before any weights are loaded, `startup` checks the config, gs:// access and the model's limits;
the run's `identity` (what changes a caption) is checked against the output folder, and
`output_lease` makes this the only job writing there.

Follow one image:
1. `plan_work_units` splits the input into units (a tar, a chunk of files, a record range); this
   host takes its share (`units_for_host`) and skips units already written (resume).
2. `read_unit` yields samples; `prepared_units` decodes and pre-processes them in worker threads
   (`units.ImagePreparer`) while the device computes.
3. `caption_requests` turns each into a decode `Request` (its prompt ids, with the original
   caption in the prompt's `{org_caption}` slot if it has one) tagged with a `SampleTag`.
4. The `Sampler` prefills and decodes them with continuous batching.
5. `UnitAssembler` writes a unit's ArrayRecord shard and failures list atomically, in input
   order, once every sample of it is captioned or failed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from etils import epath

from recap_jax.captioning import identity, startup
from recap_jax.data import output_lease
from recap_jax.captioning.compile_ahead import compile_ahead, use_compile_cache
from recap_jax.captioning.model_loading import load_captioner
from recap_jax.captioning.progress import Progress
from recap_jax.captioning.prompts import CaptionPrompt
from recap_jax.captioning.tiny_demo import build_tiny_checkpoint
from recap_jax.captioning.units import ImagePreparer, InputWait, SampleTag, UnitAssembler, caption_record
from recap_jax.conversion.bundle import DTYPES, CaptionerSpec, param_dtype
from recap_jax.conversion.llava import abstract_params
from recap_jax.data import inputs, pipeline
from recap_jax.data.inputs import Failure
from recap_jax.data.schema import record_features
from recap_jax.data.storage import is_local
from recap_jax.data.writer import OutputDataset
from recap_jax.decoding.programs import decode_programs
from recap_jax.decoding.sampler import Request, Sampler
from recap_jax.decoding.settings import DecodeSettings
from recap_jax.decoding.token_choice import sample_seed
from recap_jax.errors import ConfigError
from recap_jax.models.llava import LlavaModel
from recap_jax.models.quantization import caption_model, check_mode
from recap_jax.parallel import mesh as mesh_lib
from recap_jax.parallel.distributed import check_distributed_config, initialize_distributed
from recap_jax.planning.startup import check_fits_on_tpu


def validate(config: ml_collections.ConfigDict) -> None:
    """Fail at start-up, naming the field, rather than hours into a run."""
    m = config.model
    startup.check_config(config)
    if bool(m.hf_dir) == bool(m.checkpoint):
        raise ConfigError("model: set exactly one of model.hf_dir and model.checkpoint")
    if m.hf_dir and is_local(m.hf_dir) and not epath.Path(m.hf_dir).exists():
        raise ConfigError(f"model.hf_dir: {m.hf_dir} does not exist")
    if (m.checkpoint and is_local(m.checkpoint) and not m.build_tiny_if_missing
            and not epath.Path(m.checkpoint).exists()):
        raise ConfigError(f"model.checkpoint: {m.checkpoint} does not exist")
    if m.dtype not in DTYPES:
        raise ConfigError(f"model.dtype={m.dtype!r}: expected one of {sorted(DTYPES)}")
    check_mode(m.quantize)
    if not config.output.dir:
        raise ConfigError("output.dir: required (where the captioned dataset is written)")
    if not config.prompt.strip():
        raise ConfigError("prompt: must not be empty")
    check_distributed_config(config.distributed)
    if config.input.num_workers < 1:
        raise ConfigError(f"input.num_workers={config.input.num_workers}: must be >= 1")
    try:
        decode_settings(config, ())
    except ValueError as e:
        raise ConfigError(str(e)) from None


def decode_settings(config: ml_collections.ConfigDict, stop_ids: tuple[int, ...]) -> DecodeSettings:
    return DecodeSettings.from_config(config.decode, stop_ids)


def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Caption this host's share of the input; returns the run summary."""
    validate(config)
    use_compile_cache(config.compile_cache_dir)
    initialize_distributed(config.distributed)
    startup.check_mesh(config)  # the first device query, after jax.distributed starts
    startup.check_remote(config, config.gcs_timeout_s)
    ensure_demo_checkpoint(config)
    spec = startup.read_spec(config)
    startup.check_limits(config, spec)  # before loading any weights
    input_config = config.input.to_dict()
    input_config["paths"] = identity.absolute_paths(config.input.paths)
    units = inputs.plan_from_config(ml_collections.ConfigDict(input_config))
    run_identity = identity.run_identity(config, units)
    out_dir = epath.Path(config.output.dir)
    created = jax.process_index() == 0 and not out_dir.exists()
    try:
        with output_lease.hold(config) as lease:
            output = output_lease.process_0_first(lambda: OutputDataset(
                config.output.dir, len(units), features=record_features(config.output.store_images),
                fingerprint=run_identity,
                overwrite=config.output.overwrite and jax.process_index() == 0), "output.dir")
            return _caption_share(config, units, output, lease, spec)
    except BaseException:
        if created and out_dir.exists() and not list((out_dir / ".units").glob("*.json")):
            out_dir.rmtree()  # a run that failed before its first unit leaves no stub folder
        raise


def _caption_share(config: ml_collections.ConfigDict, units: list[inputs.WorkUnit], output: OutputDataset,
                   lease, spec: CaptionerSpec) -> dict[str, Any]:
    mine = inputs.units_for_host(units, jax.process_index(), jax.process_count())
    todo = [u for u in mine if not output.is_done(u.index)]
    print(f"[caption] host {jax.process_index()}/{jax.process_count()}: {len(mine)} of {len(units)} units, "
          f"{len(mine) - len(todo)} already done", flush=True)

    for unit in todo:
        output.clean_unit(unit.index)
    start = time.time()
    stats = {"captioned": 0, "failed": 0, "generated_tokens": 0, "prefill_tokens": 0, "input_wait_s": 0.0,
             "input_wait_first_s": 0.0, "captioning_s": 0.0, "device_idle_s": 0.0, "device_idle_share": 0.0}
    if todo:
        stats = caption_units(config, todo, output, spec)
    wall = time.time() - start
    summary = {"host": jax.process_index(), "units": len(mine), "units_captioned_now": len(todo),
               **stats, "wall_s": round(wall, 2),
               # rates over the whole wall time, start-up and compiles included (the progress
               # lines' rates count from the first image on: captioning_s)
               "images_per_s": round(stats["captioned"] / wall, 3) if wall else 0.0,
               "generated_tokens_per_s": round(stats["generated_tokens"] / wall, 2) if wall else 0.0,
               # share of the wall time the decode loop waited for decoded images (0 = never)
               "input_wait_fraction": round(stats["input_wait_s"] / wall, 4) if wall else 0.0}
    if todo:  # a run that did nothing leaves the last real one's summary in place
        output.write_host_summary(jax.process_index(), summary)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("recap_jax.caption: all units written")
    if jax.process_index() == 0:
        summary["finalized"] = output.finalize(summary if todo else None)
        if summary["finalized"]:
            summary["records_total"] = sum(c["records"] for c in output.counts().values())
    if lease is not None and lease.took_over is not None:
        summary["lease_taken_over_from"] = lease.took_over.describe()
    return summary


def ensure_demo_checkpoint(config: ml_collections.ConfigDict) -> None:
    """The offline demo's tiny random checkpoint, built where model.checkpoint points if asked."""
    m = config.model
    if m.checkpoint and m.build_tiny_if_missing and not epath.Path(m.checkpoint).exists():
        build_tiny_checkpoint(m.checkpoint)


def compute_model(config: ml_collections.ConfigDict, spec: CaptionerSpec) -> tuple[LlavaModel, Any]:
    """The model the job runs (dtype, quantisation, layer layout of the config) and its dtype."""
    dtype = jnp.dtype(param_dtype(config.model.dtype))
    return caption_model(spec.config, dtype, config.model.quantize, config.model.scan_layers), dtype


def load_params(config: ml_collections.ConfigDict, mesh, spec: CaptionerSpec | None = None
                ) -> tuple[CaptionerSpec, Any]:
    """(spec, params placed on `mesh`); `spec`: the checkpoint's, if already read. The tiny demo
    model is built first if the config asks for it."""
    m = config.model
    ensure_demo_checkpoint(config)
    with startup.weights_errors(config):
        return load_captioner(
            checkpoint=m.checkpoint or None, hf_dir=m.hf_dir or None, tokenizer=m.tokenizer or None,
            template=m.template or None, dtype=m.dtype,
            shardings_fn=lambda boxed: mesh_lib.params_shardings(mesh, boxed), quantize=m.quantize, spec=spec)


def caption_requests(entries: Iterable[pipeline.UnitItem | pipeline.UnitEnd], prompt: CaptionPrompt,
                     settings: DecodeSettings, assembler: UnitAssembler) -> Iterator[Request[SampleTag]]:
    """Decode requests for the prepared samples; input failures and unit ends go to `assembler`."""
    for entry in entries:
        if isinstance(entry, pipeline.UnitEnd):
            assembler.unit_read(entry.unit.index, entry.count)
            continue
        if isinstance(entry.item, Failure):
            assembler.add_failure(entry.unit.index, entry.position, entry.item)
            continue
        sample, prepared = entry.item
        token_ids = prompt.token_ids(sample.org_caption)
        if len(token_ids) > settings.max_prompt_length:
            assembler.add_failure(entry.unit.index, entry.position, Failure(
                sample.key, sample.source, f"prompt with its org_caption is {len(token_ids)} tokens, over the "
                f"largest decode.prompt_buckets entry ({settings.max_prompt_length})"))
            continue
        yield Request(token_ids, prepared.pixels, SampleTag(entry.unit.index, entry.position, sample, prepared),
                      sample_seed(sample.key))


def caption_units(config: ml_collections.ConfigDict, units: list[inputs.WorkUnit],
                  output: OutputDataset, spec: CaptionerSpec | None = None) -> dict[str, Any]:
    mesh = startup.check_mesh(config)
    check_fits_on_tpu(config, mesh)  # before reading any weights
    spec = spec or startup.read_spec(config)
    model, dtype = compute_model(config, spec)
    prompt = CaptionPrompt(spec.prompt_encoder(), config.prompt)
    settings = decode_settings(config, spec.stop_ids).for_prompt(len(prompt.fixed_ids), prompt.conditioned)
    settings.bucket(len(prompt.fixed_ids))  # fails now if the prompt cannot fit any bucket
    # uint8 pixels from the input workers (units.ImagePreparer), normalised in the prefill.
    programs = decode_programs(model, settings, dtype, mesh, spec.image)
    # The loader's abstract params (cached: traced once for both) unless Qwix changes the leaves.
    boxed = None if config.model.quantize else abstract_params(spec.config, dtype)
    compiles = compile_ahead(model, settings, mesh, dtype, programs, pixels_dtype=jnp.uint8,
                             boxed_params=boxed)  # while the weights load
    spec, params = load_params(config, mesh, spec)
    sampler: Sampler[SampleTag] = Sampler(model, params, settings, cache_dtype=dtype, mesh=mesh, programs=programs)

    meter = Progress(total_units=len(units), every_s=config.progress_every_s)
    assembler = UnitAssembler(units, output, meter)
    wait = InputWait()
    # One stream over all units: worker threads keep decoding across unit boundaries.
    entries = pipeline.prepared_units(units, ImagePreparer(spec.image, config.input.max_pixels),
                                      num_workers=config.input.num_workers, prefetch=config.input.prefetch)
    compiles.wait()
    for result in sampler.generate(caption_requests(wait.timed(entries), prompt, settings, assembler)):
        tag = result.tag
        record = caption_record(spec.tokenizer, tag, result)
        if record["re_caption"]:
            assembler.add_record(tag.unit_index, tag.position, record)
        else:  # an empty recaption is no caption: list it rather than write an empty text
            why = ("the model stopped at once" if not len(result.tokens)
                   else f"its {len(result.tokens)} tokens decode to no text")
            assembler.add_failure(tag.unit_index, tag.position, Failure(
                tag.sample.key, tag.sample.source, f"empty caption ({why})"))
        meter.update(captioned=int(bool(record["re_caption"])),
                     generated_tokens=len(result.tokens) + result.stopped, prefill_tokens=result.prompt_length)
    meter.close()
    return {"captioned": meter.captioned, "failed": meter.failed,
            "generated_tokens": meter.generated_tokens, "prefill_tokens": meter.prefill_tokens,
            "input_wait_s": round(wait.total_s, 3), "input_wait_first_s": round(wait.first_s, 3),
            "captioning_s": round(meter.elapsed(), 2),
            # host time with no device call in flight (waiting for input, building prefill groups;
            # a compile counts as in flight), and its share of captioning_s
            "device_idle_s": round(sampler.device_idle_s, 3),
            "device_idle_share": round(sampler.device_idle_s / max(meter.elapsed(), 1e-9), 4)}
