"""Caption tuning after stage 2 (the paper's HQ-Edit step): image + detailed-caption pairs.

    python -m recap_jax.finetune --config configs/caption_tune_v4.py \
        --config.model.checkpoint=gs://BUCKET/runs/stage2/export \
        --config.data.path='gs://BUCKET/hq-captions/{00000..00099}.tar' --config.workdir=gs://BUCKET/runs/caption

The pairs (img2dataset webdataset shards with KEY.jpg + KEY.txt, or a TFDS/ArrayRecord dataset
with data.format=tfds) become the one-turn conversation the caption job asks: data.prompt is the
paper's recaptioning prompt, so the tuned model is trained on exactly the prompt it is run with.
Stage-2 hyper-parameters (batch 128, learning rate 2e-5, 3% warm-up, cosine). Streams have no
known length: set train.num_steps to pairs / 128 for one epoch.
"""

from recap_jax.preprocess.text import DEFAULT_PROMPT
from recap_jax.training.defaults import tpu_pod_config


def get_config():
    c = tpu_pod_config()
    c.workdir = "gs://YOUR_BUCKET/runs/llava-llama3-caption-tune"
    c.model.checkpoint = "gs://YOUR_BUCKET/runs/llava-llama3-stage2/export"
    c.data.format = "webdataset"
    c.data.path = "gs://YOUR_BUCKET/hq-captions/*.tar"
    c.data.prompt = DEFAULT_PROMPT
    c.train.trainable = "projector+llm"
    c.train.num_steps = 1000  # 128K pairs / 128; set from your data
    c.train.global_batch_size = 128
    c.train.accum_steps = 8  # 16 rows per micro-batch: one per chip on a v4-32
    c.train.learning_rate = 2e-5
    return c
