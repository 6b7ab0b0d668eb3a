"""Multi-host start-up, the same for every command: the `distributed` config fields."""

import os

import jax
import ml_collections

from recap_jax.errors import ConfigError

MODES = ("auto", "on", "off")


def distributed_config() -> ml_collections.ConfigDict:
    """The `config.distributed` fields every command's config carries."""
    return ml_collections.ConfigDict(dict(
        # "auto": jax.distributed.initialize() on a multi-host TPU slice (found from its environment);
        # "on": always (give the fields below off TPU); "off": never (one host).
        mode="auto",
        coordinator_address="",  # host:port of process 0 ("on" off TPU)
        num_processes=1,  # number of processes ("on" off TPU)
        process_id=0,  # this process's index ("on" off TPU)
    ))


def check_distributed_config(d: ml_collections.ConfigDict) -> None:
    if d.mode not in MODES:
        raise ConfigError(f"distributed.mode={d.mode!r}: expected one of {', '.join(MODES)}")


def on_multihost_tpu() -> bool:
    return bool(os.environ.get("TPU_WORKER_HOSTNAMES", "").count(","))


def initialize_distributed(d: ml_collections.ConfigDict) -> None:
    """Calls jax.distributed.initialize() as `distributed.mode` says; before any other JAX call."""
    check_distributed_config(d)
    if d.mode == "on":
        jax.distributed.initialize(coordinator_address=d.coordinator_address or None,
                                   num_processes=d.num_processes, process_id=d.process_id)
    elif d.mode == "auto" and on_multihost_tpu():
        jax.distributed.initialize()  # TPU pods discover the coordinator themselves


def process_index() -> int:
    """This host's index (0 on one host): the one that prints a command's summary."""
    return jax.process_index()
