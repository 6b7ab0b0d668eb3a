"""Every trainer's checkpoints: WORKDIR/checkpoints/<step>/ written by Orbax, checked on restore.

A step folder holds three items: `state` (the trainer's train state: params, optimizer, step),
`data` (the data iterator's position, JSON) and `loop` (JSON: a checksum of every state leaf
and the loop's metric accumulator). The checksum is computed on the device from the arrays being
saved and compared with the arrays read back, so a missing or damaged chunk (which Orbax may
read as zeros) is caught: the weights used are the weights saved.

Restore takes the newest intact step; a damaged newer one is moved aside to
WORKDIR/set_aside/ (saying so), so the run continues and saves that step again.
`train.resume_from_step=M` restores step M exactly (newer steps are set aside as well).
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from recap_jax.errors import ConfigError

CHECKPOINTS_DIR = "checkpoints"
SET_ASIDE_DIR = "set_aside"
ITEMS = ("state", "data", "loop")


class DamagedCheckpointError(ConfigError):
    """A step folder cannot be read back as it was saved."""


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _path(path: tuple) -> str:
    """'params/image/proj' for a tree path, whatever the containers (dict, dataclass, tuple)."""
    return "/".join(_key_name(k) for k in path)


def _leaf_checksum(x: jax.Array) -> jax.Array:
    """(sum of bit patterns, sum of their squares) mod 2**32: order-free, cheap, sensitive to any
    changed element."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    x = x.astype(jnp.uint8) if x.dtype == jnp.bool_ else x
    width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
    bits = jax.lax.bitcast_convert_type(x, width).astype(jnp.uint32)
    return jnp.stack([jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * bits, dtype=jnp.uint32)])


_checksums = jax.jit(lambda tree: jax.tree.map(_leaf_checksum, tree))


def checksums(tree: Any) -> dict[str, list[int]]:
    """{leaf path: [two uint32 sums]} of a (sharded, possibly multi-host) array tree."""
    sums = _checksums(tree)
    flat = jax.tree_util.tree_flatten_with_path(sums)[0]
    return {_path(p): [int(v) for v in np.asarray(s.addressable_shards[0].data)] for p, s in flat}


def verify(tree: Any, saved: dict[str, list[int]], folder: str) -> None:
    """DamagedCheckpointError naming `folder` if a leaf of `tree` differs from its saved checksum."""
    got = checksums(tree)
    bad = [k for k, v in got.items() if k in saved and saved[k] != v]
    if bad:
        raise DamagedCheckpointError(f"{folder}: damaged (checksum of {len(bad)} array(s) differs from the "
                                     f"saved one, first {bad[0]}); its weights are not the weights saved")


def step_folders(workdir: epath.PathLike) -> list[int]:
    """Saved steps under WORKDIR/checkpoints, oldest first (finished saves only)."""
    root = epath.Path(workdir) / CHECKPOINTS_DIR
    if not root.exists():
        return []
    return sorted(int(p.name) for p in root.iterdir() if re.fullmatch(r"\d+", p.name))


def _manager(workdir: epath.PathLike, keep: int = 1_000_000, create: bool = False,
             asynchronous: bool = True) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create,
                                           enable_async_checkpointing=asynchronous)
    return ocp.CheckpointManager(epath.Path(workdir) / CHECKPOINTS_DIR, options=options, item_names=ITEMS)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]


def restore_step(workdir: epath.PathLike, step: int, abstract_state: Any) -> tuple[Any, Any, dict]:
    """(state, data position, loop record) of one step, checksum-verified; DamagedCheckpointError
    naming the step folder when it cannot be read as saved."""
    folder = f"{epath.Path(workdir) / CHECKPOINTS_DIR / str(step)}"
    manager = _manager(workdir)
    has_loop = (epath.Path(folder) / "loop").exists()
    items = dict(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())
    if has_loop:
        items["loop"] = ocp.args.JsonRestore()
    try:
        restored = manager.restore(step, args=ocp.args.Composite(**items))
    except (ValueError, KeyError, TypeError) as e:
        if _shape_mismatch(e):
            raise ConfigError(f"workdir: {workdir} holds a different run (its checkpoint does not fit this "
                              f"model: {_first_line(e)}); use a new --config.workdir") from None
        raise DamagedCheckpointError(f"{folder}: damaged ({_first_line(e)})") from e
    except Exception as e:  # noqa: BLE001 - tensorstore/OS errors of a damaged folder
        raise DamagedCheckpointError(f"{folder}: damaged ({_first_line(e)})") from e
    finally:
        manager.close()
    loop = dict(restored.loop or {}) if has_loop else {}
    if "checksums" in loop:
        verify(restored.state, loop["checksums"], folder)
    return restored.state, restored.data, loop


def _shape_mismatch(error: BaseException) -> bool:
    text = str(error)
    return "shape" in text.lower() and "not found" not in text.lower() and "missing" not in text.lower()


def set_aside(workdir: epath.PathLike, step: int) -> str:
    """Moves checkpoints/<step> to set_aside/<step>-<time> (kept for inspection; process 0 moves it,
    every host skips it); its new path."""
    src = epath.Path(workdir) / CHECKPOINTS_DIR / str(step)
    dst = epath.Path(workdir) / SET_ASIDE_DIR / f"{step}-{time.time_ns()}"
    if jax.process_index() == 0:
        dst.parent.mkdir(parents=True, exist_ok=True)
        src.rename(dst)
    if jax.process_count() > 1:  # no host lists the step again before it is gone
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f"set_aside {step}")
    return os.fspath(dst)


def restore_latest(workdir: epath.PathLike, abstract_state: Any, resume_from_step: int,
                   say=print) -> tuple[Any, Any, dict, int] | None:
    """(state, position, loop record, step) of the step to resume from, or None (no checkpoint).

    resume_from_step = -1: the newest intact step; a damaged newer one is set aside, saying so.
    M >= 0: step M; newer steps are set aside. DamagedCheckpointError if nothing intact is left."""
    steps = step_folders(workdir)
    if resume_from_step >= 0:
        if resume_from_step not in steps:
            raise ConfigError(f"train.resume_from_step: no step {resume_from_step} under "
                              f"{epath.Path(workdir) / CHECKPOINTS_DIR} (saved: {steps})")
        state, data, loop = restore_step(workdir, resume_from_step, abstract_state)
        for newer in (s for s in steps if s > resume_from_step):
            say(f"train.resume_from_step={resume_from_step}: step {newer} moved to {set_aside(workdir, newer)}")
        return state, data, loop, resume_from_step
    damaged: list[DamagedCheckpointError] = []
    for step in reversed(steps):
        try:
            state, data, loop = restore_step(workdir, step, abstract_state)
        except DamagedCheckpointError as e:
            damaged.append(e)
            continue
        for error, bad in zip(damaged, reversed(steps)):
            say(f"{error}; resuming from step {step}, the newest intact one (step {bad} moved to "
                f"{set_aside(workdir, bad)})")
        return state, data, loop, step
    if damaged:
        raise DamagedCheckpointError(f"{damaged[0]}; no intact step to resume from (checked {steps}); "
                                     "move the damaged folders away, or use a new --config.workdir")
    return None


class Saver:
    """Saves steps (state + data position + loop record with checksums) as the run goes."""

    def __init__(self, workdir: epath.PathLike, keep: int, asynchronous: bool = True):
        (epath.Path(workdir) / CHECKPOINTS_DIR).mkdir(parents=True, exist_ok=True)
        self.manager = _manager(workdir, keep=keep, create=True, asynchronous=asynchronous)
        self.last_saved = self.manager.latest_step()

    def save(self, step: int, state: Any, position: Any, loop: dict[str, Any]) -> None:
        if self.last_saved == step:
            return
        loop = dict(loop, checksums=checksums(state))
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(position), loop=ocp.args.JsonSave(loop)))
        self.last_saved = step

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def restore_params(workdir: epath.PathLike, target: dict[str, Any], field: str) -> tuple[Any, int]:
    """A subtree of the newest step's state (e.g. {"params": ShapeDtypeStructs}; the optimizer
    state stays on disk), checksum-verified, and its step. `field` names the config field of
    `workdir` in errors."""
    steps = step_folders(workdir)
    if not steps:
        raise ConfigError(f"{field}: no checkpoint under {epath.Path(workdir) / CHECKPOINTS_DIR}")
    step = steps[-1]
    folder = f"{epath.Path(workdir) / CHECKPOINTS_DIR / str(step)}"
    manager = _manager(workdir)
    has_loop = (epath.Path(folder) / "loop").exists()
    items = dict(state=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))
    if has_loop:
        items["loop"] = ocp.args.JsonRestore()
    try:
        restored = manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # noqa: BLE001 - Orbax/tensorstore errors of a damaged or foreign folder
        if isinstance(e, (ValueError, KeyError)) and _shape_mismatch(e):
            raise ConfigError(f"{field}: {folder} does not fit this model: {_first_line(e)}") from None
        raise DamagedCheckpointError(f"{folder}: damaged ({_first_line(e)})") from e
    finally:
        manager.close()
    if has_loop and "checksums" in (restored.loop or {}):
        verify(restored.state, restored.loop["checksums"], folder)
    return restored.state, step
