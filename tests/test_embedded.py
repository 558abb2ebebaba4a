"""The shipped embedded generator (ganinv/assets/procedural64.pt) and its default configs."""
import torch

from ganinv.checkpoints import load_discriminator, load_generator
from ganinv.config import ASSETS


def test_shipped_generator_loads_and_generates():
    path = ASSETS / "procedural64.pt"
    assert path.stat().st_size <= 15 * 2**20
    g = load_generator(path)
    assert (g.size, g.style_dim, g.n_latent) == (64, 512, 10)
    assert g.latent_avg.shape == (512,)
    with torch.no_grad():
        img = g(torch.randn(4, 512, generator=torch.Generator().manual_seed(0)), noise_mode="const")
    assert img.shape == (4, 3, 64, 64) and torch.isfinite(img).all()
    assert 0.1 < img.std() < 1.5  # a trained generator, not a constant or exploding image
    d = load_discriminator(path)
    with torch.no_grad():
        assert d(img).shape == (4, 1)


def test_default_config_points_at_embedded(compose_train):
    cfg = compose_train("+method=e4e")
    assert cfg.generator.path.endswith("ganinv/assets/procedural64.pt")
    assert cfg.data._target_.endswith("ProceduralDataModule") and cfg.encoder.input_size == 64
