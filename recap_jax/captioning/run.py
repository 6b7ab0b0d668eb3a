"""The caption job: input shards -> decoded, pre-processed images -> greedy captions -> output shards.

Before any weights are loaded, `startup` checks the config, gs:// access and the model's limits;
the run's `identity` (what changes a caption) is checked against the output folder, and
`output_lease` makes this the only job writing there.

Follow one image:
1. `plan_work_units` splits the input into units (a tar, a chunk of files, a record range); this
   host takes its share (`units_for_host`) and skips units already written (resume).
2. `read_unit` yields samples; `prepared_samples` decodes and pre-processes them in worker
   threads (`_prepare`) while the device computes.
3. The `Sampler` prefills and decodes them with continuous batching; results come back tagged with
   their unit and position.
4. When every sample of a unit is captioned or failed, `OutputDataset.write_unit` writes its
   ArrayRecord shard and failures list atomically, in input order.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from recap_jax.captioning import identity, output_lease, startup
from recap_jax.captioning.progress import Progress
from recap_jax.conversion import bundle
from recap_jax.data import images, pipeline, sources
from recap_jax.data.sources import Failure, Sample
from recap_jax.errors import ConfigError
from recap_jax.data.writer import OutputDataset
from recap_jax.decoding.sampler import DecodeSettings, Request, Result, Sampler
from recap_jax.decoding.sharding import decode_state_shardings
from recap_jax.models.llava import LlavaModel
from recap_jax.parallel import mesh as mesh_lib
from recap_jax.preprocess.image import ImageSettings, preprocess_image


def validate(config: ml_collections.ConfigDict) -> None:
    """Fail at start-up, naming the field, rather than hours into a run."""
    m = config.model
    startup.check_config(config)
    if bool(m.hf_dir) == bool(m.checkpoint):
        raise ConfigError("model: set exactly one of model.hf_dir and model.checkpoint")
    if m.hf_dir and _is_local(m.hf_dir) and not epath.Path(m.hf_dir).exists():
        raise ConfigError(f"model.hf_dir: {m.hf_dir} does not exist")
    if (m.checkpoint and _is_local(m.checkpoint) and not m.build_tiny_if_missing
            and not epath.Path(m.checkpoint).exists()):
        raise ConfigError(f"model.checkpoint: {m.checkpoint} does not exist")
    if m.dtype not in bundle.DTYPES:
        raise ConfigError(f"model.dtype={m.dtype!r}: expected one of {sorted(bundle.DTYPES)}")
    if not config.output.dir:
        raise ConfigError("output.dir: required (where the captioned dataset is written)")
    if not config.prompt.strip():
        raise ConfigError("prompt: must not be empty")
    if config.distributed.mode not in ("auto", "on", "off"):
        raise ConfigError(f"distributed.mode={config.distributed.mode!r}: expected auto, on or off")
    if config.input.num_workers < 1:
        raise ConfigError(f"input.num_workers={config.input.num_workers}: must be >= 1")
    try:
        decode_settings(config, ())
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _is_local(path: str) -> bool:
    """Remote paths (gs://) are checked when opened; local ones at start-up."""
    return "://" not in path


def decode_settings(config: ml_collections.ConfigDict, stop_ids: tuple[int, ...]) -> DecodeSettings:
    d = config.decode
    return DecodeSettings(max_new_tokens=d.max_new_tokens, batch_size=d.batch_size,
                          prefill_batch=d.prefill_batch, prompt_buckets=tuple(d.prompt_buckets),
                          steps_per_sync=d.steps_per_sync, stop_ids=stop_ids)


def maybe_initialize_distributed(config: ml_collections.ConfigDict) -> None:
    d = config.distributed
    if d.mode == "on":
        jax.distributed.initialize(coordinator_address=d.coordinator_address or None,
                                   num_processes=d.num_processes, process_id=d.process_id,
                                   local_device_ids=None)
    elif d.mode == "auto" and _on_multihost_tpu():
        jax.distributed.initialize()  # TPU pods discover the coordinator themselves


def _on_multihost_tpu() -> bool:
    import os
    return bool(os.environ.get("TPU_WORKER_HOSTNAMES", "").count(","))


@dataclasses.dataclass
class _UnitProgress:
    unit: sources.WorkUnit
    records: dict[int, dict] = dataclasses.field(default_factory=dict)
    failures: list[tuple[int, Failure]] = dataclasses.field(default_factory=list)
    read: int | None = None  # samples read, once reading the unit has finished

    @property
    def complete(self) -> bool:
        return self.read is not None and len(self.records) + len(self.failures) == self.read


@dataclasses.dataclass
class _Prepared:
    pixels: np.ndarray
    width: int
    height: int


def make_prepare(config: ml_collections.ConfigDict, image_settings: ImageSettings) -> Callable[[Sample], _Prepared]:
    """The worker threads' job for one sample: decode (robustly) and pre-process its image."""
    def prepare(sample: Sample) -> _Prepared:
        image = images.decode_image(sample.image_bytes, max_pixels=config.input.max_pixels)
        return _Prepared(preprocess_image(image, image_settings), *images.image_size(image))
    return prepare


def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Caption this host's share of the input; returns the run summary."""
    validate(config)
    maybe_initialize_distributed(config)
    startup.check_remote(config, config.gcs_timeout_s)
    ensure_demo_checkpoint(config)
    startup.check_limits(config, startup.read_spec(config))  # before loading any weights
    units = sources.plan_work_units(config.input.format, identity.absolute_paths(config.input.paths),
                                    files_per_unit=config.input.files_per_unit,
                                    records_per_unit=config.input.records_per_unit)
    run_identity = identity.run_identity(config, units)
    out_dir = epath.Path(config.output.dir)
    created = jax.process_index() == 0 and not out_dir.exists()
    try:
        with output_lease.hold(config) as lease:
            output = output_lease.process_0_first(lambda: OutputDataset(
                config.output.dir, len(units), fingerprint=run_identity,
                overwrite=config.output.overwrite and jax.process_index() == 0), "output.dir")
            return _caption_share(config, units, output, lease)
    except BaseException:
        if created and out_dir.exists() and not list((out_dir / ".units").glob("*.json")):
            out_dir.rmtree()  # a run that failed before its first unit leaves no stub folder
        raise


def _caption_share(config: ml_collections.ConfigDict, units: list[sources.WorkUnit], output: OutputDataset,
                   lease) -> dict[str, Any]:
    mine = sources.units_for_host(units, jax.process_index(), jax.process_count())
    todo = [u for u in mine if not output.is_done(u.index)]
    print(f"[caption] host {jax.process_index()}/{jax.process_count()}: {len(mine)} of {len(units)} units, "
          f"{len(mine) - len(todo)} already done", flush=True)

    for unit in todo:
        output.clean_unit(unit.index)
    start = time.time()
    stats = {"captioned": 0, "failed": 0, "generated_tokens": 0, "prefill_tokens": 0, "input_wait_s": 0.0,
             "input_wait_first_s": 0.0, "captioning_s": 0.0}
    if todo:
        stats = caption_units(config, todo, output)
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
        from recap_jax.captioning.tiny_demo import build_tiny_checkpoint
        build_tiny_checkpoint(m.checkpoint)


def load_model(config: ml_collections.ConfigDict, mesh):
    m = config.model
    ensure_demo_checkpoint(config)
    dtype = jnp.dtype(bundle.DTYPES[m.dtype])
    with startup.weights_errors(config):
        spec, params = bundle.load_captioner(
            checkpoint=m.checkpoint or None, hf_dir=m.hf_dir or None, tokenizer=m.tokenizer or None,
            template=m.template or None, dtype=m.dtype,
            shardings_fn=lambda boxed: mesh_lib.params_shardings(mesh, boxed))
    return spec, params, LlavaModel(spec.config, dtype=dtype, param_dtype=dtype), dtype


def caption_units(config: ml_collections.ConfigDict, units: list[sources.WorkUnit],
                  output: OutputDataset) -> dict[str, int]:
    mesh = mesh_lib.make_mesh(dict(config.mesh), jax.local_devices())
    batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    for field in ("batch_size", "prefill_batch"):
        if config.decode[field] % batch_shards:
            raise ConfigError(f"decode.{field}={config.decode[field]} must be a multiple of "
                              f"mesh.data x mesh.fsdp = {batch_shards}")
    spec, params, model, dtype = load_model(config, mesh)
    prompt_ids = spec.prompt_encoder().encode(config.prompt)
    settings = decode_settings(config, spec.stop_ids)
    settings.bucket(len(prompt_ids))  # fails now if the prompt cannot fit any bucket
    sampler = Sampler(model, params, settings, cache_dtype=dtype, state_sharding=decode_state_shardings(mesh),
                      data_sharding=mesh_lib.logical_sharding(mesh, ("batch",)))

    prepare = make_prepare(config, spec.image)
    progress = {u.index: _UnitProgress(u) for u in units}
    waited = [0.0, 0.0]  # seconds the decode loop waited for prepared images: in all, for the first
    meter = Progress(total_units=len(units), every_s=config.progress_every_s)

    def requests() -> Iterator[Request]:
        # One stream over all units: worker threads keep decoding across unit boundaries.
        entries = pipeline.prepared_units(units, prepare, num_workers=config.input.num_workers,
                                          prefetch=config.input.prefetch)
        for entry in _timed(entries, waited):
            if isinstance(entry, pipeline.UnitEnd):
                progress[entry.unit.index].read = entry.count
                flush_complete()
            elif isinstance(entry.item, Failure):
                progress[entry.unit.index].failures.append((entry.position, entry.item))
            else:
                sample, ready = entry.item
                yield Request(prompt_ids, ready.pixels, (entry.unit.index, entry.position, sample, ready))

    def flush_complete():
        for index in [i for i, p in progress.items() if p.complete]:
            p = progress.pop(index)
            records = [p.records[k] for k in sorted(p.records)]
            failures = [f for _, f in sorted(p.failures, key=lambda x: x[0])]
            output.write_unit(index, records, failures)
            meter.unit_done(len(records), len(failures))

    for result in sampler.generate(requests()):
        unit_index, position, sample, ready = result.tag
        record = _record(spec.tokenizer, sample, ready, result)
        if record["re_caption"]:
            progress[unit_index].records[position] = record
        else:  # an empty recaption is no caption: list it rather than write an empty text
            progress[unit_index].failures.append(
                (position, Failure(sample.key, sample.source, "empty caption (the model stopped at once)")))
        meter.update(captioned=int(bool(record["re_caption"])),
                     generated_tokens=len(result.tokens) + result.stopped, prefill_tokens=result.prompt_length)
        flush_complete()
    flush_complete()
    meter.close()
    return {"captioned": meter.captioned, "failed": meter.failed,
            "generated_tokens": meter.generated_tokens, "prefill_tokens": meter.prefill_tokens,
            "input_wait_s": round(waited[0], 3), "input_wait_first_s": round(waited[1], 3),
            "captioning_s": round(meter.elapsed(), 2)}


def _timed(items: Iterator, waited: list[float]) -> Iterator:
    """`items`, adding to waited[0] the time each next() blocked: time the host loop (and so the
    device, once its queued work is done) waited for the input pipeline; waited[1]: the first
    next() alone (the pipeline's start-up, which nothing can hide)."""
    first = True
    while True:
        start = time.perf_counter()
        try:
            item = next(items)
        except StopIteration:
            waited[0] += time.perf_counter() - start
            return
        waited[0] += time.perf_counter() - start
        if first:
            waited[1], first = waited[0], False
        yield item


def _record(tokenizer, sample: Sample, ready: _Prepared, result: Result) -> dict[str, Any]:
    caption = tokenizer.decode(result.tokens, skip_special_tokens=True).strip()
    return {"key": sample.key, "url": sample.url, "org_caption": sample.org_caption,
            "re_caption": caption, "image": sample.image_bytes, "width": ready.width,
            "height": ready.height, "org_caption_length": len(sample.org_caption.split()),
            "re_caption_length": len(result.tokens)}
