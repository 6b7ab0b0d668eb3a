"""Recaption DataComp-1B on a TPU v5p-128 slice (16 hosts x 4 chips of 95 GiB) with the paper's captioner.

    python -m recap_jax.caption --config configs/v5p_128.py:input=gs://BUCKET/datacomp/shards,output=gs://BUCKET/recap-datacomp,checkpoint=gs://BUCKET/ckpt/llava-llama-3-8b-hqedit
    python -m recap_jax.plan --config configs/v5p_128.py     # the fit and the bound, compiled for the slice

A v5p chip holds the bf16 8B (15.5 GiB) five times over, so no tensor split: one replica per chip,
4 per host, no cross-chip traffic while decoding. The HBM left holds the KV cache of 256 captions
per chip (~96 MiB each): decode's weight read is shared by 256 captions, so the prefill
(compute-bound) is most of the bound. `model.quantize = "w8a8"` (int8 weights; int8 activations
in the prefill's decoder matmuls, at v5p's 918 TOP/s, twice its bf16 rate): 15.2 ms/image
against 24.4 in bf16 (`python -m recap_jax.plan --compare`, docs/tpu_plan.md "Every
generation"); set `--config.model.quantize=` for bf16. Scanned layers (the default): the plan
compiles in minutes. Needs `pip install -e '.[quant]'` on the workers.
"""

import ml_collections

from recap_jax.captioning.defaults import base_config
from recap_jax.cli import parse_config_arg

_ARGS = dict(input="gs://YOUR_BUCKET/datacomp-1b/shards", output="gs://YOUR_BUCKET/recap-datacomp-1b",
             checkpoint="gs://YOUR_BUCKET/checkpoints/llava-llama-3-8b-hqedit")


def get_config(arg: str | None = None):
    args = parse_config_arg(arg, _ARGS, "configs/v5p_128.py")
    c = base_config()
    c.model.checkpoint = args["checkpoint"]
    c.model.dtype = "bfloat16"
    c.model.quantize = "w8a8"
    c.input.format = "webdataset"
    c.input.paths = args["input"].rstrip("/") + "/*.tar"
    c.input.num_workers = 96  # JPEG decode for 4 chips at ~2x a v4 chip's rate
    c.input.prefetch = 2048
    c.output.dir = args["output"]
    c.decode.max_new_tokens = 128
    c.decode.batch_size = 1024  # 256 captions in flight per chip
    c.decode.prefill_batch = 32  # 8 prompts of ~616 tokens per chip per prefill
    c.decode.steps_per_sync = 16
    c.mesh = ml_collections.ConfigDict(dict(data=4, fsdp=1, tensor=1))
    c.distributed.mode = "auto"
    c.tpu = ml_collections.ConfigDict(dict(topology="v5p-128", model="llava-llama-3-8b"))
    c.progress_every_s = 60.0
    return c
