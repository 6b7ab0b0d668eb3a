"""Our Flax CLIP reproduces Hugging Face `CLIPModel` embeddings after loading its safetensors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import linen as nn

from clip_helpers import model_config
from recap_jax.clip import hf_weights
from recap_jax.clip.model import CLIP, config_from_dict, count_params, init_params
from recap_jax.parallel.mesh import LOGICAL_AXIS_RULES


def _tiny_hf_clip(tmp_path, eos_token_id, act):
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=99, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=12, hidden_act=act,
                         eos_token_id=eos_token_id, bos_token_id=0, pad_token_id=1),
        vision_config=dict(image_size=24, patch_size=8, hidden_size=40, intermediate_size=56,
                           num_hidden_layers=2, num_attention_heads=5, hidden_act=act),
        projection_dim=16)
    torch.manual_seed(0)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():  # HF inits LayerNorms to identity and biases to 0: randomise everything
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(tmp_path, safe_serialization=True)
    return model


@pytest.mark.parametrize("eos_token_id,act", [(98, "quick_gelu"), (2, "gelu")])
def test_embeddings_match_transformers(tmp_path, eos_token_id, act):
    hf_model = _tiny_hf_clip(tmp_path, eos_token_id, act)
    assert not list(tmp_path.glob("*.bin")), "the checkpoint must be safetensors only"
    cfg = hf_weights.read_hf_config(str(tmp_path))
    params = hf_weights.load_hf_params(str(tmp_path), cfg)
    model = CLIP(cfg)
    # The loaded tree has exactly the structure and shapes of a freshly initialised model.
    fresh = nn.unbox(jax.eval_shape(lambda: init_params(model, jax.random.key(0))))
    assert jax.tree.structure(fresh) == jax.tree.structure(params)
    assert jax.tree.map(lambda a: a.shape, fresh) == jax.tree.map(lambda a: a.shape, params)

    rng = np.random.default_rng(0)
    images = rng.normal(size=(3, 24, 24, 3)).astype(np.float32)
    # BOS, words, EOS, then padding (EOS id reused as pad, as in OpenAI's tokenizer), varying lengths.
    tokens = np.full((3, 12), 98 if eos_token_id != 2 else 2, np.int64)
    for row, n_words in enumerate((3, 7, 10)):
        tokens[row, 0] = 0
        tokens[row, 1:1 + n_words] = rng.integers(3, 90, size=n_words)
        tokens[row, 1 + n_words] = 98 if eos_token_id != 2 else 97  # legacy: EOS is the highest id
    if eos_token_id == 2:
        tokens[tokens == 2] = 1

    with torch.no_grad():
        want_img = hf_model.get_image_features(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)))
        want_txt = hf_model.get_text_features(input_ids=torch.from_numpy(tokens))
    want_img = getattr(want_img, "pooler_output", want_img).numpy()
    want_txt = getattr(want_txt, "pooler_output", want_txt).numpy()

    variables = {"params": jax.tree.map(jnp.asarray, params)}
    got_img = model.apply(variables, jnp.asarray(images), normalize=False, method=CLIP.encode_image)
    got_txt = model.apply(variables, jnp.asarray(tokens, jnp.int32), normalize=False, method=CLIP.encode_text)
    np.testing.assert_allclose(np.asarray(got_img), want_img, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(got_txt), want_txt, rtol=1e-4, atol=1e-4)
    assert float(params["logit_scale"]) == pytest.approx(float(hf_model.logit_scale.detach()), rel=1e-6)


def test_params_carry_logical_axes_and_bfloat16_compute():
    cfg = config_from_dict(model_config(image="tiny/8", text="tiny", image_size=16, text_context=8,
                                        embed_dim=8, vocab_size=50, eos_token_id=49, dtype="bfloat16"))
    model = CLIP(cfg)
    boxed = init_params(model, jax.random.key(0))
    specs = nn.get_partition_spec(boxed)
    q_spec = specs["text_tower"]["layers"]["q_proj"]["kernel"]
    assert tuple(q_spec) == ("layers", "embed", "heads", "head_dim")
    mesh_axes = nn.logical_to_mesh_axes(tuple(q_spec), LOGICAL_AXIS_RULES)
    assert tuple(mesh_axes) == (None, "fsdp", "tensor", None)
    params = nn.unbox(boxed)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    img, txt = jax.jit(model.apply)({"params": params}, jnp.ones((2, 16, 16, 3)),
                                    jnp.array([[0, 5, 49, 49, 49, 49, 49, 49]] * 2))
    assert img.shape == txt.shape == (2, 8) and img.dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.norm(np.asarray(img), axis=-1), 1.0, rtol=1e-5)
    assert count_params(boxed) > 0


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="model.image"):
        config_from_dict(model_config(image="Z/99", text="tiny"))
    with pytest.raises(ValueError, match="model.image_size"):
        config_from_dict(model_config(image="tiny/8", text="tiny", image_size=30))
