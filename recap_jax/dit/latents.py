"""The latents job: a caption job's output -> the latents dataset `train_dit` reads (INTERFACES.md).

Follow one record: the caption output (`input.dir`, a TFDS ArrayRecord folder with key, url,
image, org_caption, re_caption) is planned as work units of `input.records_per_unit` records
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
import hashlib
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from recap_jax.captioning import output_lease
from recap_jax.conversion.fingerprint import folder_fingerprint
from recap_jax.data import identity as identity_lib, inputs
from recap_jax.data.inputs import Failure
from recap_jax.data.inputs.tfds import TfdsInput, TfdsUnit
from recap_jax.data.tfds_folder import open_tfds_folder, tfds_builder
from recap_jax.data.writer import OutputDataset
from recap_jax.dit import codec as codec_lib
from recap_jax.dit.images import prepare_encoded
from recap_jax.errors import ConfigError, ImageError
from recap_jax.parallel.distributed import check_distributed_config, initialize_distributed

LATENTS_JSON = "latents.json"
POSTERIORS = ("sample", "mean")
TEXT_FIELDS = ("key", "url", "org_caption", "re_caption")


def latent_features(shape: tuple[int, int, int]) -> tfds.features.FeaturesDict:
    """The latents dataset's record schema."""
    return tfds.features.FeaturesDict({
        **{name: tfds.features.Text() for name in TEXT_FIELDS},
        "latent": tfds.features.Tensor(shape=tuple(shape), dtype=np.float32)})


def validate(config: ml_collections.ConfigDict) -> None:
    """Fail at start-up, naming the field."""
    if not config.input.dir:
        raise ConfigError("input.dir: required (a caption job's output folder)")
    if not config.output.dir:
        raise ConfigError("output.dir: required (where the latents dataset is written)")
    if identity_lib.absolute(config.output.dir) == identity_lib.absolute(config.input.dir):
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
    return codec_lib.load_codec("pixels" if config.autoencoder.kind == "pixels" else config.autoencoder.dir)


def plan_units(config: ml_collections.ConfigDict) -> list[TfdsUnit]:
    """The input's work units; ConfigError if it is not a caption output with images."""
    features = tfds_builder(config.input.dir, "input.dir").info.features
    missing = [f for f in ("image", "re_caption") if f not in features]
    if missing:
        raise ConfigError(f"input.dir: {config.input.dir} has no {missing} field(s) (it has {sorted(features)}); "
                          "a caption job's output with its images (output.store_images=true) is expected")
    fmt = TfdsInput(records_per_unit=config.input.records_per_unit, split=config.input.split)
    return fmt.plan([epath.Path(identity_lib.absolute(config.input.dir))])


def run_identity(config: ml_collections.ConfigDict, codec: Any, units: list[TfdsUnit]) -> dict[str, Any]:
    """What changes a latent: the input and its plan, the codec and its weights, crop and posterior."""
    ae = config.autoencoder
    weights = folder_fingerprint(ae.dir, (".safetensors", "config.json")) if codec.kind != "pixels" else None
    return {"input.dir": identity_lib.absolute(config.input.dir), "units": inputs.units_fingerprint(units),
            "input.max_pixels": config.input.max_pixels, "codec": codec.kind, "autoencoder.weights": weights,
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
                    "scale_factor": codec.scale_factor, "autoencoder_dir": codec.autoencoder_dir,
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
    source = open_tfds_folder(config.input.dir, units[0].split, field="input.dir") if units else None
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


def encode_unit(config, codec, source, unit: TfdsUnit, pool) -> tuple[list[dict], list[Failure]]:
    """One unit's records (in input order) and failures."""
    raw = source.__getitems__(list(range(unit.start, unit.stop)))
    name = epath.Path(unit.path).name

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
            records.append({"key": key, "url": _text(record.get("url")), "org_caption": _text(record.get("org_caption")),
                            "re_caption": _text(record.get("re_caption")), "latent": np.asarray(latent, np.float32)})
    return records, failures
