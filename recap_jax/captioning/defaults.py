"""The caption job's config fields, their defaults and their meaning.

Config files in `configs/` start from `base_config()` and change what they need; any field can be
overridden on the command line: `--config.decode.batch_size=64`.
"""

import ml_collections

from recap_jax.data.inputs.tfds import TfdsFields
from recap_jax.decoding.settings import DecodeSettings
from recap_jax.parallel.distributed import distributed_config
from recap_jax.preprocess.text import DEFAULT_PROMPT


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    c.model = ml_collections.ConfigDict()
    c.model.hf_dir = ""  # llava-hf checkpoint folder (weights, config, tokenizer, processor), or
    c.model.checkpoint = ""  # a checkpoint written by `python -m recap_jax.convert` (local or gs://)
    c.model.tokenizer = ""  # tokenizer folder overriding the checkpoint's own
    c.model.template = ""  # a named prompt template (e.g. "llama3_llava"); "" = the checkpoint's
    c.model.dtype = "float32"  # weights and compute: "float32" (CPU) or "bfloat16" (TPU)
    # "int8": the language model's matmul weights in int8 with per-channel scales (Qwix PTQ,
    # `pip install -e '.[quant]'`), quantised while loading; "w8a8": the same weights, and int8
    # activations in the prefill's decoder matmuls (2x the bf16 rate on v5e/v5p/v6e); "" = none.
    c.model.quantize = ""
    # The language model's layers: True, one scanned layer (fast compiles, the CPU default); False,
    # unrolled (the same params; on TPU the compiled decode step then has no loop over layers,
    # and `python -m recap_jax.plan` reads every layer's cost from it: docs/tpu_plan.md).
    c.model.scan_layers = True
    # Build a tiny random checkpoint at model.checkpoint if it does not exist (the offline demo).
    c.model.build_tiny_if_missing = False

    # What `python -m recap_jax.plan` compiles this job for: the TPU slice, and the built-in model
    # it plans when the checkpoint is not readable where the plan runs (planning/model_spec.py).
    c.tpu = ml_collections.ConfigDict(dict(topology="v4-8", model="llava-llama-3-8b"))

    c.input = ml_collections.ConfigDict()
    c.input.format = "folder"  # "folder" (image files), "webdataset" (img2dataset tars) or "tfds"
    c.input.paths = ""  # a folder, a glob, or a comma-separated list of globs (local or gs://)
    c.input.files_per_unit = 1000  # folder format: images per work unit (= per output shard)
    c.input.records_per_unit = 1000  # tfds format: records per work unit
    # webdataset format: where the alt-text (org_caption) is: "txt" (KEY.txt) or "json:FIELD" (a field
    # of KEY.json, e.g. json:org_caption for released data fetched with re_caption as caption_col);
    # a sample without it is listed as a failure. "" = KEY.txt if present, else KEY.json's "caption".
    c.input.org_caption = ""
    # tfds format: the split of a TFDS dataset folder ("" = "train" if it has one, else its first),
    # and which record fields hold what (comma-separated names, the first present wins).
    c.input.split = ""
    c.input.fields = ml_collections.ConfigDict(TfdsFields().to_config())
    c.input.num_workers = 8  # threads decoding and resizing images while the device computes
    c.input.prefetch = 256  # samples decoded ahead of the device
    c.input.max_pixels = 64_000_000  # larger images are listed as failures (decompression bombs)

    c.output = ml_collections.ConfigDict()
    c.output.dir = ""  # the output TFDS ArrayRecord dataset folder (local or gs://)
    # Delete what an earlier run wrote in output.dir and start anew (a rerun with other settings
    # is refused otherwise). Drop it again for the reruns that resume this run.
    c.output.overwrite = False
    # false: a captions-only output (key, url, sha256, captions, sizes; no image bytes), for runs
    # where copying the images again is not wanted. The CLIP trainer joins it back with this run's
    # input shards by key, checking sha256 (train_clip's data.image_paths; docs/data.md).
    c.output.store_images = True
    # Exit status 3 when more than this share of this run's samples failed (1.0: only when
    # none was captioned).
    c.output.max_failure_share = 1.0
    c.output.lease_stale_s = 600.0  # a lease without heartbeat for this long may be taken over
    c.output.lease_heartbeat_s = 60.0

    # The instruction every image is captioned with; a `{org_caption}` slot in it is replaced by
    # each sample's original caption (caption-conditioned recaptioning).
    c.prompt = DEFAULT_PROMPT

    # Caption length, decode slots, prompt buckets and the token choice (greedy, or seeded top-k /
    # top-p sampling): the fields of `DecodeSettings`, documented in recap_jax/decoding/settings.py.
    c.decode = ml_collections.ConfigDict(DecodeSettings.config_fields())

    c.mesh = ml_collections.ConfigDict()  # each host's own devices; -1 = all remaining
    c.mesh.data = -1  # replicas, each with its share of the decode slots
    c.mesh.fsdp = 1  # parameter sharding (also splits the batch)
    c.mesh.tensor = 1  # tensor parallelism, for chips that cannot hold the weights

    c.distributed = distributed_config()

    c.progress_every_s = 30.0  # seconds between progress lines
    # Persistent XLA compilation cache: the compiled prefill and decode programs are kept here
    # and a later run with the same model, shapes and jax reads them instead of compiling
    # (seconds of start-up). Local and per user: JAX trusts what it reads there. "" = off;
    # JAX_COMPILATION_CACHE_DIR, when set, is used instead.
    c.compile_cache_dir = "~/.cache/recap_jax/xla"
    c.gcs_timeout_s = 20.0  # start-up probe of each gs:// path: fail after this many seconds
    return c
