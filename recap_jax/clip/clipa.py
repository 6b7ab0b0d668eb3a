"""The paper's Recap-CLIP recipe (Section 5.1): CLIPA's two stages and Table 2's model sizes.

Stage 1 pre-trains at 112 px (2.56B samples, batch 32,768, base lr 8e-6, 51.2M warm-up
samples); stage 2 fine-tunes at 224 px from the stage-1 checkpoint (128M samples, 25.6M warm-up,
batch 16,384, base lr 4e-7); AdamW, cosine decay, text length 128. Base learning rates are per
256 samples (CLIPA's linear scaling, see `schedule.py`). Table 4's text-tower study is the
`text=` argument: small / base / large / huge text towers with any vision tower.

CLIPA's image-token reduction at low resolution is implemented only as the resolution itself
(112 px with /16 patches = 49 image tokens instead of 196); its random / grid / block token
masking and its text-token reduction are not implemented.
"""

from __future__ import annotations

import ml_collections

from recap_jax.cli import parse_config_arg
from recap_jax.clip.defaults import base_config
from recap_jax.errors import ConfigError

# Text towers as (model.text, text_overrides): Table 2's widths and depths.
TEXT_TOWERS: dict[str, tuple[str, dict]] = {
    "small": ("B", dict(width=384, heads=6, mlp_dim=1536)),  # 384 wide, 12 deep
    "base": ("B", {}),  # 512 wide, 12 deep
    "large": ("L", {}),  # 768 wide, 12 deep
    "huge": ("H", {}),  # 1024 wide, 24 deep
}

# Table 2: vision tower, its default text tower, shared embedding size, FSDP shards on a pod.
MODELS: dict[str, tuple[str, str, int, int]] = {
    "S/16": ("S/16", "small", 384, 1),
    "B/16": ("B/16", "base", 512, 1),
    "L/16": ("L/16", "large", 768, 4),
    "H/14": ("H/14", "huge", 1024, 8),
}

STAGES: dict[int, dict] = {
    1: dict(image_size=112, num_samples=2_560_000_000, warmup_samples=51_200_000,
            global_batch_size=32_768, base_learning_rate=8e-6),
    2: dict(image_size=224, num_samples=128_000_000, warmup_samples=25_600_000,
            global_batch_size=16_384, base_learning_rate=4e-7),
}
TEXT_LENGTH = 128
ARGS = dict(stage="1", text="", workdir="", folders="", tokenizer="", init="", eval="")


def recipe_config(model_name: str, arg: str = "", config_file: str = "configs/recap_clip_*.py") -> ml_collections.ConfigDict:
    """The CLIP defaults set to the paper's recipe for `model_name` (a MODELS key); `arg` is the
    config file's argument (recap_jax.cli.parse_config_arg: `stage=2,init=...,folders=a,b`)."""
    args = parse_config_arg(arg, ARGS, config_file)
    if args["stage"] not in ("1", "2"):
        raise ConfigError(f"{config_file}: stage={args['stage']} is not 1 or 2")
    stage = int(args["stage"])
    config = base_config(args["folders"])
    vision, default_text, embed_dim, fsdp = MODELS[model_name]
    text = args["text"] or default_text
    if text not in TEXT_TOWERS:
        raise ConfigError(f"{config_file}: text={text!r} is not one of {sorted(TEXT_TOWERS)}")
    s = STAGES[stage]

    config.workdir = args["workdir"]
    config.seed = stage - 1  # stage 2 reads the data in a fresh order
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=fsdp, tensor=1))

    m = config.model
    m.image = vision
    m.text, overrides = TEXT_TOWERS[text]
    m.text_overrides = ml_collections.ConfigDict(overrides)
    m.image_size = s["image_size"]
    m.text_context = TEXT_LENGTH
    m.embed_dim = embed_dim
    m.activation = "gelu"
    m.dtype = "bfloat16"
    m.remat = vision in ("L/16", "H/14")

    d = config.data
    d.tokenizer = args["tokenizer"]
    d.org_caption_prob = 0.8  # the paper's p (Table 3); 0.6 was best with the large text tower (Table 5)
    d.re_caption_max_tokens = TEXT_LENGTH
    d.org_caption_max_tokens = TEXT_LENGTH
    d.crop_scale = (0.9, 1.0)
    d.num_threads, d.prefetch, d.num_workers = 8, 8, 8

    t = config.train
    t.global_batch_size = s["global_batch_size"]
    t.num_samples = s["num_samples"]  # resolved to num_steps for the batch size (schedule.py)
    t.warmup_samples = s["warmup_samples"]
    t.base_learning_rate = s["base_learning_rate"]  # x global_batch_size / lr_reference_batch
    t.lr_reference_batch = 256
    t.num_steps = 0  # set from num_samples
    t.warmup_steps = 0  # set from warmup_samples
    t.learning_rate = 0.0  # set from base_learning_rate
    t.end_lr_ratio = 0.0
    t.b2 = 0.95  # AdamW betas / decay: CLIPA-style values (the paper names AdamW only)
    t.weight_decay = 0.2
    t.grad_clip_norm = 1.0
    t.log_every = 50
    t.checkpoint_every = 1_000
    t.keep_checkpoints = 3

    config.init.checkpoint = args["init"] if stage == 2 else ""  # the stage-1 workdir
    config.init.optimizer = "reset"  # CLIPA fine-tunes with a fresh optimizer
    if stage == 2 and not config.init.checkpoint:
        raise ConfigError(f"{config_file}: stage=2 needs init=<the stage-1 workdir>")

    config.train.eval_every = 2_000
    config.eval.batch_size = 1024
    config.eval.datasets.heldout.folder = args["eval"]
    config.eval.datasets.heldout.split = "test"
    config.eval.datasets.heldout.caption_fields = "captions/text"
    return config
