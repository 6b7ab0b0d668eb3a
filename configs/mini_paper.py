r"""The paper in miniature on 2 CPU cores (recap_jax.reproduce; docs/mini_paper.md).

    python -m recap_jax.reproduce --config configs/mini_paper.py [--quick]

Sizes: the default run is the one reported in docs/mini_paper.md; `--quick` applies the
`quick` fields below (`quick.clip.num_steps` replaces `clip.num_steps`; change them with
`--config.quick.clip.num_steps=30`) and writes to <workdir>_quick.
"""

import os

import ml_collections

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SHIPPED_CAPTIONER = os.path.join(_REPO, "recap_jax", "assets", "mini_captioner")


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.workdir = os.path.join(_REPO, "out", "mini_paper")  # every stage writes under it
    c.seed = 0  # world, captioner and every CLIP row share it

    c.world = ml_collections.ConfigDict()
    c.world.num_web = 4000  # the noisy "web" set that gets recaptioned and trains the CLIPs
    # The high-quality description set the captioner is fine-tuned on: large, so that 600 x 32
    # samples see each scene ~2 times (with 1,024 scenes the captioner memorised them).
    c.world.num_hq = 8000
    c.world.num_eval = 300  # held-out scenes (new colour x shape x background of the main object)
    c.world.image_size = 56
    c.world.per_shard = 500  # samples per webdataset tar
    # Web alt-text noise (recap_jax.clip.mini_world.AltTextRates)
    c.world.unrelated = 0.10  # unrelated text
    c.world.wrong_colour = 0.20  # wrong colour of the mentioned object
    c.world.no_colour = 0.15  # colour left out
    c.world.other_object = 0.30  # a small object mentioned instead of the main one

    c.captioner = ml_collections.ConfigDict()  # a tiny LLaVA-LLaMA-3, fine-tuned whole
    # The captioner to fine-tune: the shipped one (recap_jax/assets/mini_captioner, this stage run
    # from a random start for 4,000 steps at lr 3e-3, docs/mini_paper.md), so that the default size
    # fits 30 minutes; "" starts from a random captioner (then train ~4,000 steps at lr 3e-3).
    c.captioner.init = _SHIPPED_CAPTIONER
    c.captioner.image_size = 56
    c.captioner.patch_size = 14  # 56 / 14 = 4 x 4 image tokens
    c.captioner.feature_layer = -2  # LLaVA's choice: the vision tower's second-to-last layer
    c.captioner.vision_layers = 3
    c.captioner.vision_hidden = 64
    c.captioner.text_layers = 2
    c.captioner.hidden = 96
    c.captioner.heads = 6
    c.captioner.kv_heads = 2
    # From a random start 600 steps name the shape in ~50% of held-out scenes, 4,000 in ~89% (docs).
    c.captioner.num_steps = 200
    c.captioner.batch_size = 32
    c.captioner.learning_rate = 3e-4
    c.captioner.prompt = "describe this image"  # the instruction, in fine-tuning and in the caption job
    c.captioner.max_length = 48  # 16 image tokens + chat prompt (13) + description (<= 17 words) + end
    c.captioner.max_new_tokens = 20
    c.captioner.prompt_bucket = 32  # padded prompt length in the caption job
    c.captioner.decode_batch = 32

    c.clip = ml_collections.ConfigDict()  # one tiny CLIP per row, same seed and budget
    c.clip.ps = (1.0, 0.8, 0.5, 0.2, 0.0)  # p = probability of the ORIGINAL alt-text
    c.clip.concat = True  # also the "concat" row (both captions joined)
    c.clip.num_steps = 600
    c.clip.batch_size = 64
    c.clip.learning_rate = 1e-3
    c.clip.image_size = 32
    c.clip.text_context = 32
    c.clip.embed_dim = 64

    # The Recap-DiT half (Table 7; recap_jax/mini_paper/dit_stage.py): one DiT per p, pixel space.
    c.dit = ml_collections.ConfigDict()
    c.dit.ps = (1.0, 0.5, 0.1, 0.0)  # p = probability of the ORIGINAL alt-text (Table 7's rows)
    c.dit.image_size = 32  # pixels (no autoencoder): the world's 56 px scenes centre-cropped as DiT does
    # The frozen text tower: the concat CLIP row's (trained on alt-text and recaptions alike, so it
    # favours neither end of the sweep); its CLIP also gives the CLIP-score analogue.
    c.dit.text_row = "concat"
    c.dit.text_max_tokens = 24  # descriptions are <= 17 words
    c.dit.model_size = "tiny"  # recap_jax/dit/model.py SIZES: width 64, 2 blocks, 4 heads
    c.dit.patch_size = 4  # 8 x 8 tokens
    c.dit.learn_sigma = True  # DiT's learned variance
    c.dit.num_steps = 2000
    c.dit.batch_size = 32
    # The paper: AdamW, constant lr 1e-4 at batch 2048, no warm-up or decay; a tiny model and a few
    # thousand steps need a larger rate (constant, no warm-up, no decay, as the recipe).
    c.dit.learning_rate = 1e-3
    c.dit.ema_decay = 0.99  # the paper's 0.9999 averages over ~10k steps, more than a row trains
    c.dit.cond_drop_prob = 0.1  # the caption dropped to the empty text (classifier-free guidance)
    c.dit.sampler = "ddpm"  # the paper: 250 DDPM steps; 100 fit the CPU
    c.dit.sample_steps = 100
    c.dit.guidance_scale = 4.0  # the paper: 10
    c.dit.grid_images = 8  # samples per row in dit_grid.png

    c.judge = ml_collections.ConfigDict()  # recap_jax/mini_paper/judge.py, trained once per workdir and settings
    c.judge.num_scenes = 6000
    c.judge.num_steps = 1500  # enough for the small objects' colour (docs/mini_paper.md)
    c.judge.batch_size = 64
    c.judge.learning_rate = 2e-3

    # --quick (tests, CI): every field under `quick.SECTION` replaces its namesake in SECTION.
    # Smaller sets, 50 captioner steps, CLIPs of 60 steps (too few to learn: the quick size checks
    # the loop, not the findings) and short DiT rows.
    c.quick = ml_collections.ConfigDict(dict(
        world=dict(num_web=512, num_hq=1024, num_eval=100, per_shard=256),
        captioner=dict(num_steps=50), clip=dict(num_steps=60, batch_size=32),
        dit=dict(num_steps=300)))
    return c
