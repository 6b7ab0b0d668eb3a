"""Compile the caption job (and the CLIP train step) for a TPU slice on a machine without one.

    pip install -e '.[tpu]'   # libtpu: compiles for TPU devices, no TPU needed
    python -m recap_jax.plan --config configs/v4_256.py [--topology v4-256] [--json]
    python -m recap_jax.plan --config configs/v4_256.py --clip_config configs/clip_v4_pod.py
    python -m recap_jax.plan --clip_config configs/clip_v4_pod.py --topology v4-256   # CLIP only
    python -m recap_jax.plan --dit_config configs/recap_dit_b4.py --topology v4-64    # Recap-DiT only

Prints per chip: params, KV cache, decode state, temporaries and total against the chip's HBM,
the verdict (exit 0: fits; exit 3: does not fit, naming the largest decode.batch_size that does),
the collectives of each compiled function, and FLOPs/bytes per image with the images/s/chip
bound and the days 1.3B images take. Config errors exit 2 (one line naming the field).
"""

import json
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the host's own backend; TPU devices come from libtpu

from collections.abc import Sequence  # noqa: E402

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from recap_jax import cli  # noqa: E402
from recap_jax.errors import ConfigError  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Caption config (configs/*.py).", lock_config=True)
_CLIP = config_flags.DEFINE_config_file("clip_config", None, "Optional CLIP train config to plan too.")
_DIT = config_flags.DEFINE_config_file("dit_config", None, "Optional Recap-DiT train config to plan too "
                                       "(configs/recap_dit_*.py).")
_DIT_TEXT = flags.DEFINE_string("dit_text", "L", "CLIP text tower the DiT reads: tiny, B, L (CLIP ViT-L/14's) or H.")
_DIT_SAMPLES = flags.DEFINE_float("dit_samples", 0, "DiT training samples for the days estimate "
                                  "(0: train.num_steps x train.global_batch_size).")
_TOPOLOGY = flags.DEFINE_string("topology", None, "Slice (v4-256, v5e-256) or libtpu topology (v4:4x4x8); "
                                "default: the config's tpu.topology, else v4-8.")
_JSON = flags.DEFINE_bool("json", False, "Print the plan as one JSON object.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 49, "Mean generated tokens per image (the paper: ~49).")
_EFFICIENCY = flags.DEFINE_float("efficiency", 0.6, "Realistic fraction of the bound, for the days estimate "
                                  "(0.6: about MaxText's published v4 MFU, 53-59%, applied to the bound).")
_RESERVE = flags.DEFINE_float("reserve_gib", 1.0, "HBM per chip kept free for the runtime.")
_ALL_BUCKETS = flags.DEFINE_bool("all_buckets", False, "Also compile the prefill buckets other prompts "
                                 "would use (the job compiles only its prompt's bucket).")

EXIT_DOES_NOT_FIT = 3


def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {list(argv[1:])}; see --help")
    if not 0 < _EFFICIENCY.value <= 1:
        raise ConfigError(f"--efficiency={_EFFICIENCY.value}: expected a fraction of the bound in (0, 1]")
    if _NEW_TOKENS.value < 1 or _RESERVE.value < 0:
        raise ConfigError(f"--new_tokens={_NEW_TOKENS.value} / --reserve_gib={_RESERVE.value}: expected "
                          ">= 1 token and >= 0 GiB")
    if _CONFIG.value is None and _CLIP.value is None and _DIT.value is None:
        raise ConfigError("--config (a caption config, e.g. configs/v4_256.py), --clip_config and/or "
                          "--dit_config is required")
    from recap_jax.planning import run  # deferred past the flags (cli.job_main)

    settings = run.PlanSettings(topology=_TOPOLOGY.value or "", new_tokens=_NEW_TOKENS.value,
                                efficiency=_EFFICIENCY.value, reserve_gib=_RESERVE.value,
                                all_buckets=_ALL_BUCKETS.value)
    result, lines, ok = {}, [], True
    if _CONFIG.value is not None:
        result, lines, ok = run.plan(_CONFIG.value, settings, _CLIP.value)
    elif _CLIP.value is not None:
        result, lines, ok = run.plan_clip(_CLIP.value, settings)
    if _DIT.value is not None:
        dit, dit_lines, dit_ok = run.plan_dit(_DIT.value, settings, _DIT_TEXT.value, _DIT_SAMPLES.value)
        result, lines, ok = ({**result, "dit": dit} if result else dit), lines + [""] * bool(lines) + dit_lines, ok and dit_ok
    print(json.dumps(result, indent=1) if _JSON.value else "\n".join(lines), flush=True)
    return 0 if ok else EXIT_DOES_NOT_FIT


if __name__ == "__main__":
    cli.run_config_command(main, __doc__, __name__)
