"""The compiled decode loop of an 8B-shaped captioner with few layers, for a v4 host (libtpu, no TPU).

    python benchmarks/decode_layers_v4.py --layers 2 4 [--batch 256] [--no_cmem] [--attention xla ragged]

For scanned and unrolled decoder layers (`model.scan_layers`) and each layer count, compiles the
caption job's decode loop (`decoding/lowering.py`, configs/v4_256.py's mesh and settings, the
LLaVA-LLaMA-3-8B shapes with `--layers` text layers) and prints per chip and step: XLA's bytes
accessed (a while body counted once: for unrolled layers the difference between two layer
counts is what one layer adds), temporaries, and the ops that copy the KV cache or one layer of it
(a relayout). `--no_cmem` compiles without on-chip (CMEM) staging and cross-program prefetch,
whose copies the cost analysis counts as accesses too (docs/tpu_plan.md). `--attention`: the
`decode.attention` values to compile (the Pallas kernel's reads are not in XLA's count: see
docs/tpu_plan.md, "Decode attention that reads only the live cache").
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

NO_CMEM = {"xla_tpu_cmem_memory_space_assignment": False, "xla_max_cross_program_prefetches": 0}


def cache_copies(text: str, shapes: list[tuple[int, ...]]) -> list[str]:
    from test_decode_layers import cache_copies as find  # the test's definition, one copy
    return find(text, shapes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--batch", type=int, default=256, help="decode.batch_size (4 chips per host)")
    parser.add_argument("--no_cmem", action="store_true")
    parser.add_argument("--attention", nargs="+", default=["auto"], help="decode.attention values")
    parser.add_argument("--scan", choices=["both", "scanned", "unrolled"], default="both")
    args = parser.parse_args()

    from recap_jax.planning import chips
    devices = chips.compile_slice("v4-8").host_devices(0)
    import jax.numpy as jnp
    from configs_loader import load
    from recap_jax.models.config import llava_config_from_hf
    from recap_jax.models.llava import LlavaModel
    from recap_jax.parallel import mesh as mesh_lib
    from recap_jax.planning import caption_plan, hlo
    from recap_jax.planning.model_spec import LLAVA_LLAMA3_8B
    from recap_jax.decoding.lowering import lower_caption_programs

    config = load("v4_256.py")
    mesh = mesh_lib.make_mesh(dict(config.mesh), devices)
    rows = []
    scans = {"both": (True, False), "scanned": (True,), "unrolled": (False,)}[args.scan]
    for attention, scan, layers in itertools.product(args.attention, scans, args.layers):
        config.decode.attention = attention
        settings = caption_plan.settings_of(config, 616, args.batch)
        spec = copy.deepcopy(LLAVA_LLAMA3_8B)
        spec["text_config"]["num_hidden_layers"] = layers
        llava = llava_config_from_hf(spec)
        model = LlavaModel(llava, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, scan_layers=scan)
        start = time.time()
        lowered = lower_caption_programs(model, settings, mesh, jnp.bfloat16, buckets=[])
        compiled = lowered.decode.compile(compiler_options=NO_CMEM if args.no_cmem else {})
        stats, text = hlo.compiled_stats(compiled), compiled.as_text()
        t = llava.text
        layer = (args.batch // len(devices), t.num_kv_heads, settings.cache_length, t.head_dim)
        copies = cache_copies(text, [(layers, *layer), layer, (1, *layer)])
        row = {"attention": attention, "scan_layers": scan, "layers": layers,
               "bytes_accessed_gib": stats.bytes_accessed / 2**30,
               "temp_gib": stats.temp_bytes / 2**30, "cache_copies": copies,
               "loops": len(re.findall(r"\swhile\(", text)), "compile_s": round(time.time() - start, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    for attention, scan in itertools.product(args.attention, scans):
        mine = [r for r in rows if r["scan_layers"] == scan and r["attention"] == attention]
        if not scan and len(mine) >= 2:
            a, b = mine[0], mine[-1]
            per_layer = (b["bytes_accessed_gib"] - a["bytes_accessed_gib"]) / (b["layers"] - a["layers"])
            print(f"{attention}, unrolled: {per_layer:.3f} GiB per layer and step, "
                  f"{a['bytes_accessed_gib'] - a['layers'] * per_layer:.3f} GiB besides the layers")


if __name__ == "__main__":
    main()
