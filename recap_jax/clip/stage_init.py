"""Start a training stage from the checkpoint of the previous one (CLIPA: 112 px -> 224 px).

`config.init.checkpoint` names the previous stage's train_clip workdir. Its latest params are
read; the image position embeddings are resampled to the new patch grid (`pos_resample`); every
other parameter must keep its shape. `config.init.optimizer` says what happens to AdamW's state:
- "reset" (CLIPA's fine-tuning; the default): a fresh optimizer state, only params are read;
- "keep": Adam's moments (position-embedding moments resampled bilinearly, which keeps the
  second moments non-negative) and its bias-correction count carry over; the learning-rate
  schedule restarts at 0 for the new stage's own warm-up and decay.
The new stage counts its own steps from 0 and starts a fresh data stream.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from etils import epath

from recap_jax.clip import model as model_lib, pos_resample, train_step
from recap_jax.errors import ConfigError
from recap_jax.training import checkpoints

OPTIMIZER_MODES = ("reset", "keep")


def previous_image_size(workdir: str) -> int:
    """The image size the previous stage trained at (from its config.json)."""
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        raise ConfigError(f"init.checkpoint: {workdir} has no config.json (not a train_clip workdir?)")
    run = json.loads(path.read_text())
    if run["model"]["hf_dir"]:
        from recap_jax.clip import hf_weights
        return hf_weights.read_hf_config(run["model"]["hf_dir"]).image_size
    return int(run["model"]["image_size"])


def _restore(workdir: str, target: Any, params_only: bool) -> tuple[Any, int]:
    """The previous stage's newest params (or whole state), checksum-verified, and its step."""
    steps = checkpoints.step_folders(workdir)
    if not steps:
        raise ConfigError(f"init.checkpoint: no checkpoint under {workdir}/checkpoints")
    try:
        if params_only:  # the optimizer state (twice the params) stays on disk
            return checkpoints.restore_params(workdir, {"params": target.params}, "init.checkpoint")
        return checkpoints.restore_step(workdir, steps[-1], target)[0], steps[-1]
    except checkpoints.DamagedCheckpointError:
        raise
    except ConfigError as e:
        raise ConfigError(f"init.checkpoint: {workdir} does not fit this model besides the image size "
                          f"(towers, text length and optimizer must match): {e}") from e


def _carry_optimizer(old: Any, fresh: Any, fresh_params: Any) -> Any:
    """Adam's moments and count from `old` (resampled to the new shapes); other states fresh."""
    if isinstance(fresh, optax.ScaleByAdamState):
        return fresh._replace(count=old.count,
                              mu=pos_resample.resample_params(old.mu, fresh_params, "bilinear"),
                              nu=pos_resample.resample_params(old.nu, fresh_params, "bilinear"))
    if isinstance(fresh, optax.ScaleByScheduleState):
        return fresh  # the new stage's schedule starts from its own step 0
    if isinstance(fresh, tuple) and hasattr(fresh, "_fields"):
        return type(fresh)(*(_carry_optimizer(o, f, fresh_params) for o, f in zip(old, fresh)))
    if isinstance(fresh, (tuple, list)):
        return type(fresh)(_carry_optimizer(o, f, fresh_params) for o, f in zip(old, fresh))
    return fresh


def initial_state(init_cfg: ml_collections.ConfigDict, model: model_lib.CLIP, tx: optax.GradientTransformation,
                  mesh, abstract_state: Any, shardings: Any) -> tuple[train_step.TrainState, dict[str, Any]]:
    """The first TrainState of a stage started from `init_cfg.checkpoint`, placed by `shardings`,
    and a summary of what was carried over."""
    mode = init_cfg.optimizer
    if mode not in OPTIMIZER_MODES:
        raise ConfigError(f"init.optimizer: {mode!r} is not one of {OPTIMIZER_MODES}")
    method = init_cfg.pos_interpolation
    workdir = init_cfg.checkpoint
    old_size = previous_image_size(workdir)
    old_model = model_lib.CLIP(dataclasses.replace(model.cfg, image_size=old_size))
    old_abstract, _ = train_step.abstract_train_state(old_model, tx, mesh)
    restored, step = _restore(workdir, old_abstract, params_only=mode == "reset")
    params = pos_resample.resample_params(restored["params"] if isinstance(restored, dict) else restored.params,
                                          abstract_state.params, method)
    fresh_opt = tx.init(params)
    opt_state = fresh_opt if mode == "reset" else _carry_optimizer(restored.opt_state, fresh_opt, params)
    state = train_step.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state)
    state = jax.device_put(state, shardings)
    old_grid = old_size // model.cfg.patch_size
    new_grid = model.cfg.image_size // model.cfg.patch_size
    return state, {"from": workdir, "step": step, "optimizer": mode,
                   "pos_grid": f"{old_grid}x{old_grid} -> {new_grid}x{new_grid} ({method})"}
