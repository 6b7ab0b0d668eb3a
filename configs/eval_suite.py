r"""The paper's evaluation suite (python -m recap_jax.eval_suite); every dataset is optional.

    python -m recap_jax.eval_suite --config configs/eval_suite.py \
        --config.model.checkpoint=/runs/recap_clip_b16_s2 --config.output_dir=/tmp/suite \
        --config.coco.annotations=/data/karpathy/dataset_coco.json --config.coco.images=/data/coco \
        --config.flickr.annotations=/data/karpathy/dataset_flickr30k.json \
        --config.flickr.images=/data/flickr30k/flickr30k-images \
        --config.imagenet.folder=/data/imagenet --config.urban1k.folder=/data/Urban1k \
        --config.vg_attribute.folder=/data/aro
"""

import ml_collections

from recap_jax.parallel.distributed import distributed_config


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict()
    config.model.checkpoint = ""  # a train_clip workdir (its config.json + latest checkpoint)
    config.model.hf_dir = ""  # or a HF CLIPModel folder (config.json + *.safetensors)
    config.model.dtype = "float32"  # compute dtype (bfloat16 on TPU)
    config.tokenizer = ""  # HF tokenizer folder; default: the run's data.tokenizer, else model.hf_dir
    config.text_length = 0  # tokens per caption incl. BOS/EOS; 0 = the training text length / HF context
    config.batch_size = 256  # images or captions per encoder call (divisible by the batch devices)
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    config.distributed = distributed_config()  # multi-host start-up (recap_jax.parallel.distributed)
    config.output_dir = ""  # eval_suite.json + eval_suite.md go here; empty = print only
    config.name = ""  # row label in the table; default: the model path

    # ImageNet-1K validation: a folder with val/<wnid>/*.JPEG (1000 synset folders), or a TFDS
    # imagenet2012 folder in ArrayRecord format.
    config.imagenet = ml_collections.ConfigDict(dict(
        folder="", split="validation",  # split: TFDS folders only
        templates="openai",  # openai (CLIP's 80 templates) or simple ("a photo of a {}.")
        max_images=0))  # 0 = all
    # Karpathy splits: the JSON and the folder its paths are relative to.
    config.coco = ml_collections.ConfigDict(dict(
        annotations="",  # dataset_coco.json
        images="",  # folder holding val2014/ (the JSON's filepath/filename)
        split="test"))  # 5,000 images
    config.flickr = ml_collections.ConfigDict(dict(
        annotations="",  # dataset_flickr30k.json
        images="",  # the flickr30k-images folder
        split="test"))  # 1,000 images
    config.urban1k = ml_collections.ConfigDict(dict(folder=""))  # Urban1k/ with image/ and caption/
    config.vg_attribute = ml_collections.ConfigDict(dict(
        folder="",  # ARO's folder: visual_genome_attribution.json + images/
        min_pair_count=25))  # ARO's per-pair threshold for the macro accuracy
    return config
