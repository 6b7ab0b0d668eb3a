"""The fine-tuning job's config fields, their defaults and their meaning.

Config files in `configs/` (finetune_cpu.py, llava_stage1_v4.py, llava_stage2_v4.py,
caption_tune_v4.py) start from `base_config()`; any field can be overridden on the command line:
`--config.train.learning_rate=2e-5`.
"""

import ml_collections

from recap_jax.parallel.distributed import distributed_config
from recap_jax.preprocess.text import DEFAULT_PROMPT
from recap_jax.training.loop_config import train_fields


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.workdir = ""  # checkpoints, metrics.jsonl, failures-*.jsonl, export/ and export_hf/

    c.model = ml_collections.ConfigDict()
    c.model.checkpoint = ""  # the converted checkpoint (`python -m recap_jax.convert`) to start from
    # Or LLaVA-1.5 stage 1 from separate parts (instead of model.checkpoint): a HF CLIP vision tower
    # folder (CLIPVisionModel/CLIPModel save_pretrained) + a HF LLaMA folder with its tokenizer; the
    # projector is new, initialised as LLaVA's (nn.Linear default, seeded by model.projector_seed),
    # `<image>` is added to the tokenizer and model.template names the conversation template
    # ("" = llama3_llava). See docs/finetune.md.
    c.model.vision_dir = ""
    c.model.llm_dir = ""
    c.model.projector_seed = 0
    c.model.tokenizer = ""  # tokenizer folder overriding the checkpoint's own
    c.model.template = ""  # a named prompt template (e.g. "llama3_llava"); "" = the checkpoint's
    c.model.dtype = "float32"  # storage of the frozen params and of the export
    c.model.build_tiny_if_missing = False  # build the caption demo's tiny random model there (demo)
    c.model.compute_dtype = "float32"  # activations/matmuls: "bfloat16" on TPU (trainables stay f32)

    c.data = ml_collections.ConfigDict()
    c.data.format = "llava_json"  # "llava_json" | "webdataset" (img2dataset tars) | "tfds"
    c.data.path = ""  # the LLaVA JSON/JSONL file, or the shards / TFDS folder (globs, comma-separated)
    c.data.image_folder = ""  # llava_json: the folder the "image" paths are relative to ("" = the JSON's)
    c.data.prompt = DEFAULT_PROMPT  # webdataset/tfds: the instruction each caption answers
    c.data.caption_field = ""  # tfds: the caption field ("" = org_caption, caption, text or txt)
    c.data.max_length = 2048  # longer conversations (image tokens included) are skipped as failures
    c.data.length_buckets = (256, 512, 768, 1024, 1536)  # batches pad to the smallest that fits
    # Length-grouped batches: each run of this many batches' records is sorted by length and cut
    # into batches (taken in a seeded random order), so a batch pads less. 1 = off (reader order).
    c.data.length_group_batches = 1
    c.data.shuffle = True  # seeded per-epoch shuffle (records for llava_json, shards otherwise)
    c.data.seed = 0
    c.data.num_workers = 8  # image decoding threads
    c.data.max_pixels = 64_000_000  # larger images are failures (decompression bombs)

    # The loop's fields (training/loop_config.py: schedule, AdamW, logging, checkpoints, lease),
    # with fine-tuning's defaults below (LLaVA-1.5: 3% warm-up then cosine to 0, no decay).
    c.train = train_fields(ml_collections.ConfigDict())
    c.train.trainable = "projector+llm"  # "projector" (LLaVA stage 1) | "projector+llm" | "all"
    c.train.num_steps = -1  # -1: one epoch of a llava_json file (webdataset/tfds need a number)
    c.train.global_batch_size = 128  # examples per optimizer step, all hosts and accumulation
    c.train.learning_rate = 2e-5  # peak, after warm-up
    # Decoder-layer activation checkpointing: "none" keeps every layer's activations for the
    # backward pass; "full" keeps only each layer's input and recomputes the layer (about a third
    # more compute, activations of one layer at a time); "dots_saveable" also keeps the matmul
    # outputs (between the two). The caption job never rematerialises.
    c.train.remat = "none"
    # Positions per row whose [rows, chunk, vocab] float32 logits exist at once in the loss (and
    # its gradient); 0 = the whole sequence. Same loss either way.
    c.train.loss_chunk = 512
    c.train.warmup_ratio = 0.03  # linear warm-up over this share of the steps, then cosine to 0
    c.train.checkpoint_every = 500
    c.train.async_checkpointing = False  # a saved step is on disk before the next step starts
    c.train.log_every = 10

    c.export = ml_collections.ConfigDict()
    c.export.converted = True  # <workdir>/export: what `recap_jax.caption` loads
    c.export.hf = True  # <workdir>/export_hf: a llava-hf LlavaForConditionalGeneration folder

    c.mesh = ml_collections.ConfigDict()  # -1 = all remaining devices
    c.mesh.data = 1
    c.mesh.fsdp = -1  # parameters and optimizer state sharded (the 8B LLM does not fit replicated)
    c.mesh.tensor = 1

    c.distributed = distributed_config()  # multi-host start-up, as every command
    return c


def tpu_pod_config() -> ml_collections.ConfigDict:
    """`base_config` with what every LLaVA-1.5 step on a TPU slice shares: bf16 weights and
    compute, 2048-token conversations, 3% warm-up then cosine, no weight decay, fsdp over every chip."""
    c = base_config()
    c.model.dtype = "bfloat16"
    c.model.compute_dtype = "bfloat16"
    c.data.max_length = 2048
    c.data.num_workers = 32
    c.data.length_group_batches = 16  # LLaVA-1.5 groups by length too (group_by_modality_length)
    c.train.warmup_ratio = 0.03
    c.train.weight_decay = 0.0
    c.train.checkpoint_every = 200
    c.train.remat = "full"  # without it the 8B step does not fit a v4 chip (docs/finetune.md)
    c.train.loss_chunk = 512
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.distributed.mode = "auto"
    return c
