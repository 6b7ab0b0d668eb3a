"""Run in a subprocess with 8 simulated CPU devices: one fine-tuning step of a tiny LLaVA on one
device and on an fsdp=8 mesh; prints both losses and the largest parameter difference."""

import json

import jax
import numpy as np
from flax import linen as nn

from recap_jax.models.config import llava_config_from_hf
from recap_jax.models.llava import LlavaModel
from recap_jax.parallel import mesh as mesh_lib
from recap_jax.captioning.tiny_demo import tiny_llava_hf_config
from recap_jax.training import optimizer, step as step_lib
from recap_jax.training.trainer import device_batch


def batch_for(config, rows: int = 16) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    length = config.num_image_tokens + 16
    tokens = rng.integers(8, 200, size=(rows, length)).astype(np.int32)
    tokens[:, 2:2 + config.num_image_tokens] = config.image_token_id
    weights = (np.arange(length) >= length - 10)[None].repeat(rows, 0).astype(np.float32)
    weights[::3, -4:] = 0
    side = config.vision.image_size
    return {"tokens": tokens, "targets": np.roll(tokens, -1, axis=1), "weights": weights,
            "pixels": rng.normal(size=(rows, side, side, 3)).astype(np.float32)}


def main():
    assert jax.device_count() == 8, jax.devices()
    config = llava_config_from_hf(tiny_llava_hf_config(hidden=48, heads=6, kv_heads=2))
    model = LlavaModel(config)
    arrays = batch_for(config)
    boxed = model.init(jax.random.PRNGKey(0), arrays["tokens"][:1], arrays["pixels"][:1])["params"]
    host_params = jax.device_get(nn.unbox(boxed))
    tx = optimizer.make_optimizer(optimizer.OptimizerSettings(learning_rate=1e-3, num_steps=10))
    results = {}
    for name, mesh in (("one", mesh_lib.make_mesh({"fsdp": 1}, jax.devices()[:1])),
                       ("fsdp8", mesh_lib.make_mesh({"fsdp": 8}))):
        params = jax.tree.map(jax.device_put, host_params, mesh_lib.params_shardings(mesh, boxed))
        trainable, frozen = step_lib.split_params(params, "projector+llm")
        state = jax.jit(lambda p: step_lib.init_state(p, tx))(trainable)
        step = jax.jit(step_lib.make_train_step(model, tx))
        losses = []
        for _ in range(2):
            state, metrics = step(state, frozen, device_batch(arrays, 2, mesh))
            losses.append(float(metrics["loss"]))
        embed = state["trainable"]["language_model"]["embed_tokens"]["embedding"]
        results[name] = {"losses": losses, "params": jax.device_get(state["trainable"]),
                         "embed_shards": len({str(s.index) for s in embed.addressable_shards})}
    diff = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(results["one"]["params"]),
                                                          jax.tree.leaves(results["fsdp8"]["params"])))
    print(json.dumps({"one": results["one"]["losses"], "fsdp8": results["fsdp8"]["losses"],
                      "max_param_diff": diff, "embed_shards": results["fsdp8"]["embed_shards"]}))


if __name__ == "__main__":
    main()
