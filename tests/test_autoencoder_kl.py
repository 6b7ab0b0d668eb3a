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
