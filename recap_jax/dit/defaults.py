"""Defaults of the Recap-DiT config (`train_dit` and `sample_dit` read the same file), one
documented field each. configs/recap_dit_*.py start from `base_config()` and change what differs.
"""

import ml_collections

from recap_jax.parallel.distributed import distributed_config
from recap_jax.training.loop_config import train_fields


def base_config() -> ml_collections.ConfigDict:
    """Every field with its default: the paper's recipe on a tiny model (configs change the size)."""
    config = ml_collections.ConfigDict()
    config.workdir = ""  # checkpoints/, metrics.jsonl, config.json (train_dit); read by sample_dit
    config.seed = 0  # seeds parameter init, data order, caption choice and drop, timesteps and noise

    config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))  # params sharded (fsdp)
    config.distributed = distributed_config()

    config.data = ml_collections.ConfigDict()
    config.data.dir = ""  # an encode_latents output (TFDS ArrayRecord + latents.json)
    # p: probability of the ORIGINAL caption (else the recaption), the same field and code as
    # Recap-CLIP. The paper's DiT-L/2 run uses p = 0; Table 7 sweeps p for DiT-B/4.
    config.data.org_caption_prob = 0.0
    config.data.num_threads = 4  # grain threads preparing batches
    config.data.prefetch = 4  # batches prepared ahead

    config.text = ml_collections.ConfigDict()
    config.text.encoder = ""  # frozen text tower: a train_clip workdir or a HF CLIPModel/CLIPTextModel folder
    config.text.tokenizer = ""  # "" = the encoder's (the workdir's data.tokenizer, or the HF folder)
    config.text.max_tokens = 77  # tokens per caption (not stated in the paper; CLIP's context)
    config.text.dtype = "float32"  # the text tower's compute dtype

    config.model = ml_collections.ConfigDict()
    config.model.size = "tiny"  # tiny, S, B, L, XL (DiT's Table 1)
    config.model.patch_size = 2  # 1, 2, 4 or 8 (DiT-B/4: 4; DiT-L/2: 2)
    config.model.learn_sigma = True  # DiT's learned variance (adds the variational-bound loss term)
    config.model.dtype = "float32"  # compute dtype (bfloat16 on TPU; params stay float32)
    config.model.remat = False  # recompute block activations in the backward pass

    config.diffusion = ml_collections.ConfigDict()
    config.diffusion.num_steps = 1000  # DiT's linear-beta DDPM
    config.diffusion.beta_start = 1e-4
    config.diffusion.beta_end = 2e-2

    config.train = ml_collections.ConfigDict()
    t = train_fields(config.train)
    # The paper: AdamW, constant lr 1e-4, no warm-up, no weight decay, batch 2048 (DiT's recipe).
    t.learning_rate = 1e-4
    t.schedule = "constant"
    t.weight_decay = 0.0
    t.grad_clip_norm = 0.0  # DiT clips nothing
    t.global_batch_size = 8
    t.num_steps = 20
    t.log_every = 10
    t.checkpoint_every = 1000
    t.cond_drop_prob = 0.1  # caption dropped to the empty text (classifier-free guidance)
    t.ema_decay = 0.9999  # DiT's EMA of the weights (sampling uses it)

    config.sample = ml_collections.ConfigDict()
    config.sample.prompts = ""  # a text file, one prompt a line
    config.sample.out = ""  # folder: NNNNN.png per prompt line + a TFDS dataset
    config.sample.guidance_scale = 10.0  # classifier-free guidance (the paper: 10); 1 = none
    config.sample.steps = 250  # sampler steps (the paper: 250 DDPM steps)
    config.sample.sampler = "ddpm"  # ddpm or ddim
    config.sample.spacing = "dit"  # timesteps: dit (DiT's respacing), leading or trailing (diffusers')
    config.sample.eta = 0.0  # DDIM's eta
    config.sample.seed = 0  # with each prompt's key, seeds its image
    config.sample.batch_size = 8  # prompts per generation batch (images do not depend on it)
    config.sample.prompts_per_unit = 64  # prompts per work unit (the resume granularity)
    config.sample.use_ema = True  # sample with the EMA weights (DiT does)
    config.sample.autoencoder_dir = ""  # "" = the one latents.json names (kl-f8 latents only)

    # eval_dit: FID and CLIP score per prompt set (fields in recap_jax/dit/evaluate.py, docs/dit_eval.md)
    from recap_jax.dit.evaluate import eval_defaults
    config.eval = eval_defaults()
    return config


def latents_config() -> ml_collections.ConfigDict:
    """Every `encode_latents` field with its default (configs/dit_latents_cpu.py sets the demo's paths)."""
    c = ml_collections.ConfigDict()
    c.input = ml_collections.ConfigDict(dict(
        # "caption_output" (input.dir) or "released" (img2dataset tars + released Parquet captions)
        format="caption_output",
        dir="",  # a caption job's output
        split="",  # "" = train
        records_per_unit=256,  # records per work unit (= per output shard, the unit of resumption)
        max_pixels=64_000_000,  # larger images are listed as failures (decompression bombs)
        num_workers=2,  # image-decoding threads
        # A captions-only caption output (output.store_images=false) is joined with the images of the
        # caption job's input by key (sha256 checked): "" = the input its run_config.json records.
        image_paths="",
        image_format="",  # "webdataset" or "folder"; "" = as recorded
        # input.format=released: the img2dataset tars (files, folders or globs, comma-separated), where
        # each caption is (data/captions_map.py: txt, json:FIELD or parquet:COLUMN), and the Parquet files
        paths="",
        captions_map="",  # e.g. org_caption=txt,re_caption=json:re_caption
        captions_parquet="",
    ))
    c.autoencoder = ml_collections.ConfigDict(dict(
        kind="kl-f8",  # "kl-f8" (the latent-diffusion autoencoder of `dir`) or "pixels" (no autoencoder)
        dir="",  # a diffusers AutoencoderKL folder (config.json + *.safetensors), e.g. sd-vae-ft-ema
        posterior="sample",  # "sample" (DiT's latent_dist.sample(), noise seeded by seed and key) or "mean"
        # true: build a tiny random KL-f8 autoencoder at `dir` if nothing is there (the offline demo)
        build_tiny_if_missing=False,
    ))
    c.image_size = 64  # DiT's centre crop side (the paper: 256); latents are image_size / 8 for KL-f8
    c.batch_size = 8  # images per autoencoder call
    c.seed = 0  # of the posterior samples
    c.output = ml_collections.ConfigDict(dict(
        dir="",  # where the latents dataset goes
        overwrite=False,  # delete what an earlier run wrote in output.dir and start anew
        lease_stale_s=600.0,  # a lease without heartbeat for this long may be taken over
        lease_heartbeat_s=60.0,
    ))
    c.distributed = distributed_config()
    return c
