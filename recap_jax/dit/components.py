"""What training and sampling build alike from a Recap-DiT config: the DiT, its frozen text
encoder, the noise schedule and the latents' description, and the text params on the mesh."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from recap_jax.clip.model import TextTower
from recap_jax.dit import data as data_lib
from recap_jax.dit.model import DiT, config_from_dict
from recap_jax.dit.schedule import Schedule, schedule_from_config
from recap_jax.dit.text_encoder import TextEncoder, load_text_encoder
from recap_jax.parallel.mesh import params_shardings


def build(config: ml_collections.ConfigDict, mesh) -> tuple[DiT, TextEncoder, Schedule, dict[str, Any]]:
    """(model, frozen text encoder, schedule, latents.json) of a config: what training and sampling share."""
    info = data_lib.read_latents_info(config.data.dir)
    text = load_text_encoder(config.text.encoder, max_tokens=config.text.max_tokens,
                             tokenizer=config.text.tokenizer, dtype=config.text.dtype, mesh=mesh)
    model = DiT(config_from_dict(config.model, info["latent_shape"], text.width, text.embed_dim))
    return model, text, schedule_from_config(config.diffusion), info


def text_params_on(mesh, text: TextEncoder) -> Any:
    """The frozen text params placed on the mesh by their logical axes."""
    tokens = jnp.zeros((1, text.max_tokens), jnp.int32)
    boxed = jax.eval_shape(lambda: TextTower(text.cfg).init(jax.random.key(0), tokens)["params"])
    return jax.device_put(text.params, params_shardings(mesh, boxed))
