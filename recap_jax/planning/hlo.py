"""Read a compiled program: its collectives (from the HLO text), memory and cost; and the per-device
bytes of an abstract (sharded) tree.

The compiled text is the per-device program after SPMD partitioning, so every collective the
partitioner inserted is there, with its result shape (per device). Async pairs are counted once
(the `-start` op).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter")
_OP = re.compile(r"=\s*(?P<type>.+?)\s+(?P<op>" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
_ARRAY = re.compile(r"\b(?P<dtype>pred|s4|u4|s8|u8|s16|u16|s32|u32|s64|u64|f8e4m3fn|f8e5m2|bf16|f16|f32|f64)"
                    r"\[(?P<dims>[\d,]*)\]")
_OP_NAME = re.compile(r'op_name="(?P<name>[^"]*)"')
_TRIP_COUNT = re.compile(r'known_trip_count"?:\{"?n"?:"?(\d+)')
_BITS = {"pred": 8, "s4": 4, "u4": 4, "f8e4m3fn": 8, "f8e5m2": 8}
_DEF = re.compile(r"^\s*(?:ROOT )?%(?P<name>[\w.\-]+) = (?P<type>[a-z0-9]+\[[\d,]*\])")
_MATMUL = re.compile(r"= (?P<type>[a-z0-9]+\[[\d,]*\])\S* (?:dot|convolution)\("
                     r"%(?P<lhs>[\w.\-]+), %(?P<rhs>[\w.\-]+)\)")
INT8_TYPES = ("s8", "u8")


@dataclasses.dataclass(frozen=True)
class Collective:
    kind: str  # one of COLLECTIVES
    bytes: int  # result bytes per device (all outputs of a tuple-shaped op)
    shape: str  # the HLO result type, layout stripped
    source: str  # the jax op_name it came from ("" when the metadata is missing)


def _type_bytes(type_text: str) -> int:
    total = 0
    for m in _ARRAY.finditer(type_text):
        dtype = m.group("dtype")
        bits = _BITS.get(dtype) or int(re.sub(r"\D", "", dtype))
        size = int(np.prod([int(d) for d in m.group("dims").split(",") if d])) if m.group("dims") else 1
        total += size * bits // 8
    return total


def collectives(hlo_text: str) -> list[Collective]:
    """Every collective of a compiled (partitioned) HLO module, in program order."""
    found = []
    for line in hlo_text.splitlines():
        m = _OP.search(line)
        if not m or "-done" in line.split("=", 1)[1].split("(", 1)[0]:
            continue
        type_text = m.group("type")
        name = _OP_NAME.search(line)
        shape = re.sub(r"\{[^}]*\}", "", type_text)  # drop layouts: bf16[8,128]{1,0:T(8,128)} -> bf16[8,128]
        found.append(Collective(m.group("op"), _type_bytes(type_text), shape.strip(),
                                name.group("name") if name else ""))
    return found


def _elements(type_text: str) -> int:
    dims = type_text[type_text.index("[") + 1:-1]
    return int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1


def int8_matmul_flops(hlo_text: str) -> float:
    """FLOPs of the matmuls whose two operands are int8 (the MXU's int8 rate), per device.

    Compiled HLO names operands without their types, so each instruction's type is looked up by
    name. TPU programs write a matmul as a `convolution`, its layout tricks (padding, reversal)
    differing from op to op; so the FLOPs come from the sizes alone: a matmul without batch
    dimensions ([M, K] x [K, N] -> [M, N], any reshaping) does 2 M N K, K = sqrt(|lhs| |rhs| /
    |out|). Only the decoder's dense layers take int8 activations (`models.quantization`),
    and they have no batch dimensions. A loop body is counted once, as in XLA's cost analysis."""
    types = {m.group("name"): m.group("type") for m in map(_DEF.match, hlo_text.splitlines()) if m}
    total = 0.0
    for m in _MATMUL.finditer(hlo_text):
        lhs, rhs = types.get(m.group("lhs"), ""), types.get(m.group("rhs"), "")
        if lhs.split("[")[0] in INT8_TYPES and rhs.split("[")[0] in INT8_TYPES:
            out = _elements(m.group("type"))
            total += 2.0 * out * float(np.sqrt(_elements(lhs) * _elements(rhs) / out))
    return total


def while_trip_counts(hlo_text: str) -> list[int | None]:
    """The trip count of every while loop (None: decided at run time), in program order."""
    counts = []
    for line in hlo_text.splitlines():
        if re.search(r"=\s*.+?\s+while\(", line):
            m = _TRIP_COUNT.search(line)
            counts.append(int(m.group(1)) if m else None)
    return counts


def summarize_collectives(found: list[Collective]) -> dict[str, dict[str, int]]:
    """kind -> {"count", "bytes"} (per device, each op counted once even inside a loop)."""
    out: dict[str, dict[str, int]] = {}
    for c in found:
        entry = out.setdefault(c.kind, {"count": 0, "bytes": 0})
        entry["count"] += 1
        entry["bytes"] += c.bytes
    return out


@dataclasses.dataclass(frozen=True)
class CompiledStats:
    """What one compiled function needs per device."""
    argument_bytes: int
    output_bytes: int
    alias_bytes: int  # outputs that reuse donated argument buffers
    temp_bytes: int
    code_bytes: int
    flops: float  # per device; a while loop's body is counted once
    bytes_accessed: float
    collectives: list[Collective]
    trip_counts: list[int | None]  # of the program's while loops
    int8_flops: float = 0.0  # of `flops`: matmuls of two int8 operands (int8_matmul_flops)

    @property
    def peak_bytes(self) -> int:
        """Live at once: arguments, outputs that do not alias them, temporaries, the program."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes


def compiled_stats(compiled: Any) -> CompiledStats:
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    if isinstance(cost, list):  # older jax: one dict per module
        cost = cost[0] if cost else {}
    cost = cost or {}
    text = compiled.as_text()
    return CompiledStats(
        argument_bytes=int(mem.argument_size_in_bytes), output_bytes=int(mem.output_size_in_bytes),
        alias_bytes=int(mem.alias_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes),
        code_bytes=int(mem.generated_code_size_in_bytes), flops=float(cost.get("flops", 0.0)),
        bytes_accessed=float(cost.get("bytes accessed", 0.0)), collectives=collectives(text),
        trip_counts=while_trip_counts(text), int8_flops=int8_matmul_flops(text))


def shard_bytes(tree) -> int:
    """Bytes of one device's shard of every array of an abstract tree (device 0 of each sharding)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += jnp.dtype(leaf.dtype).itemsize * math.prod(shape)
    return total
