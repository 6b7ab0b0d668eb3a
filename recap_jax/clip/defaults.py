"""Defaults of the CLIP trainer's config (`python -m recap_jax.train_clip`), one documented field each.

configs/clip_tiny.py and configs/clip_v4_pod.py start from `base_config()` and change what differs.
"""

import math

import ml_collections

from recap_jax.parallel.distributed import distributed_config


def base_config(folders: str = "") -> ml_collections.ConfigDict:
    """Every train_clip field with its default (a tiny CPU-sized model); configs/clip_*.py change some."""
    config = ml_collections.ConfigDict()
    config.workdir = ""  # checkpoints/, metrics.jsonl and config.json go here (local or gs://); required
    config.seed = 0  # seeds parameter init, data order, caption choice and crops

    # Device mesh (recap_jax.parallel.mesh): sizes of the data / fsdp / tensor axes; -1 = all the rest.
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    config.distributed = distributed_config()  # multi-host start-up (recap_jax.parallel.distributed)
    # The TPU slice `python -m recap_jax.plan --clip_config` compiles the train step for (--topology overrides).
    config.tpu = ml_collections.ConfigDict(dict(topology="v4-8"))

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

    config.train = ml_collections.ConfigDict()
    config.train.global_batch_size = 64  # examples per step over all hosts and devices
    config.train.num_steps = 2000  # total optimizer steps (the cosine schedule spans them)
    # Or in samples (CLIPA's recipe; kept when the batch changes): >0 sets num_steps / warmup_steps
    # for the global batch, and base_learning_rate sets learning_rate = base x batch / lr_reference_batch.
    config.train.num_samples = 0
    config.train.warmup_samples = 0
    config.train.base_learning_rate = 0.0
    config.train.lr_reference_batch = 256
    config.train.accum_steps = 1  # micro-batches per step (exact full-batch contrastive gradient)
    config.train.loss = "softmax"  # softmax (CLIP) or sigmoid (SigLIP; needs model.use_logit_bias)
    config.train.learning_rate = 1e-3  # peak AdamW learning rate
    config.train.warmup_steps = 50  # linear warmup from 0
    config.train.end_lr_ratio = 0.0  # final learning rate / peak (cosine decay)
    config.train.b1 = 0.9  # AdamW beta1
    config.train.b2 = 0.98  # AdamW beta2 (CLIP uses 0.98 for stability)
    config.train.eps = 1e-6  # AdamW epsilon
    config.train.weight_decay = 0.1  # decoupled weight decay on matrices only
    config.train.grad_clip_norm = 1.0  # global-norm gradient clipping; 0 = off
    config.train.logit_scale_max = 100.0  # clamp of exp(logit_scale), as in CLIP
    config.train.log_every = 50  # steps between progress lines / metrics.jsonl rows
    config.train.checkpoint_every = 200  # steps between Orbax checkpoints (also saved at the end)
    config.train.keep_checkpoints = 2  # how many recent checkpoints to keep
    config.train.stop_after_steps = 0  # >0: leave after this many steps of THIS run (time-sliced jobs)

    config.init = _init_fields()
    config.eval = _eval_fields()
    return config


def _init_fields() -> ml_collections.ConfigDict:
    """`init`: where a later stage starts from."""
    # Start from the checkpoint of an earlier stage (CLIPA stage 2): its latest params, the image
    # position embeddings resampled to this image size. Ignored once this workdir has a checkpoint.
    init = ml_collections.ConfigDict()
    init.checkpoint = ""  # the earlier stage's workdir; empty = a fresh initialisation
    init.optimizer = "reset"  # reset, or keep (Adam moments carried over; the schedule restarts)
    init.pos_interpolation = "bilinear"  # bilinear or bicubic
    return init


def _eval_fields() -> ml_collections.ConfigDict:
    """`eval`: the retrieval sets evaluated during and after training."""
    ev = ml_collections.ConfigDict()
    ev.every_steps = 0  # 0 = only at the end of training (if any dataset has a folder)
    ev.batch_size = 96  # images/texts per encoder call (divisible by the batch devices)
    # Named retrieval datasets; entries with an empty folder are skipped.
    ev.datasets = ml_collections.ConfigDict()
    ev.datasets.heldout = ml_collections.ConfigDict(dict(
        folder="",  # a TFDS/ArrayRecord folder, one record per image
        split="train",  # its split
        caption_fields="re_caption,org_caption",  # comma-separated fields (a text or a list of texts each)
        image_field="image",  # field with the encoded image bytes
        max_images=0,  # 0 = all
    ))
    return ev
