"""Caption on a CPU machine with a local llava-hf checkpoint folder (or a converted checkpoint).

    python -m recap_jax.caption --config configs/cpu_small.py \
        --config.model.hf_dir=/path/to/llava-hf-folder --config.input.paths=/path/to/images \
        --config.output.dir=/tmp/recaptions
"""

from recap_jax.captioning.defaults import base_config


def get_config():
    c = base_config()
    c.model.dtype = "float32"
    c.input.format = "folder"
    c.input.num_workers = 2
    c.decode.max_new_tokens = 64
    c.decode.batch_size = 8
    c.decode.prefill_batch = 2
    c.decode.cache_tile = 16  # no TPU tile to round to: a short cache tail is less to read
    c.progress_every_s = 10.0
    return c
