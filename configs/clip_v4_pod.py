r"""Recap-CLIP on a TPU v4 pod: ViT-L/16 image tower + larger (H: 1024 wide, 24 deep) text tower.

The paper's setting: p = 0.8, the probability of the ORIGINAL alt-text (so 20% recaptions), a
longer text context for recaptions (128 tokens) than for alt-text (77 tokens). The paper's
CLIPA two-stage recipe with Table 2's model sizes is configs/recap_clip_*.py. Paths go in the
config argument:

    # on every host of the pod (e.g. gcloud compute tpus tpu-vm ssh ... --worker=all --command=...):
    python -m recap_jax.train_clip \
      --config "configs/clip_v4_pod.py:workdir=gs://BUCKET/runs/recap_clip_l16,folders=gs://BUCKET/recap/shard_a,gs://BUCKET/recap/shard_b,tokenizer=/home/USER/clip_tokenizer,eval=gs://BUCKET/eval/coco_karpathy"

Argument syntax (recap_jax.cli.parse_config_arg, the same for every config file): `key=value`
pairs separated by ','; a value may be a comma-separated list (folders). jax.distributed starts
by itself on a multi-host TPU slice (`distributed.mode=auto`). The
tokenizer must be a local folder on every host (copy the CLIP tokenizer files there); gs://
paths need `pip install gcsfs` (etils epath) on the TPU VMs. Any field can still be overridden
with --config.a.b=value.
"""

import ml_collections

from recap_jax.cli import parse_config_arg
from recap_jax.clip.defaults import base_config

_ARGS = dict(workdir="", folders="", tokenizer="", eval="")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    args = parse_config_arg(arg, _ARGS, "configs/clip_v4_pod.py")
    config = base_config(args["folders"])
    config.workdir = args["workdir"]

    # v4-256 = 128 chips on 32 hosts. Parameters/optimizer state are sharded over 4 chips (one
    # host, ICI-local) with `fsdp`; the rest is data parallel.
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=4, tensor=1))

    m = config.model
    m.image = "L/16"  # ViT-L/16 image tower
    m.text = "H"  # larger text tower (1024 wide, 16 heads, 24 blocks)
    m.image_size = 224
    m.text_context = 128  # room for the 128-token recaptions
    m.embed_dim = 768
    m.activation = "gelu"
    m.dtype = "bfloat16"  # bf16 compute, fp32 params and optimizer state
    m.remat = True  # activation memory of 256 examples/chip would not fit otherwise

    d = config.data
    d.tokenizer = args["tokenizer"]
    d.org_caption_prob = 0.8  # the paper's p: 80% original alt-text, 20% recaption
    d.re_caption_max_tokens = 128  # long recaptions
    d.org_caption_max_tokens = 77  # alt-text: CLIP's usual context
    d.crop_scale = (0.9, 1.0)  # CLIP-style light augmentation
    # Host input: 1024 examples per host per step. Each grain thread decodes a whole batch; 8
    # worker processes x 8 threads keep ~64 batches (uint8, ~154 MB each) in flight. A starting
    # point to tune with the steps/s of the progress lines (v4 hosts: 240 vCPUs, ~400 GB RAM).
    d.num_threads = 8
    d.prefetch = 8
    d.num_workers = 8

    t = config.train
    t.global_batch_size = 32768  # 256 per chip
    t.num_steps = 40_000  # ~1.3B samples seen (one pass of Recap-DataComp-1B)
    t.accum_steps = 1
    t.loss = "softmax"
    t.learning_rate = 1e-3
    t.warmup_steps = 2_000
    t.end_lr_ratio = 0.0
    t.b2 = 0.95
    t.weight_decay = 0.2
    t.grad_clip_norm = 1.0
    t.log_every = 50
    t.checkpoint_every = 1_000
    t.keep_checkpoints = 3

    config.train.eval_every = 2_000
    config.eval.batch_size = 1024
    config.eval.datasets.heldout.folder = args["eval"]
    config.eval.datasets.heldout.split = "test"
    config.eval.datasets.heldout.caption_fields = "captions/text"  # COCO Karpathy style (5 per image)
    return config
