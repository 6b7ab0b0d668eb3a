"""The caption job's config fields, their defaults and their meaning.

Config files in `configs/` start from `base_config()` and change what they need; any field can be
overridden on the command line: `--config.decode.batch_size=64`.
"""

import ml_collections

from recap_jax.preprocess.text import DEFAULT_PROMPT


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    c.model = ml_collections.ConfigDict()
    c.model.hf_dir = ""  # llava-hf checkpoint folder (weights, config, tokenizer, processor), or
    c.model.checkpoint = ""  # a checkpoint written by `python -m recap_jax.convert` (local or gs://)
    c.model.tokenizer = ""  # tokenizer folder overriding the checkpoint's own
    c.model.template = ""  # a named prompt template (e.g. "llama3_llava"); "" = the checkpoint's
    c.model.dtype = "float32"  # weights and compute: "float32" (CPU) or "bfloat16" (TPU)
    # Build a tiny random checkpoint at model.checkpoint if it does not exist (the offline demo).
    c.model.build_tiny_if_missing = False

    c.input = ml_collections.ConfigDict()
    c.input.format = "folder"  # "folder" (image files), "webdataset" (img2dataset tars) or "tfds"
    c.input.paths = ""  # a folder, a glob, or a comma-separated list of globs (local or gs://)
    c.input.files_per_unit = 1000  # folder format: images per work unit (= per output shard)
    c.input.records_per_unit = 1000  # tfds format: records per work unit
    c.input.num_workers = 8  # threads decoding and resizing images while the device computes
    c.input.prefetch = 256  # samples decoded ahead of the device
    c.input.max_pixels = 64_000_000  # larger images are listed as failures (decompression bombs)

    c.output = ml_collections.ConfigDict()
    c.output.dir = ""  # the output TFDS ArrayRecord dataset folder (local or gs://)
    # Delete what an earlier run wrote in output.dir and start anew (a rerun with other settings
    # is refused otherwise). Drop it again for the reruns that resume this run.
    c.output.overwrite = False
    # Exit status 3 when more than this share of this run's samples failed (1.0: only when
    # none was captioned).
    c.output.max_failure_share = 1.0
    c.output.lease_stale_s = 600.0  # a lease without heartbeat for this long may be taken over
    c.output.lease_heartbeat_s = 60.0

    c.prompt = DEFAULT_PROMPT  # the instruction every image is captioned with

    c.decode = ml_collections.ConfigDict()
    c.decode.max_new_tokens = 128  # caption length cap (the paper: 128)
    c.decode.batch_size = 16  # captions in flight per host (decode slots)
    c.decode.prefill_batch = 4  # new prompts prefilled together when slots free up
    c.decode.prompt_buckets = (64, 128, 256, 512, 640, 768, 1024)  # padded prompt lengths (compiles)
    c.decode.steps_per_sync = 8  # decode steps per device call between host checks

    c.mesh = ml_collections.ConfigDict()  # each host's own devices; -1 = all remaining
    c.mesh.data = -1  # replicas, each with its share of the decode slots
    c.mesh.fsdp = 1  # parameter sharding (also splits the batch)
    c.mesh.tensor = 1  # tensor parallelism, for chips that cannot hold the weights

    c.distributed = ml_collections.ConfigDict()
    # "auto": jax.distributed.initialize() when running on a multi-host TPU slice; "off"; or "on"
    # with the explicit settings below (used by the localhost multi-process tests).
    c.distributed.mode = "auto"
    c.distributed.coordinator_address = ""
    c.distributed.num_processes = 1
    c.distributed.process_id = 0

    c.progress_every_s = 30.0  # seconds between progress lines
    c.gcs_timeout_s = 20.0  # start-up probe of each gs:// path: fail after this many seconds
    return c
