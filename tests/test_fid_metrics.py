"""FID pieces against pytorch-fid: the Frechet distance, and the Flax FID InceptionV3's pool
features on random weights (the real ones are not downloaded here)."""

import inspect

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytorch_fid = pytest.importorskip("pytorch_fid")

from pytorch_fid import fid_score, inception as fid_inception  # noqa: E402

from recap_jax.errors import ConfigError, ConversionError  # noqa: E402
from recap_jax.metrics import frechet, inception  # noqa: E402


def test_frechet_distance_matches_pytorch_fid():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 16))
    b = rng.normal(0.3, 1.2, size=(150, 16)) @ rng.normal(size=(16, 16)) * 0.5
    mu1, s1 = frechet.feature_statistics(a)
    mu2, s2 = frechet.feature_statistics(b)
    ours = frechet.frechet_distance(mu1, s1, mu2, s2)
    theirs = fid_score.calculate_frechet_distance(mu1, s1, mu2, s2)
    assert ours > 1.0
    assert abs(ours - theirs) <= 1e-6
    assert frechet.frechet_distance_of_features(a, a) == pytest.approx(0.0, abs=1e-6)
    # a singular product (fewer samples than dimensions) takes pytorch-fid's eps path
    c, d = rng.normal(size=(5, 16)), rng.normal(size=(5, 16))
    args = (*frechet.feature_statistics(c), *frechet.feature_statistics(d))
    assert abs(frechet.frechet_distance(*args) - fid_score.calculate_frechet_distance(*args)) <= 1e-6


def _random_fid_inception(monkeypatch, seed=0):
    """pytorch-fid's InceptionV3 (FID blocks) with random weights: He-scaled convs and random batch
    statistics, so activations neither vanish nor explode through the 20 blocks."""
    gen = torch.Generator().manual_seed(seed)
    saved = {}  # the state dict in the released file's layout (torchvision names)

    def random_state(*args, **kwargs):
        model = inspect.currentframe().f_back.f_locals["inception"]  # the network fid_inception_v3 builds
        state = {}
        for name, value in model.state_dict().items():
            if name.endswith("conv.weight"):
                fan_in = value[0].numel()
                state[name] = torch.randn(value.shape, generator=gen) * (2.0 / fan_in) ** 0.5
            elif name.endswith("running_var") or name.endswith("bn.weight"):
                state[name] = 0.5 + torch.rand(value.shape, generator=gen)
            elif value.dtype.is_floating_point:
                state[name] = 0.1 * torch.randn(value.shape, generator=gen)
            else:
                state[name] = value
        saved.update(state)
        return state

    monkeypatch.setattr(fid_inception, "load_state_dict_from_url", random_state)
    model = fid_inception.InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=True)
    return model.eval(), saved


def test_inception_features_match_pytorch_fid(monkeypatch, tmp_path):
    from safetensors.torch import save_file
    model, state = _random_fid_inception(monkeypatch)
    weights = tmp_path / "pt_inception.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 80, 3), dtype=np.uint8)
    with torch.no_grad():
        theirs = model(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)[0].squeeze(-1).squeeze(-1)
    theirs = theirs.numpy()
    variables = inception.load_inception(str(weights))
    ours = inception.inception_features(variables, images, batch_size=2)
    assert ours.shape == (2, inception.FEATURES)
    assert np.abs(theirs).mean() > 0.05  # features of a live network, not of vanished activations
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)


def test_inception_weights_misuse(tmp_path):
    with pytest.raises(ConfigError, match="eval.inception_weights: .* is not a file"):
        inception.load_inception(str(tmp_path / "missing.safetensors"))
    from safetensors.numpy import save_file
    save_file({"Conv2d_1a_3x3.conv.weight": np.zeros((1, 1, 1, 1), np.float32)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ConversionError, match="eval.inception_weights: .*FID Inception"):
        inception.load_inception(str(tmp_path / "w.safetensors"))
