"""open_clip safetensors import: embeddings equal a numpy transcription of open_clip's forward
pass on a tiny random model; pickles are refused."""

import json
import os

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from recap_jax.clip import model as model_lib, open_clip_weights
from recap_jax.errors import ConversionError, ModelConfigError

W, LAYERS, HEADS, PATCH, SIZE, CTX, VOCAB, EMBED, TW, THEADS = 32, 2, 2, 8, 16, 8, 20, 12, 24, 3


def _random_open_clip(folder, quick_gelu):
    rng = np.random.default_rng(0)
    t = {}

    def r(*shape, scale=0.2):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    def block(prefix, width):
        t.update({f"{prefix}.ln_1.weight": 1 + r(width), f"{prefix}.ln_1.bias": r(width),
                  f"{prefix}.attn.in_proj_weight": r(3 * width, width), f"{prefix}.attn.in_proj_bias": r(3 * width),
                  f"{prefix}.attn.out_proj.weight": r(width, width), f"{prefix}.attn.out_proj.bias": r(width),
                  f"{prefix}.ln_2.weight": 1 + r(width), f"{prefix}.ln_2.bias": r(width),
                  f"{prefix}.mlp.c_fc.weight": r(4 * width, width), f"{prefix}.mlp.c_fc.bias": r(4 * width),
                  f"{prefix}.mlp.c_proj.weight": r(width, 4 * width), f"{prefix}.mlp.c_proj.bias": r(width)})

    grid = (SIZE // PATCH) ** 2
    t.update({"visual.conv1.weight": r(W, 3, PATCH, PATCH), "visual.class_embedding": r(W),
              "visual.positional_embedding": r(grid + 1, W), "visual.ln_pre.weight": 1 + r(W),
              "visual.ln_pre.bias": r(W), "visual.ln_post.weight": 1 + r(W), "visual.ln_post.bias": r(W),
              "visual.proj": r(W, EMBED), "token_embedding.weight": r(VOCAB, TW), "positional_embedding": r(CTX, TW),
              "ln_final.weight": 1 + r(TW), "ln_final.bias": r(TW), "text_projection": r(TW, EMBED),
              "logit_scale": np.asarray(np.log(1 / 0.07), np.float32)})
    for i in range(LAYERS):
        block(f"visual.transformer.resblocks.{i}", W)
        block(f"transformer.resblocks.{i}", TW)
    os.makedirs(folder, exist_ok=True)
    save_file(t, os.path.join(folder, "open_clip_model.safetensors"))
    cfg = {"model_cfg": {"embed_dim": EMBED, "quick_gelu": quick_gelu,
                         "vision_cfg": {"image_size": SIZE, "layers": LAYERS, "width": W, "patch_size": PATCH,
                                        "head_width": W // HEADS},
                         "text_cfg": {"context_length": CTX, "vocab_size": VOCAB, "width": TW, "heads": THEADS,
                                      "layers": LAYERS}},
           "preprocess_cfg": {"mean": [0.48, 0.46, 0.41], "std": [0.27, 0.26, 0.28]}}
    with open(os.path.join(folder, "open_clip_config.json"), "w") as f:
        json.dump(cfg, f)
    return t


def _reference(t, images, tokens, quick_gelu):
    """open_clip's CLIP.encode_image / encode_text written out in numpy (float64)."""
    t = {k: v.astype(np.float64) for k, v in t.items()}
    act = (lambda x: x / (1 + np.exp(-1.702 * x))) if quick_gelu else (
        lambda x: 0.5 * x * (1 + np.vectorize(__import__("math").erf)(x / np.sqrt(2))))

    def ln(x, p):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * t[p + ".weight"] + t[p + ".bias"]

    def attention(x, p, heads, causal):
        b, n, w = x.shape
        qkv = x @ t[p + ".in_proj_weight"].T + t[p + ".in_proj_bias"]
        q, k, v = (a.reshape(b, n, heads, w // heads).transpose(0, 2, 1, 3) for a in np.split(qkv, 3, -1))
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(w // heads)
        if causal:
            s = np.where(np.tril(np.ones((n, n), bool)), s, -np.inf)
        s = np.exp(s - s.max(-1, keepdims=True))
        out = (s / s.sum(-1, keepdims=True)) @ v
        return out.transpose(0, 2, 1, 3).reshape(b, n, w) @ t[p + ".out_proj.weight"].T + t[p + ".out_proj.bias"]

    def transformer(x, prefix, heads, causal):
        for i in range(LAYERS):
            p = f"{prefix}.resblocks.{i}"
            x = x + attention(ln(x, p + ".ln_1"), p + ".attn", heads, causal)
            h = act(ln(x, p + ".ln_2") @ t[p + ".mlp.c_fc.weight"].T + t[p + ".mlp.c_fc.bias"])
            x = x + h @ t[p + ".mlp.c_proj.weight"].T + t[p + ".mlp.c_proj.bias"]
        return x

    b, g = len(images), SIZE // PATCH
    patches = images.reshape(b, g, PATCH, g, PATCH, 3).transpose(0, 1, 3, 5, 2, 4).reshape(b, g * g, -1)
    x = patches @ t["visual.conv1.weight"].reshape(W, -1).T  # conv1 as a matmul over (c, kh, kw)
    x = np.concatenate([np.broadcast_to(t["visual.class_embedding"], (b, 1, W)), x], 1) + t["visual.positional_embedding"]
    x = transformer(ln(x, "visual.ln_pre"), "visual.transformer", HEADS, False)
    image = ln(x[:, 0], "visual.ln_post") @ t["visual.proj"]
    y = t["token_embedding.weight"][tokens] + t["positional_embedding"]
    y = ln(transformer(y, "transformer", THEADS, True), "ln_final")
    text = y[np.arange(len(tokens)), tokens.argmax(-1)] @ t["text_projection"]
    return (image / np.linalg.norm(image, axis=-1, keepdims=True), text / np.linalg.norm(text, axis=-1, keepdims=True))


@pytest.mark.parametrize("quick_gelu", [True, False])
def test_open_clip_import_matches_the_numpy_reference(tmp_path, quick_gelu):
    tensors = _random_open_clip(str(tmp_path), quick_gelu)
    cfg = open_clip_weights.read_config(str(tmp_path))
    assert (cfg.vision.heads, cfg.text.heads, cfg.vision.mlp_dim, cfg.pool_text_at_argmax) == (HEADS, THEADS, 4 * W, True)
    params = open_clip_weights.load_params(str(tmp_path), cfg)
    model = model_lib.CLIP(cfg)
    # Every converted tensor has the shape our model expects.
    shapes = jax.eval_shape(lambda: model_lib.init_params(model, jax.random.key(0)))
    assert jax.tree.map(lambda a: a.shape, params) == jax.tree.map(lambda a: a.shape, jax.tree.map(lambda b: b.value if hasattr(b, "value") else b, shapes, is_leaf=lambda b: hasattr(b, "value")))

    rng = np.random.default_rng(1)
    images = rng.standard_normal((3, SIZE, SIZE, 3)).astype(np.float32)
    tokens = rng.integers(1, VOCAB - 1, size=(3, CTX)).astype(np.int32)
    tokens[[0, 1, 2], [3, 5, 7]] = VOCAB - 1  # end of text = the highest id, where open_clip pools
    got_image, got_text = model.apply({"params": params}, images, tokens)
    want_image, want_text = _reference(tensors, images, tokens, quick_gelu)
    np.testing.assert_allclose(np.asarray(got_image), want_image, atol=2e-5)
    np.testing.assert_allclose(np.asarray(got_text), want_text, atol=2e-5)


def test_refuses_pickles_and_unsupported_towers(tmp_path):
    _random_open_clip(str(tmp_path), True)
    os.rename(tmp_path / "open_clip_model.safetensors", tmp_path / "open_clip_pytorch_model.bin")
    with pytest.raises(ConversionError, match="pickled checkpoints are not read"):
        open_clip_weights.load_params(str(tmp_path), open_clip_weights.read_config(str(tmp_path)))
    cfg = json.load(open(tmp_path / "open_clip_config.json"))
    cfg["model_cfg"]["vision_cfg"]["timm_model_name"] = "vit_base_patch16_224"
    json.dump(cfg, open(tmp_path / "open_clip_config.json", "w"))
    with pytest.raises(ModelConfigError, match="timm_model_name"):
        open_clip_weights.read_config(str(tmp_path))
