"""The caption job's fit check at start-up on TPU: compile, compare with the chip's HBM, and fail
naming the field to change before any weights are read."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import ml_collections
from jax.sharding import Mesh

from recap_jax.errors import ConfigError
from recap_jax.planning import caption_plan
from recap_jax.planning.chips import GIB, Chip, chip_of
from recap_jax.planning.model_spec import planned_model

RESERVE_BYTES = 1 * GIB  # HBM kept free for the runtime


def fit_error(config: ml_collections.ConfigDict, devices: Sequence, chip: Chip,
              reserve_bytes: int = RESERVE_BYTES) -> str | None:
    """None if the job's compiled functions fit `chip`, else the message naming the fix."""
    model = planned_model(config)
    try:
        plan = caption_plan.compile_caption(config, model, devices, costs=False)
        if caption_plan.fits(plan, chip, reserve_bytes):
            return None
        need = f"needs {plan.total_bytes / GIB:.2f} GiB per chip of {chip.hbm_bytes / GIB:.2f} GiB"
    except caption_plan.CompilerOutOfMemory as e:
        plan, need = None, f"the TPU compiler says: {e}"
    largest, _ = caption_plan.largest_fitting_batch(config, model, devices, plan, chip, reserve_bytes)
    if largest:
        return (f"decode.batch_size={config.decode.batch_size} does not fit a TPU {chip.name} chip ({need}); "
                f"the largest that fits is {largest}: set --config.decode.batch_size={largest}")
    return (f"decode.batch_size={config.decode.batch_size}: the model does not fit a TPU {chip.name} chip "
            f"({need}) at any batch size; shard it (mesh.tensor or mesh.fsdp > 1)")


def check_fits_on_tpu(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
    """Raise ConfigError if the job cannot fit this host's TPU chips; nothing on other platforms."""
    devices = list(mesh.devices.flat)
    if devices[0].platform != "tpu":
        return
    chip = chip_of(devices[0])
    try:
        stats = devices[0].memory_stats() or {}
    except jax.errors.JaxRuntimeError:  # a compile-only device (libtpu's topology): the nominal HBM
        stats = {}
    if stats.get("bytes_limit"):  # what the runtime really lets us use
        chip = Chip(**{**chip.__dict__, "hbm_bytes": int(stats["bytes_limit"])})
    message = fit_error(config, devices, chip, reserve_bytes=0 if stats.get("bytes_limit") else RESERVE_BYTES)
    if message:
        raise ConfigError(message)
