"""The Flax AutoencoderKL against diffusers' (PyTorch) on a tiny random model: encode and decode."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from dit_eval_helpers import tiny_diffusers_vae  # noqa: E402
from recap_jax.conversion.autoencoder_kl import load_autoencoder  # noqa: E402
from recap_jax.errors import ConfigError, ConversionError  # noqa: E402
from recap_jax.models import autoencoder_kl as ae  # noqa: E402


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae")
    return folder, tiny_diffusers_vae(folder)


def test_encode_decode_match_diffusers(vae):
    folder, model = vae
    cfg, params = load_autoencoder(str(folder))
    assert cfg.scaling_factor == 0.3 and cfg.downsample == 2
    images = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    with torch.no_grad():
        dist = model.encode(torch.from_numpy(images).permute(0, 3, 1, 2)).latent_dist
        mean = dist.mean.permute(0, 2, 3, 1).numpy()
        logvar = dist.logvar.permute(0, 2, 3, 1).numpy()
        latents = np.random.default_rng(1).normal(size=mean.shape).astype(np.float32)
        decoded = model.decode(torch.from_numpy(latents).permute(0, 3, 1, 2)).sample.permute(0, 2, 3, 1).numpy()
    module = ae.AutoencoderKL(cfg)
    our_mean, our_logvar = module.apply({"params": params}, images, method=ae.AutoencoderKL.moments)
    np.testing.assert_allclose(our_mean, mean, atol=1e-4)
    np.testing.assert_allclose(our_logvar, logvar, atol=1e-4)
    our_decoded = module.apply({"params": params}, latents, method=ae.AutoencoderKL.decode)
    np.testing.assert_allclose(our_decoded, decoded, atol=1e-4)
    # scaled helpers: the scale factor from config.json, and a posterior sample from given noise
    scaled = ae.encode_scaled(module, params, images)
    np.testing.assert_allclose(scaled, 0.3 * mean, atol=1e-4)
    noise = np.ones_like(mean)
    np.testing.assert_allclose(ae.encode_scaled(module, params, images, noise),
                               0.3 * (mean + np.exp(0.5 * logvar)), atol=1e-4)
    np.testing.assert_allclose(ae.decode_scaled(module, params, 0.3 * latents), decoded, atol=1e-4)


def test_legacy_attention_names_load(vae, tmp_path):
    """Checkpoints from before diffusers' attention rename (query/key/value/proj_attn) load the same."""
    from safetensors.numpy import load_file, save_file
    folder, _ = vae
    tensors = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    legacy = {}
    for name, value in tensors.items():
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            name = name.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
        legacy[name] = value
    assert any(".query." in n for n in legacy)
    save_file(legacy, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    _, params = load_autoencoder(str(folder))
    _, legacy_params = load_autoencoder(str(tmp_path))
    np.testing.assert_array_equal(legacy_params["encoder"]["mid"]["attentions_0"]["to_q"]["kernel"],
                                  params["encoder"]["mid"]["attentions_0"]["to_q"]["kernel"])


def test_misfit_checkpoints_name_the_problem(vae, tmp_path):
    folder, _ = vae
    with pytest.raises(ConfigError, match="autoencoder.dir: .* has no config.json"):
        load_autoencoder(str(tmp_path))
    other = tmp_path / "other"
    tiny_diffusers_vae(other, blocks=(8, 16, 16))
    (other / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(ConversionError, match="autoencoder.dir: .*AutoencoderKL checkpoint"):
        load_autoencoder(str(other))


def test_tiny_autoencoder_is_a_diffusers_folder(tmp_path):
    """The demo's tiny random autoencoder (here with two levels, for a quick compile): diffusers
    loads it and computes what we compute."""
    import dataclasses

    from recap_jax.dit.codec import load_codec
    from recap_jax.dit.tiny_autoencoder import TINY, build_tiny_autoencoder
    build_tiny_autoencoder(str(tmp_path / "tiny"), cfg=dataclasses.replace(TINY, block_out_channels=(8, 16)))
    model = diffusers.AutoencoderKL.from_pretrained(str(tmp_path / "tiny")).eval()
    codec = load_codec(str(tmp_path / "tiny"))
    assert codec.kind == "kl-f8" and codec.latent_shape(32) == (16, 16, 4) and codec.scale_factor == 0.18215
    images = np.random.default_rng(0).uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        mean = model.encode(torch.from_numpy(images).permute(0, 3, 1, 2)).latent_dist.mean
        decoded = model.decode(mean).sample.permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(codec.encode(images), 0.18215 * mean.permute(0, 2, 3, 1).numpy(), atol=1e-4)
    np.testing.assert_allclose(codec.decode(codec.encode(images)), np.clip(decoded, -1, 1), atol=1e-4)


_SPLIT_SCRIPT = """
import sys, numpy as np, jax
from recap_jax.dit.codec import load_codec
codec = load_codec(sys.argv[1])
x = np.random.default_rng(0).uniform(-1, 1, (3, 16, 16, 3)).astype(np.float32)
eps = np.random.default_rng(1).normal(size=(3, 8, 8, 4)).astype(np.float32)
np.savez(sys.argv[2], mean=codec.encode(x), sample=codec.encode(x, eps), decoded=codec.decode(codec.encode(x)),
         devices=len(jax.local_devices()))
"""


def test_codec_splits_batches_over_local_devices(vae, tmp_path):
    """On 2 devices (3 rows: padded to 4, split 2 + 2) the codec gives the 1-device results."""
    import subprocess
    import sys

    from caption_helpers import REPO, env
    folder, _ = vae
    results = {}
    for devices in (1, 2):
        out = tmp_path / f"{devices}.npz"
        proc = subprocess.run([sys.executable, "-c", _SPLIT_SCRIPT, str(folder), str(out)], env=env(devices),
                              cwd=REPO, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        results[devices] = np.load(out)
    assert int(results[2]["devices"]) == 2 and results[1]["mean"].shape == (3, 8, 8, 4)
    for name in ("mean", "sample", "decoded"):
        np.testing.assert_allclose(results[2][name], results[1][name], atol=1e-5)
