"""Days a TPU v4-256 needs to recaption 1.3B images, from the model FLOPs and measured efficiency.

Superseded by `python -m recap_jax.plan --config configs/v4_256.py`, which compiles the job for
the v4 chips and bounds it from the compiled FLOPs and bytes (README, docs/tpu_plan.md).

    python benchmarks/tpu_estimate.py [--results benchmarks/results/caption_vs_hf.json]

FLOPs per image are counted from the LLaVA-1.5-LLaMA-3-8B config (ViT-L/14-336 tower, feature
layer -2; LLaMA-3-8B) with the paper's workload: 576 image tokens + the prompt, ~49 generated
tokens on average (at most 128). The per-phase fractions of peak are the ones
`benchmarks/caption_vs_hf.py` measured for our pipeline on this machine's CPU (prefill, decode);
they stand in for the TPU's until measured there, so the estimate is given for them, for a
roofline bound of decode on a v4 chip (HBM bandwidth: every decode step reads the bf16 weights and
the KV cache of the captions in flight, per `configs/v4_256.py`), and for a range of assumed
efficiencies.
"""

from __future__ import annotations

import argparse
import json
import pathlib

from recap_jax.models.config import llava_config_from_hf
from recap_jax.models.flops import image_flops, parameter_count

HERE = pathlib.Path(__file__).resolve().parent
V4_CHIP_BF16_FLOPS = 275e12  # per chip (2 TensorCores)
V4_256_CHIPS = 128
V4_CHIP_HBM_BYTES_PER_S = 1.2e12
IMAGES = 1.3e9

LLAVA_LLAMA3_8B = {
    "text_config": {"vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
                    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                    "rope_theta": 500000.0},
    "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                      "num_attention_heads": 16, "image_size": 336, "patch_size": 14},
    "image_token_index": 128256, "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
}


def decode_roofline_efficiency(config, prompt_tokens: int, new_tokens: int, captions_per_chip: int) -> float:
    """Upper bound on decode's fraction of peak on one v4 chip holding a bf16 replica: a step does
    2 x params x batch FLOPs but must stream all weights and the batch's KV cache from HBM."""
    t = config.text
    step_flops = image_flops(config, prompt_tokens, new_tokens).decode / new_tokens * captions_per_chip
    kv_bytes_per_position = 2 * t.num_layers * t.num_kv_heads * t.head_dim * 2
    mean_context = prompt_tokens + new_tokens / 2
    step_bytes = 2 * parameter_count(config) + captions_per_chip * mean_context * kv_bytes_per_position
    compute_s, memory_s = step_flops / V4_CHIP_BF16_FLOPS, step_bytes / V4_CHIP_HBM_BYTES_PER_S
    return compute_s / max(compute_s, memory_s)


def captions_per_chip() -> int:
    import importlib.util
    spec = importlib.util.spec_from_file_location("v4_256", HERE.parent / "configs" / "v4_256.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    replicas_per_host = cfg.mesh.data  # one full replica per chip, four chips per host
    return cfg.decode.batch_size // replicas_per_host


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=str(HERE / "results" / "caption_vs_hf.json"))
    parser.add_argument("--prompt-tokens", type=int, default=576 + 40)
    parser.add_argument("--new-tokens", type=int, default=49)
    args = parser.parse_args()

    config = llava_config_from_hf(LLAVA_LLAMA3_8B)
    flops = image_flops(config, args.prompt_tokens, args.new_tokens)
    total = flops.total * IMAGES
    print(f"LLaVA-LLaMA-3-8B: {parameter_count(config) / 1e9:.2f}B params; per image "
          f"{flops.total / 1e12:.2f} TFLOP (vision {flops.vision / 1e12:.2f}, prefill {flops.prefill / 1e12:.2f}, "
          f"decode {flops.decode / 1e12:.2f}); 1.3B images = {total:.2e} FLOP")
    peak = V4_CHIP_BF16_FLOPS * V4_256_CHIPS
    rows = []
    measured = json.loads(pathlib.Path(args.results).read_text())["roofline"] if pathlib.Path(args.results).exists() else None
    if measured:
        p, d = measured["prefill_fraction_of_peak"], measured["decode_fraction_of_peak"]
        rows.append((f"measured here (prefill {p:.0%}, decode {d:.0%})", p, d))
        bound = decode_roofline_efficiency(config, args.prompt_tokens, args.new_tokens, captions_per_chip())
        rows.append((f"prefill {p:.0%}, decode at v4 HBM bound {bound:.0%}", p, bound))
    rows += [("assumed 60% / 30%", 0.6, 0.3), ("assumed 50% / 20%", 0.5, 0.2), ("assumed 40% / 10%", 0.4, 0.1)]
    out = []
    for name, p, d in rows:
        seconds = (flops.vision + flops.prefill) * IMAGES / (peak * p) + flops.decode * IMAGES / (peak * d)
        out.append({"case": name, "prefill_eff": p, "decode_eff": d, "days": seconds / 86400,
                    "chip_hours": seconds * V4_256_CHIPS / 3600})
        print(f"  {name:40s} {seconds / 86400:6.1f} days on a v4-256 ({seconds * V4_256_CHIPS / 3600:,.0f} chip-hours)")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "tpu_estimate.json").write_text(json.dumps(
        {"flops_per_image": flops.total, "vision": flops.vision, "prefill": flops.prefill,
         "decode": flops.decode, "cases": out}, indent=1))


if __name__ == "__main__":
    main()
