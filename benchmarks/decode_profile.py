"""Where a decode step's time goes: the step at growing KV-cache lengths vs its GEMMs alone.

    python benchmarks/decode_profile.py [--batch 64] [--cache-buckets 96,512]

Uses the random llava-hf checkpoint of `caption_vs_hf.py` (built there; --checkpoint). For each
prompt bucket (cache length = bucket + max_new_tokens) it times the Sampler's jitted decode loop
with every slot live, then a jitted scan of the same step's matmuls alone (Q, K/V, O, gate, up,
down per layer, the LM head): what a step would cost if only its weights mattered. A step time
that grows with the cache length, above the GEMM time, is time spent on the cache.
Writes benchmarks/results/decode_profile.json.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from common import dense_matmul_flops  # benchmarks/common.py, beside this script

HERE = pathlib.Path(__file__).resolve().parent


def time_decode_step(model, params, batch: int, bucket: int, new_tokens: int) -> float:
    from recap_jax.decoding.sampler import Sampler
    from recap_jax.decoding.settings import DecodeSettings
    settings = DecodeSettings(max_new_tokens=new_tokens, batch_size=batch, prefill_batch=min(8, batch),
                              prompt_buckets=(bucket,), steps_per_sync=8, cache_tile=1)
    sampler = Sampler(model, params, settings)
    state = sampler.programs.init()

    def all_live(s):  # fresh arrays each call: the decode loop donates its input state
        return s._replace(done=jnp.zeros_like(s.done), num_generated=jnp.zeros_like(s.num_generated))

    state = all_live(state._replace(position=jnp.full_like(state.position, bucket - 8)))
    never = np.int32(batch + 1)  # no early return for a refill
    state = sampler.programs.decode(sampler.params, state, never)
    jax.block_until_ready(state)
    calls = 3
    start = time.perf_counter()
    for _ in range(calls):
        state = sampler.programs.decode(sampler.params, all_live(state), never)
    jax.block_until_ready(state)
    return (time.perf_counter() - start) / (calls * settings.steps_per_sync)


def time_step_gemms(config, batch: int) -> float:
    t = config.text
    x = jnp.ones((batch, t.hidden_size))
    w = {"q": (t.hidden_size, t.num_heads * t.head_dim), "kv": (t.hidden_size, 2 * t.num_kv_heads * t.head_dim),
         "o": (t.num_heads * t.head_dim, t.hidden_size), "gate": (t.hidden_size, t.intermediate_size),
         "up": (t.hidden_size, t.intermediate_size), "down": (t.intermediate_size, t.hidden_size)}
    w = {k: jnp.ones((t.num_layers,) + s) / s[0] for k, s in w.items()}
    lm_head = jnp.ones((t.hidden_size, t.vocab_size))

    @jax.jit
    def gemms(x, w, lm_head):
        def layer(h, lw):
            kv = h @ lw["kv"]
            h = h + (h @ lw["q"]) @ lw["o"] + ((h @ lw["gate"]) * (h @ lw["up"])) @ lw["down"] + 0 * kv[:, :1]
            return h, None
        h, _ = jax.lax.scan(layer, x, w)
        return jnp.argmax(h @ lm_head, -1)

    gemms(x, w, lm_head).block_until_ready()
    repeats = 10
    start = time.perf_counter()
    for _ in range(repeats):
        out = gemms(x, w, lm_head)
    out.block_until_ready()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--cache-buckets", default="96,512", help="prompt buckets to time (comma-separated)")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--checkpoint", default="/tmp/recap_bench_llava")
    parser.add_argument("--out", default=str(HERE / "results" / "decode_profile.json"))
    args = parser.parse_args()

    from recap_jax.captioning import model_loading
    from recap_jax.models.llava import LlavaModel
    if not (pathlib.Path(args.checkpoint) / "config.json").exists():
        import caption_vs_hf
        caption_vs_hf.build_checkpoint(pathlib.Path(args.checkpoint))
    spec, params = model_loading.load_captioner(hf_dir=args.checkpoint)
    model = LlavaModel(spec.config)
    gemm_s = time_step_gemms(spec.config, args.batch)
    rows = []
    for bucket in (int(b) for b in args.cache_buckets.split(",")):
        step_s = time_decode_step(model, params, args.batch, bucket, args.new_tokens)
        rows.append({"cache_length": bucket + args.new_tokens, "step_s": step_s, "gemm_s": gemm_s,
                     "outside_gemms_s": step_s - gemm_s})
        print(f"batch {args.batch}, cache {bucket + args.new_tokens:4d} positions: step {1e3 * step_s:6.1f} ms, "
              f"its GEMMs alone {1e3 * gemm_s:6.1f} ms, the rest {1e3 * (step_s - gemm_s):6.1f} ms", flush=True)
    result = {"args": vars(args), "rows": rows, "dense_matmul_flops_per_s": dense_matmul_flops()}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
