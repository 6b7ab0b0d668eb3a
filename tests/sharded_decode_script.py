"""Run in a subprocess with 8 simulated CPU devices: greedy tokens for several mesh shapes, and
sampled tokens for one device and for eight."""

import dataclasses
import json
import sys

import jax
import numpy as np

from recap_jax.captioning import model_loading
from recap_jax.decoding.sampler import Request, Sampler
from recap_jax.decoding.settings import DecodeSettings
from recap_jax.decoding.token_choice import sample_seed
from recap_jax.models.llava import LlavaModel
from recap_jax.parallel import mesh as mesh_lib
from recap_jax.preprocess.image import preprocess_image
from tiny_llava import sample_images

SAMPLED_MESHES = [dict(data=1), dict(data=8)]
MESHES = [dict(data=1), dict(data=8), dict(data=4, tensor=2), dict(data=2, fsdp=2, tensor=2),
          dict(fsdp=4, tensor=2)]


def main(hf_dir: str) -> None:
    assert jax.device_count() == 8, jax.devices()
    out = {}
    for axes in MESHES:
        devices = jax.devices()[:1] if axes == dict(data=1) else jax.devices()
        mesh = mesh_lib.make_mesh(axes, devices)
        spec, params = model_loading.load_captioner(hf_dir=hf_dir,
                                             shardings_fn=lambda b: mesh_lib.params_shardings(mesh, b))
        encoder = spec.prompt_encoder()
        prompts = ["describe the image .", "a photo of", "what is in this picture ?"] * 4
        images = sample_images(0) * 3
        requests = [Request(encoder.encode(p), preprocess_image(im, spec.image), i, sample_seed(f"image-{i}"))
                    for i, (p, im) in enumerate(zip(prompts, images))]
        settings = DecodeSettings(max_new_tokens=12, batch_size=16, prefill_batch=8, prompt_buckets=(64,),
                                  steps_per_sync=4, stop_ids=spec.stop_ids)
        sampler = Sampler(LlavaModel(spec.config), params, settings, mesh=mesh)
        tokens = {r.tag: r.tokens.tolist() for r in sampler.generate(requests)}
        if axes in SAMPLED_MESHES:
            sampling = dataclasses.replace(settings, sampling="top_k", top_k=8, temperature=1.5, seed=3)
            sampled = {r.tag: r.tokens.tolist() for r in
                       Sampler(LlavaModel(spec.config), params, sampling, mesh=mesh).generate(requests)}
            out[json.dumps(axes) + " sampled"] = [sampled[i] for i in range(len(requests))]
        sharded_kinds = {str(x.sharding.spec) for x in jax.tree.leaves(params)}
        out[json.dumps(axes)] = {"tokens": [tokens[i] for i in range(len(requests))],
                                 "num_devices": len(mesh.devices.flat), "param_specs": sorted(sharded_kinds)}
    print("RESULT" + json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
