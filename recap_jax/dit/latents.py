"""The latents job: a caption job's output -> the latents dataset `train_dit` reads (INTERFACES.md).

Follow one record: the caption output (`input.dir`, a TFDS ArrayRecord folder with key, url,
image, org_caption, re_caption; a captions-only output gets its images from the caption job's
input by key, sha256 checked) is planned as work units of `input.records_per_unit` records
(the caption job's `tfds` input format); this host takes its share and skips units already
written (resume). Worker threads decode each image robustly (`data/images.py`) and crop it as
DiT does (`dit/images.py`); the codec encodes batches of `batch_size` (the last one padded, so
one compiled shape); the unit's records (key, url, org_caption, re_caption, latent) and failures
are written atomically with a done marker (`data/writer.py`), under the caption job's output lease
and run identity. A unit is either done or redone, so a SIGKILL and a rerun give every key once.

The posterior: `autoencoder.posterior="sample"` (DiT's `latent_dist.sample()`) draws the noise
from a seed of (`seed`, key), so a latent does not depend on batching, hosts or resumption;
"mean" takes the posterior mean. The latents are multiplied by the autoencoder's scale factor.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import time
from typing import Any, ClassVar

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from recap_jax.data import output_lease
from recap_jax.conversion.fingerprint import folder_fingerprint
from recap_jax.data import identity as identity_lib, inputs
from recap_jax.data.inputs import Failure, WorkUnit
from recap_jax.data.inputs.tfds import TfdsInput, TfdsUnit
from recap_jax.data.tfds_folder import open_tfds_folder, tfds_builder
from recap_jax.data.writer import OutputDataset
from recap_jax.dit import codec as codec_lib
from recap_jax.dit.images import prepare_encoded
from recap_jax.errors import ConfigError, ImageError
from recap_jax.parallel.distributed import check_distributed_config, initialize_distributed

LATENTS_JSON = "latents.json"
POSTERIORS = ("sample", "mean")
INPUT_FORMATS = ("caption_output", "released")
_RELEASED: dict[tuple[str, str, str], Any] = {}  # indexed img2dataset tars, by (paths, captions_map, parquet)
TEXT_FIELDS = ("key", "url", "org_caption", "re_caption")


def latent_features(shape: tuple[int, int, int]) -> tfds.features.FeaturesDict:
    """The latents dataset's record schema."""
    return tfds.features.FeaturesDict({
        **{name: tfds.features.Text() for name in TEXT_FIELDS},
        "latent": tfds.features.Tensor(shape=tuple(shape), dtype=np.float32)})


def validate(config: ml_collections.ConfigDict) -> None:
    """Fail at start-up, naming the field."""
    if config.input.format not in INPUT_FORMATS:
        raise ConfigError(f"input.format={config.input.format!r}: expected one of {INPUT_FORMATS}")
    if config.input.format == "released":
        if not config.input.paths or not config.input.captions_map:
            raise ConfigError("input.paths / input.captions_map: input.format=released needs the img2dataset "
                              "tars and where each caption is (e.g. org_caption=txt,re_caption=json:re_caption)")
    elif not config.input.dir:
        raise ConfigError("input.dir: required (a caption job's output folder)")
    if not config.output.dir:
        raise ConfigError("output.dir: required (where the latents dataset is written)")
    if config.input.dir and identity_lib.absolute(config.output.dir) == identity_lib.absolute(config.input.dir):
        raise ConfigError("output.dir: must differ from input.dir")
    if config.autoencoder.kind not in codec_lib.CODECS:
        raise ConfigError(f"autoencoder.kind={config.autoencoder.kind!r}: expected one of {tuple(codec_lib.CODECS)}")
    if config.autoencoder.kind != "pixels" and not config.autoencoder.dir:
        raise ConfigError("autoencoder.dir: required for autoencoder.kind=\"kl-f8\" (a diffusers AutoencoderKL "
                          "folder), or set --config.autoencoder.kind=pixels")
    if config.autoencoder.posterior not in POSTERIORS:
        raise ConfigError(f"autoencoder.posterior={config.autoencoder.posterior!r}: expected one of {POSTERIORS}")
    for field in ("image_size", "batch_size", "input.records_per_unit", "input.num_workers"):
        value = config[field] if "." not in field else config.input[field.split(".")[1]]
        if int(value) < 1:
            raise ConfigError(f"{field}={value}: must be >= 1")
    check_distributed_config(config.distributed)


def load_codec(config: ml_collections.ConfigDict) -> Any:
    """The configured codec; the demo's tiny random autoencoder is built first if asked for."""
    ae = config.autoencoder
    if ae.kind == "pixels":
        return codec_lib.load_codec("pixels")
    if ae.build_tiny_if_missing and not epath.Path(ae.dir).exists():
        from recap_jax.dit.tiny_autoencoder import build_tiny_autoencoder
        build_tiny_autoencoder(ae.dir)
    return codec_lib.load_codec(ae.dir)


@dataclasses.dataclass(frozen=True)
class RecordRange(WorkUnit):
    """A unit of released img2dataset tars: records [start, stop) of their indexed samples."""
    format: ClassVar[str] = "released"
    start: int = 0
    stop: int = 0
    split: str = ""


def released_records(config: ml_collections.ConfigDict) -> Any:
    """input.format="released": img2dataset tars (input.paths) with the captions input.captions_map
    names, optionally from released Parquet (input.captions_parquet), as the CLIP trainer reads them."""
    from recap_jax.data.inputs.paths import split_paths
    from recap_jax.release.webdataset_records import WebdatasetRecords, tar_paths
    i = config.input
    what = (i.paths, i.captions_map, i.captions_parquet)
    if what not in _RELEASED:  # indexing reads every tar header: once per process
        try:
            _RELEASED[what] = WebdatasetRecords(tar_paths(split_paths(i.paths)), i.captions_map,
                                                split_paths(i.captions_parquet))
        except ConfigError as e:  # its messages name the CLIP trainer's data.* fields
            raise ConfigError(str(e).replace("data.folders", "input.paths").replace("data.", "input.")) from None
    return _RELEASED[what]


def plan_units(config: ml_collections.ConfigDict) -> list[TfdsUnit | RecordRange]:
    """The input's work units; ConfigError if it is not a caption output with images."""
    if config.input.format == "released":
        size, step = len(released_records(config)), config.input.records_per_unit
        paths = ",".join(identity_lib.absolute(p) for p in config.input.paths.split(",") if p.strip())
        return [RecordRange(n, paths, start=s, stop=min(s + step, size)) for n, s in enumerate(range(0, size, step))]
    features = tfds_builder(config.input.dir, "input.dir").info.features
    if "re_caption" not in features:
        raise ConfigError(f"input.dir: {config.input.dir} has no re_caption field (it has {sorted(features)}); "
                          "a caption job's output is expected")
    fmt = TfdsInput(records_per_unit=config.input.records_per_unit, split=config.input.split)
    return fmt.plan([epath.Path(identity_lib.absolute(config.input.dir))])


def open_input(config: ml_collections.ConfigDict, split: str) -> Any:
    """The caption output as a random-access source of records with image bytes: a captions-only
    output (output.store_images=false) is joined with the caption job's input images by key, each
    checked against its sha256 (release/image_join.py, as the CLIP trainer does)."""
    from recap_jax.release.image_join import JoinedRecords, has_images
    if config.input.format == "released":
        return released_records(config)
    source = open_tfds_folder(config.input.dir, split, field="input.dir")
    if has_images(source):
        return source
    return JoinedRecords(source, config.input.dir, config.input.image_paths, config.input.image_format,
                         field="input.image_paths")


def run_identity(config: ml_collections.ConfigDict, codec: Any, units: list[TfdsUnit]) -> dict[str, Any]:
    """What changes a latent: the input and its plan, the codec and its weights, crop and posterior."""
    ae = config.autoencoder
    weights = folder_fingerprint(ae.dir, (".safetensors", "config.json")) if codec.kind != "pixels" else None
    i = config.input
    where = ({"input.dir": identity_lib.absolute(i.dir)} if i.format != "released" else
             {"input.format": i.format, "input.captions_map": i.captions_map,
              "input.captions_parquet": i.captions_parquet})
    return {**where, "units": inputs.units_fingerprint(units),
            "input.max_pixels": config.input.max_pixels, "input.image_paths": config.input.image_paths,
            "input.image_format": config.input.image_format, "codec": codec.kind, "autoencoder.weights": weights,
            "autoencoder.posterior": ae.posterior if codec.kind != "pixels" else None,
            "image_size": config.image_size, "seed": config.seed}


def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Encode this host's share of the input; returns the run summary."""
    validate(config)
    initialize_distributed(config.distributed)
    codec = load_codec(config)
    shape = codec.latent_shape(config.image_size)
    units = plan_units(config)
    fingerprint = run_identity(config, codec, units)
    out_dir = epath.Path(config.output.dir)
    created = jax.process_index() == 0 and not out_dir.exists()
    try:
        with output_lease.hold(config) as lease:
            output = output_lease.process_0_first(lambda: OutputDataset(
                config.output.dir, len(units), features=latent_features(shape), fingerprint=fingerprint,
                overwrite=config.output.overwrite and jax.process_index() == 0), "output.dir")
            if jax.process_index() == 0:
                identity_lib.write_json(out_dir / LATENTS_JSON, {
                    "codec": codec.kind, "image_size": config.image_size, "latent_shape": list(shape),
                    "scale_factor": codec.scale_factor,
                    "autoencoder_dir": identity_lib.absolute(codec.autoencoder_dir) if codec.autoencoder_dir else None,
                    "posterior": fingerprint["autoencoder.posterior"]})
            summary = _encode_share(config, codec, units, output)
            if lease is not None and lease.took_over is not None:
                summary["lease_taken_over_from"] = lease.took_over.describe()
            return summary
    except BaseException:
        if created and out_dir.exists() and not list((out_dir / ".units").glob("*.json")):
            out_dir.rmtree()  # a run that failed before its first unit leaves no stub folder
        raise


def _encode_share(config, codec, units: list[TfdsUnit], output: OutputDataset) -> dict[str, Any]:
    mine = inputs.units_for_host(units, jax.process_index(), jax.process_count())
    todo = [u for u in mine if not output.is_done(u.index)]
    print(f"[encode_latents] host {jax.process_index()}/{jax.process_count()}: {len(mine)} of {len(units)} "
          f"units, {len(mine) - len(todo)} already done", flush=True)
    for unit in todo:
        output.clean_unit(unit.index)
    start, encoded, failed = time.time(), 0, 0
    source = open_input(config, units[0].split) if units else None
    with concurrent.futures.ThreadPoolExecutor(config.input.num_workers) as pool:
        for unit in todo:
            records, failures = encode_unit(config, codec, source, unit, pool)
            output.write_unit(unit.index, records, failures)
            encoded, failed = encoded + len(records), failed + len(failures)
    wall = time.time() - start
    summary = {"host": jax.process_index(), "units": len(mine), "units_encoded_now": len(todo),
               "encoded": encoded, "failed": failed, "wall_s": round(wall, 2),
               "images_per_s": round(encoded / wall, 3) if wall else 0.0}
    if todo:
        output.write_host_summary(jax.process_index(), summary)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("recap_jax.encode_latents: all units written")
    if jax.process_index() == 0:
        summary["finalized"] = output.finalize(summary if todo else None)
        if summary["finalized"]:
            summary["records_total"] = sum(c["records"] for c in output.counts().values())
    return summary


def _text(value) -> str:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")


def noise_for(key: str, seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """The posterior sample's standard-normal noise of one record, from (seed, key) alone."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little")).standard_normal(shape).astype(np.float32)


def encode_unit(config, codec, source, unit: TfdsUnit | RecordRange, pool) -> tuple[list[dict], list[Failure]]:
    """One unit's records (in input order) and failures."""
    indices = list(range(unit.start, unit.stop))
    raw = source.__getitems__(indices) if hasattr(source, "__getitems__") else [source[i] for i in indices]
    name = "released" if isinstance(unit, RecordRange) else epath.Path(unit.path).name

    def prepare(pair):
        index, record = pair
        key = _text(record.get("key")) or str(index)
        try:
            return key, prepare_encoded(bytes(record["image"]), config.image_size, config.input.max_pixels)
        except ImageError as e:
            return key, Failure(key, f"{name}[{index}]", e.reason)

    prepared = list(pool.map(prepare, zip(range(unit.start, unit.stop), raw)))
    failures = [p for _, p in prepared if isinstance(p, Failure)]
    good = [(record, key, p) for record, (key, p) in zip(raw, prepared) if not isinstance(p, Failure)]
    shape = codec.latent_shape(config.image_size)
    sample = codec.kind != "pixels" and config.autoencoder.posterior == "sample"
    records = []
    for start in range(0, len(good), config.batch_size):
        chunk = good[start:start + config.batch_size]
        pixels = np.stack([p for _, _, p in chunk])
        pad = config.batch_size - len(chunk)
        pixels = np.concatenate([pixels, np.repeat(pixels[-1:], pad, 0)]) if pad else pixels
        noise = None
        if sample:
            noise = np.stack([noise_for(key, config.seed, shape) for _, key, _ in chunk])
            noise = np.concatenate([noise, np.repeat(noise[-1:], pad, 0)]) if pad else noise
        latents = codec.encode(codec_lib.to_model_range(pixels), noise)[:len(chunk)]
        for (record, key, _), latent in zip(chunk, latents):
            texts = {name: _text(record.get(name)) for name in TEXT_FIELDS if name != "key"}
            records.append({"key": key, **texts, "latent": np.asarray(latent, np.float32)})
    return records, failures
