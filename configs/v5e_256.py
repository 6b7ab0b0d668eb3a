"""Recaption DataComp-1B on a TPU v5e-256 slice (64 hosts x 4 chips of 16 GiB) with the paper's captioner.

    python -m recap_jax.caption --config configs/v5e_256.py:input=gs://BUCKET/datacomp/shards,output=gs://BUCKET/recap-datacomp,checkpoint=gs://BUCKET/ckpt/llava-llama-3-8b-hqedit
    python -m recap_jax.plan --config configs/v5e_256.py     # the fit, compiled for the slice

A bf16 copy of the 8B (15.5 GiB) does not fit a 16 GiB chip, so the language model's matmul
weights are int8 (Qwix; ~8.5 GiB per chip with the bf16 vision tower, embeddings and scales),
still one replica per chip, no cross-chip traffic while decoding. `model.quantize = "w8a8"`: the
prefill's decoder matmuls also take int8 activations (v5e multiplies int8 at twice its bf16 rate;
prefill is compute-bound), decode keeps int8 weights only. The rest holds the KV cache (~96 MiB
per caption) and the prefill temporaries: 32 captions per chip. Its caption quality against bf16:
docs/tpu_plan.md ("Quality of the quantised modes").
Needs `pip install -e '.[quant]'` on the workers. `docs/tpu_plan.md` has the plan's figures.
"""

import ml_collections

from recap_jax.captioning.defaults import base_config
from recap_jax.cli import parse_config_arg

_ARGS = dict(input="gs://YOUR_BUCKET/datacomp-1b/shards", output="gs://YOUR_BUCKET/recap-datacomp-1b",
             checkpoint="gs://YOUR_BUCKET/checkpoints/llava-llama-3-8b-hqedit")


def get_config(arg: str | None = None):
    args = parse_config_arg(arg, _ARGS, "configs/v5e_256.py")
    c = base_config()
    c.model.checkpoint = args["checkpoint"]
    c.model.dtype = "bfloat16"
    c.model.quantize = "w8a8"
    c.input.format = "webdataset"
    c.input.paths = args["input"].rstrip("/") + "/*.tar"
    c.input.num_workers = 48  # v5e hosts have 224 vCPUs for 4 chips
    c.input.prefetch = 512
    c.output.dir = args["output"]
    c.decode.max_new_tokens = 128
    c.decode.batch_size = 128  # 32 captions in flight per chip
    c.decode.prefill_batch = 16  # 4 prompts of ~616 tokens per chip per prefill
    c.decode.steps_per_sync = 16
    c.mesh = ml_collections.ConfigDict(dict(data=4, fsdp=1, tensor=1))
    c.distributed.mode = "auto"
    c.tpu.topology = "v5e-256"
    c.progress_every_s = 60.0
    return c
