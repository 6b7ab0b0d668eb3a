r"""Zero-shot retrieval (and optional classification) evaluation of a CLIP model.

    python -m recap_jax.eval_retrieval --config configs/clip_eval.py \
        --config.model.checkpoint=/tmp/clip_tiny \
        --config.datasets.main.folder=/tmp/shapes/heldout --config.datasets.main.split=train

    # a Hugging Face CLIPModel folder instead (its tokenizer files are used):
    python -m recap_jax.eval_retrieval --config configs/clip_eval.py \
        --config.model.hf_dir=/models/clip-vit-base-patch16 \
        --config.datasets.main.folder=/data/coco_karpathy --config.datasets.main.split=test \
        --config.datasets.main.caption_fields=captions/text
"""

import ml_collections

from recap_jax.parallel.distributed import distributed_config


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict()
    config.model.checkpoint = ""  # a train_clip workdir: its config.json + latest checkpoint are used
    config.model.hf_dir = ""  # or: a HF CLIPModel folder (config.json + *.safetensors)
    config.model.dtype = "float32"  # compute dtype (bfloat16 on TPU)

    config.tokenizer = ""  # HF tokenizer folder; default: the run's data.tokenizer, else model.hf_dir
    config.text_length = 0  # tokens per caption incl. BOS/EOS; 0 = the training text length / HF context
    config.batch_size = 64  # images or captions per encoder call (divisible by the batch devices)
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))  # device mesh axis sizes
    config.distributed = distributed_config()  # multi-host start-up (recap_jax.parallel.distributed)
    config.output = ""  # optional path of a JSON file with all results

    # Named retrieval datasets (TFDS/ArrayRecord folders, one record per image); empty folder = skipped.
    config.datasets = ml_collections.ConfigDict()
    config.datasets.main = ml_collections.ConfigDict(dict(
        folder="",  # dataset folder (e.g. a COCO Karpathy test set you prepared, or a captioner output)
        split="test",  # split to read
        caption_fields="re_caption",  # comma-separated; each field a text or a list of texts (captions/text)
        image_field="image",  # encoded image bytes
        max_images=0,  # 0 = all images
    ))

    # Optional zero-shot classification (an image classification TFDS folder with a ClassLabel field).
    config.zeroshot = ml_collections.ConfigDict(dict(
        folder="",  # empty = skipped
        split="test",
        label_field="label",  # integer label field
        classnames="",  # comma-separated class names; empty = the ClassLabel names of the dataset
        templates="a photo of a {}.",  # prompt templates separated by '|'; '{}' is the class name
        image_field="image",
        max_images=0,
    ))
    return config
