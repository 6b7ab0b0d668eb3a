"""TPU chips and slices as the plan sees them: per-chip limits, slice names, compile-only devices.

`compile_devices("v4-256")` gives the TPU devices of that slice from libtpu's topology
description (no TPU needed: `pip install -e '.[tpu]'` brings libtpu), for ahead-of-time
compilation with `jax.jit(...).lower(...).compile()`, as MaxText's `train_compile.py` does.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Sequence

import jax

from recap_jax.errors import ConfigError

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """Per-chip limits (one JAX device per chip: v4 in megacore mode, v5e/v6e have one core)."""
    name: str
    hbm_bytes: int
    peak_bf16_flops: float  # FLOP/s
    hbm_bytes_per_s: float
    chip_config: str  # libtpu's chip_config_name for the topology description
    max_chips_per_host: int
    peak_int8_ops: float = 0.0  # int8 x int8 matmul OP/s (the MXU's int8 rate); 0: bf16's


# Public spec sheets: cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e ("Peak compute per chip",
# bf16 and Int8). v5e (393 TOPs int8) and v6e (1836) re-read on 2026-12-07; v4 (one figure,
# 275, for bf16 and int8) and v5p (918 int8) as published there, not re-read here.
CHIPS = {
    "v4": Chip("v4", 32 * GIB, 275e12, 1.2e12, "megacore", 4, 275e12),
    "v5e": Chip("v5e", 16 * GIB, 197e12, 819e9, "default", 4, 393e12),
    "v5p": Chip("v5p", 95 * GIB, 459e12, 2.765e12, "megacore", 4, 918e12),
    "v6e": Chip("v6e", 32 * GIB, 918e12, 1.64e12, "default", 4, 1836e12),
}

# Slice name -> libtpu topology. v4/v5p names count TensorCores (2 per chip), v5e/v6e count chips.
SLICES = {
    "v4-8": "v4:2x2x1", "v4-16": "v4:2x2x2", "v4-32": "v4:2x2x4", "v4-64": "v4:2x4x4",
    "v4-128": "v4:4x4x4", "v4-256": "v4:4x4x8", "v4-512": "v4:4x8x8", "v4-1024": "v4:8x8x8",
    "v5e-4": "v5e:2x2", "v5e-8": "v5e:2x4", "v5e-16": "v5e:4x4", "v5e-32": "v5e:4x8",
    "v5e-64": "v5e:8x8", "v5e-128": "v5e:8x16", "v5e-256": "v5e:16x16",
    "v5p-8": "v5p:2x2x1", "v5p-16": "v5p:2x2x2", "v5p-32": "v5p:2x2x4", "v5p-64": "v5p:2x4x4",
    "v5p-128": "v5p:4x4x4", "v5p-256": "v5p:4x4x8", "v5p-512": "v5p:4x8x8", "v5p-1024": "v5p:8x8x8",
    "v6e-4": "v6e:2x2", "v6e-8": "v6e:2x4", "v6e-16": "v6e:4x4", "v6e-32": "v6e:4x8", "v6e-64": "v6e:8x8",
    "v6e-128": "v6e:8x16", "v6e-256": "v6e:16x16",
}


@dataclasses.dataclass(frozen=True)
class Slice:
    name: str  # e.g. "v4-256"
    topology: str  # e.g. "v4:4x4x8"
    chip: Chip
    devices: tuple  # every device of the slice (compile-only)

    @property
    def num_chips(self) -> int:
        return len(self.devices)

    @property
    def num_hosts(self) -> int:
        return len({d.process_index for d in self.devices})

    def host_devices(self, process_index: int = 0) -> list:
        return [d for d in self.devices if d.process_index == process_index]


def parse_slice(name: str) -> tuple[str, str, Chip]:
    """'v4-256' or 'v4:4x4x8' -> (slice name, topology, chip)."""
    topology = SLICES.get(name, name)
    match = re.fullmatch(r"(v\d+[a-z]?):(\d+(?:x\d+)*)", topology)
    if not match or match.group(1) not in CHIPS:
        close = difflib.get_close_matches(name, SLICES, n=1)
        raise ConfigError(f"topology {name!r}: " + (f"did you mean {close[0]!r}? " if close else "") +
                          f"expected a slice name of {'/'.join(CHIPS)} (e.g. v4-256, v5e-256, v5p-128, v6e-256; "
                          "planning/chips.py SLICES) or a libtpu topology such as v4:2x2x1 or v5e:4x4")
    return name if name in SLICES else topology, topology, CHIPS[match.group(1)]


def quiet_libtpu_env(slice_name: str) -> None:
    """Environment for libtpu on a machine without TPUs, set before its first use: no worker
    discovery, no lock against other JAX processes on this machine."""
    accelerator = slice_name if slice_name in SLICES else "v4-8"
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", accelerator)
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def compile_slice(name: str) -> Slice:
    """The slice's devices for ahead-of-time compilation (needs libtpu, no TPU)."""
    slice_name, topology, chip = parse_slice(name)
    quiet_libtpu_env(slice_name)
    from jax.experimental import topologies
    try:
        desc = topologies.get_topology_desc(platform="tpu", topology_name=topology,
                                            chip_config_name=chip.chip_config)
    except Exception as e:  # no libtpu, or libtpu does not know the topology
        raise ConfigError(f"topology {name!r}: libtpu cannot describe {topology} ({e}); "
                          "install it with pip install -e '.[tpu]'") from None
    return Slice(slice_name, topology, chip, tuple(desc.devices))


# Chips without full ICI routing: their compiler refuses a device assignment that is part of a
# slice ("should include all slice devices"), so a host's own programs are compiled for a slice
# of one host's size, which is what each host of the pod runs on its chips.
HOST_SLICES = {"v5e": "v5e:2x2", "v6e": "v6e:2x2"}


def host_program_devices(pod: Slice) -> list:
    """The devices to compile one host's caption programs for (see HOST_SLICES)."""
    if pod.chip.name not in HOST_SLICES or pod.num_hosts == 1:
        return pod.host_devices(0)
    devices = list(compile_slice(HOST_SLICES[pod.chip.name]).devices)
    if len(devices) != len(pod.host_devices(0)):
        raise ConfigError(f"topology {pod.name}: hosts of {len(pod.host_devices(0))} chips, but the per-host "
                          f"slice {HOST_SLICES[pod.chip.name]} has {len(devices)}")
    return devices


def chip_of(device: jax.Device) -> Chip:
    """The Chip of a real (or compile-only) TPU device, from its device_kind ('TPU v4', 'TPU v5 lite')."""
    kind = device.device_kind.lower()
    for key, name in (("v5 lite", "v5e"), ("v5e", "v5e"), ("v6", "v6e"), ("v5p", "v5p"), ("v5", "v5p"),
                      ("v4", "v4")):
        if key in kind:
            return CHIPS[name]
    raise ValueError(f"unknown TPU device kind {device.device_kind!r}")


def hosts_of(devices: Sequence) -> dict[int, list]:
    hosts: dict[int, list] = {}
    for d in devices:
        hosts.setdefault(d.process_index, []).append(d)
    return hosts
