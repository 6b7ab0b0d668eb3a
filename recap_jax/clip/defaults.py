"""Defaults of the CLIP trainer's config (`python -m recap_jax.train_clip`), one documented field each.

configs/clip_tiny.py and configs/clip_v4_pod.py start from `base_config()` and change what differs.
"""

import math

import ml_collections

from recap_jax.parallel.distributed import distributed_config
from recap_jax.training.loop_config import train_fields


def base_config(folders: str = "") -> ml_collections.ConfigDict:
    """Every train_clip field with its default (a tiny CPU-sized model); configs/clip_*.py change some."""
    config = ml_collections.ConfigDict()
    config.workdir = ""  # checkpoints/, metrics.jsonl and config.json go here (local or gs://); required
    config.seed = 0  # seeds parameter init, data order, caption choice and crops

    # Device mesh (recap_jax.parallel.mesh): sizes of the data / fsdp / tensor axes; -1 = all the rest.
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    config.distributed = distributed_config()  # multi-host start-up (recap_jax.parallel.distributed)

    config.model = ml_collections.ConfigDict()
    config.model.hf_dir = ""  # a HF CLIPModel folder (safetensors) to start from; overrides the sizes below
    config.model.image = "tiny/8"  # image tower: tiny/8, S/16, B/32, B/16, L/14, L/16, H/14
    config.model.text = "tiny"  # text tower: tiny, B, L, H
    config.model.image_size = 32  # input resolution (pixels, square)
    config.model.text_context = 32  # number of text positions (>= the longer caption length below)
    config.model.embed_dim = 64  # shared embedding size (projection output)
    config.model.vocab_size = 0  # 0 = the tokenizer's size; larger values leave room for new tokens
    config.model.activation = "quick_gelu"  # quick_gelu (OpenAI CLIP), gelu, gelu_tanh
    config.model.use_logit_bias = False  # SigLIP's learned logit bias (needed by train.loss=sigmoid)
    config.model.init_logit_scale = math.log(1 / 0.07)  # initial log temperature inverse; SigLIP: log(10)
    config.model.init_logit_bias = -10.0  # initial logit bias (SigLIP), used if use_logit_bias
    config.model.dtype = "float32"  # compute dtype: float32, or bfloat16 on TPU (params stay float32)
    config.model.remat = False  # recompute activations in the backward pass to save memory
    config.model.vision_overrides = ml_collections.ConfigDict()  # e.g. {"depth": 4} to change one tower field
    config.model.text_overrides = ml_collections.ConfigDict()

    config.data = ml_collections.ConfigDict()
    config.data.folders = folders  # comma-separated captioner output folders (TFDS ArrayRecord)
    config.data.split = "train"  # split to read from each folder
    config.data.format = "tfds"  # tfds: captioner output folders; webdataset: img2dataset tars (folders = tars)
    config.data.captions_map = ""  # webdataset: where each caption is, e.g. org_caption=txt,re_caption=json:re_caption
    config.data.captions_parquet = ""  # webdataset + parquet:COLUMN sources: released Parquet file(s), joined by key
    # Captions-only folders (the caption job's output.store_images=false): the input shards their
    # images are read from, joined by key and checked by sha256. "" = the caption job's input.paths
    # and input.format, as its run_config.json records them.
    config.data.image_paths = ""
    config.data.image_format = ""  # webdataset or folder ("" = as recorded)
    config.data.tokenizer = ""  # a HF tokenizer folder (CLIP tokenizer); required
    # The paper's p: probability of the ORIGINAL alt-text per example (else the recaption).
    # 1.0 = alt-text only (baseline), 0.0 = recaptions only, 0.8 = the paper's choice (80% original).
    config.data.org_caption_prob = 0.8
    config.data.caption_mix = "sample"  # sample (p above) or concat (original + recaption joined, cut to the text length)
    config.data.re_caption_max_tokens = 32  # recaptions are longer: their own token budget (incl. BOS/EOS)
    config.data.org_caption_max_tokens = 16  # token budget of original alt-text captions
    config.data.crop_scale = (0.8, 1.0)  # random-resized-crop area range (fraction of the image)
    config.data.num_threads = 2  # grain threads decoding/augmenting examples on each host
    config.data.prefetch = 4  # batches prepared ahead
    config.data.num_workers = 0  # >0: grain worker processes (big hosts; JPEG decoding is CPU-bound)

    # The loop's fields (recap_jax/training/loop_config.py: schedule, AdamW, logging, checkpoints,
    # evaluation, lease), with CLIP's defaults below.
    config.train = train_fields(ml_collections.ConfigDict())
    t = config.train
    t.global_batch_size = 64
    t.num_steps = 2000
    t.loss = "softmax"  # softmax (CLIP) or sigmoid (SigLIP; needs model.use_logit_bias)
    t.learning_rate = 1e-3
    t.warmup_steps = 50
    t.b2 = 0.98  # CLIP uses 0.98 for stability
    t.eps = 1e-6
    t.weight_decay = 0.1
    t.logit_scale_max = 100.0  # clamp of exp(logit_scale), as in CLIP
    t.log_every = 50
    t.checkpoint_every = 200
    t.eval_every = 0  # 0 = evaluate only at the end of training (if any eval dataset has a folder)

    # Start from the checkpoint of an earlier stage (CLIPA stage 2): its latest params, the image
    # position embeddings resampled to this image size. Ignored once this workdir has a checkpoint.
    config.init = ml_collections.ConfigDict()
    config.init.checkpoint = ""  # the earlier stage's workdir; empty = a fresh initialisation
    config.init.optimizer = "reset"  # reset, or keep (Adam moments carried over; the schedule restarts)
    config.init.pos_interpolation = "bilinear"  # bilinear or bicubic

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 96  # images/texts per encoder call (divisible by the batch devices)
    # Named retrieval datasets; entries with an empty folder are skipped.
    config.eval.datasets = ml_collections.ConfigDict()
    config.eval.datasets.heldout = ml_collections.ConfigDict(dict(
        folder="",  # a TFDS/ArrayRecord folder, one record per image
        split="train",  # its split
        caption_fields="re_caption,org_caption",  # comma-separated fields (a text or a list of texts each)
        image_field="image",  # field with the encoded image bytes
        max_images=0,  # 0 = all
    ))
    return config
