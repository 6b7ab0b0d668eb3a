"""Recaption DataComp-1B on a TPU v4-256 slice (32 hosts x 4 chips) with the paper's captioner.

    python -m recap_jax.caption --config configs/v4_256.py:input=gs://BUCKET/datacomp/shards,output=gs://BUCKET/recap-datacomp,checkpoint=gs://BUCKET/ckpt/llava-llama-3-8b-hqedit

Run it on every worker (tpu/launch.sh does). The checkpoint is the paper's released
`tennant/llava-llama-3-8b-hqedit`, converted with `python -m recap_jax.convert --layout original`.
Each host holds full bf16 copies of the 8B weights, one per chip (16 GB of a v4 chip's 32 GB):
four data-parallel replicas per host, no tensor parallelism, no cross-host traffic while decoding.
The rest of each chip's memory holds the KV cache: the prompt's ~616 positions + 128 new tokens,
rounded up to 768 (a TPU tile), x 128 KiB = 96 MiB per caption.
"""

import ml_collections

from recap_jax.captioning.defaults import base_config
from recap_jax.cli import parse_config_arg

# Config arguments (after the colon): where the data and the converted checkpoint live.
_ARGS = dict(input="gs://YOUR_BUCKET/datacomp-1b/shards", output="gs://YOUR_BUCKET/recap-datacomp-1b",
             checkpoint="gs://YOUR_BUCKET/checkpoints/llava-llama-3-8b-hqedit")


def get_config(arg: str | None = None):
    args = parse_config_arg(arg, _ARGS, "configs/v4_256.py")
    c = base_config()
    c.model.checkpoint = args["checkpoint"]
    c.model.dtype = "bfloat16"
    c.model.scan_layers = False  # unrolled layers: the plan reads every layer's cost from the compiled programs
    c.input.format = "webdataset"  # img2dataset shards: {00000..}.tar with KEY.jpg/KEY.txt/KEY.json
    c.input.paths = args["input"].rstrip("/") + "/*.tar"
    c.input.num_workers = 48  # v4 hosts have 240 vCPUs; JPEG decode must keep up with 4 chips
    c.input.prefetch = 1024
    c.output.dir = args["output"]
    c.decode.max_new_tokens = 128
    c.decode.batch_size = 384  # 96 captions in flight per chip
    c.decode.prefill_batch = 32  # 8 prompts of ~616 tokens per chip per prefill
    c.decode.steps_per_sync = 16
    c.mesh = ml_collections.ConfigDict(dict(data=4, fsdp=1, tensor=1))
    c.distributed.mode = "auto"
    # `python -m recap_jax.plan` compiles this job for the slice (and the model, when the checkpoint
    # is not readable where the plan runs).
    c.tpu.topology = "v4-256"
    c.progress_every_s = 60.0
    return c
