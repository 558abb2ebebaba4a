"""Optimisation inversion and PTI as LightningModules run by ``trainer.fit(module)`` alone.

A tiny random generator (32 px, style_dim 64) with non-zero noise strengths makes the targets:
images G(w*) of known codes, whose scale (MSE ≈ 2–8 against the mean-w image) is that of an
untrained generator's outputs.
"""
import math

import pytest
import pytorch_lightning as pl
import torch
from conftest import noisy_generator

from ganinv.checkpoints import load_generator
from ganinv.checkpoints.stylegan import save_generator
from ganinv.distributed import step_seed
from ganinv.losses import LPIPSLoss
from ganinv.methods.optimization import (
    OptimizationInversion,
    latent_noise_strength,
    projector_lr,
)
from ganinv.methods.pti import PTI
from ganinv.methods.targets import w_statistics
from ganinv.nets.idinvert_encoder import IDInvertEncoder

pytestmark = pytest.mark.usefixtures("module_one_thread")


@pytest.fixture(scope="module")
def g():
    return noisy_generator(latent_avg=True)


@pytest.fixture(scope="module")
def stats(g):
    return w_statistics(g, 2000)


@pytest.fixture(scope="module")
def lpips():
    return LPIPSLoss(net="alex", pnet_rand=True)


def targets(g, n, seed=1):
    with torch.no_grad():
        w = g.mapping(torch.randn(n, g.style_dim, generator=torch.Generator().manual_seed(seed)))
        return g.synthesis(g.broadcast(w))


def fit(module):
    # default max_epochs (1000): the module ends the run after its one pass over the steps
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module)  # no datamodule, no dataloader: the module owns its targets
    return trainer


def image_mse(a, b):
    return (a - b).pow(2).mean((1, 2, 3))


def test_projector_schedule_formulas():
    assert projector_lr(0.0, 0.1) == 0.0
    assert projector_lr(0.025, 0.1) == pytest.approx(0.05)  # half-way up the 5 % ramp
    assert projector_lr(0.5, 0.1) == pytest.approx(0.1)
    assert projector_lr(0.875, 0.1) == pytest.approx(0.05)  # half-way down the cosine ramp
    assert latent_noise_strength(0.0, 2.0) == pytest.approx(0.1)
    assert latent_noise_strength(0.375, 2.0) == pytest.approx(0.1 * 0.25)
    assert latent_noise_strength(0.8, 2.0) == 0.0
    assert step_seed(0, "a.png") == step_seed(0, "a.png") != step_seed(0, "b.png")


def test_w_statistics_are_the_projector_mean_and_spread(g):
    mean, std = w_statistics(g, 500, seed=3)
    z = torch.randn(500, g.style_dim, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        w = g.mapping(z)
    assert torch.allclose(mean, w.mean(0), atol=1e-6)
    assert std == pytest.approx(math.sqrt((w - w.mean(0)).pow(2).sum().item() / 500), rel=1e-5)


@pytest.mark.parametrize("space, mse_bound, factor", [("w", 0.06, 100.0), ("w+", 0.12, 50.0)])
def test_inverts_known_codes(g, stats, space, mse_bound, factor):
    x = targets(g, 2)
    module = OptimizationInversion(g, x, latent_space=space, steps=150, lr=0.1, w_stats=stats)
    trainer = fit(module)
    assert trainer.global_step == 150
    result = module.result
    assert result["latents"].shape == (2, g.n_latent, g.style_dim)
    if space == "w":  # one w for every layer
        assert torch.equal(result["latents"][:, :1].expand(-1, g.n_latent, -1), result["latents"])
    mse = image_mse(result["images"], x)
    assert (mse < mse_bound).all(), mse
    curves = module.curves
    assert curves.shape == (150, 2)
    assert (curves[0] / curves[-1] > factor).all(), curves[[0, -1]]


def test_z_space_loss_falls(g, stats):
    x = targets(g, 1)
    module = OptimizationInversion(g, x, latent_space="z", init="random", steps=30, lr=0.05, w_stats=stats)
    fit(module)
    assert module.latent.shape == (1, g.style_dim)
    assert module.curves[-1, 0] < 0.3 * module.curves[0, 0]


def test_batch_equals_one_by_one(g, stats, lpips):
    # The projector recipe, with everything random and per image: latent noise, noise maps.
    kw = dict(latent_space="w+", steps=15, lr=0.1, schedule="projector", latent_noise=0.05,
              noise_init="random", optimize_noise=True, noise_regularize=1e5, mse_lambda=1.0,
              lpips_lambda=1.0, lpips=lpips, w_stats=stats, seed=7)
    x, keys = targets(g, 4), ["a", "b", "c", "d"]
    batch = OptimizationInversion(g, x, keys=keys, **kw)
    fit(batch)
    # atol 1e-3: batched and single convs sum in different orders (by thread count), and 15 Adam
    # steps at lr 0.1 amplify that to ~2e-4; mixing images up would differ by ~1.
    for i in range(4):
        single = OptimizationInversion(g, x[i:i + 1], keys=keys[i:i + 1], **kw)
        fit(single)
        assert torch.allclose(single.result["latents"][0], batch.result["latents"][i], atol=1e-3)
        for a, b in zip(single.result["noises"], batch.result["noises"]):
            assert torch.allclose(a[0], b[i], atol=1e-3)
        assert torch.allclose(single.curves[:, 0], batch.curves[:, i], rtol=1e-4, atol=1e-6)
    moved = (batch.result["latents"] - g.broadcast(stats[0].expand(4, -1))).abs().amax((1, 2))
    assert (moved > 0.1).all()  # the comparison is not between two untouched initialisations


def test_noise_maps_renormalised_per_image(g, stats):
    module = OptimizationInversion(g, targets(g, 2), steps=5, lr=0.1, noise_init="random",
                                   optimize_noise=True, noise_regularize=1e5, w_stats=stats)
    fit(module)
    for n in module.result["noises"]:
        assert torch.allclose(n.mean((1, 2, 3)), torch.zeros(2), atol=1e-5)
        assert torch.allclose(n.std((1, 2, 3)), torch.ones(2), atol=1e-4)


def test_early_stop_freezes_each_image(g, stats, lpips):
    with torch.no_grad():
        mean_image = g.synthesis(g.broadcast(stats[0][None]))
    x = torch.cat([mean_image, targets(g, 1)])  # image 0 is already reproduced by the mean-w start
    module = OptimizationInversion(g, x, steps=10, lr=0.1, lpips=lpips, early_stop_lpips=1e-6, w_stats=stats)
    trainer = fit(module)
    assert trainer.global_step == 10
    assert module.result["frozen_at"].tolist() == [0, -1]
    latents = module.result["latents"]
    assert torch.equal(latents[0], g.broadcast(stats[0][None])[0])  # frozen exactly
    assert not torch.allclose(latents[1], latents[0])
    both_done = OptimizationInversion(g, mean_image.expand(2, -1, -1, -1), steps=10, lpips=lpips,
                                      early_stop_lpips=1e-6, w_stats=stats)
    assert fit(both_done).global_step == 0  # every image met the threshold: the run stopped


def test_image2stylegan_pp_second_phase_tunes_noise_only(g, stats):
    x = targets(g, 2)
    kw = dict(latent_space="w+", steps=10, lr=0.05, w_stats=stats)
    plain = OptimizationInversion(g, x, **kw)
    fit(plain)
    pp = OptimizationInversion(g, x, noise_steps=10, noise_lr=0.05, **kw)
    assert fit(pp).global_step == 20
    assert torch.allclose(pp.result["latents"], plain.result["latents"], atol=1e-6)
    const = [getattr(g.noises, f"noise_{i}") for i in range(g.num_layers)]
    assert any(not torch.allclose(n, c.expand_as(n)) for n, c in zip(pp.result["noises"], const))
    assert (image_mse(pp.result["images"], x) < image_mse(plain.result["images"], x)).all()


def test_encoder_init_and_domain_regularisation(g, stats):
    torch.manual_seed(0)
    encoder = IDInvertEncoder(32, w_space_dim=64, encoder_channels_base=8, encoder_channels_max=32).eval()
    x = targets(g, 2)
    kw = dict(latent_space="w+", init="encoder", encoder=encoder, steps=50, lr=0.01, w_stats=stats)
    plain = OptimizationInversion(g, x, **kw)
    with torch.no_grad():
        assert torch.allclose(plain.latent, encoder(x))  # the hybrid start is E(x)
    fit(plain)
    domain = OptimizationInversion(g, x, domain_lambda=2.0, **kw)  # IDInvert's weight
    fit(domain)

    def off_domain(ws):
        with torch.no_grad():
            return (ws - encoder(g.synthesis(ws))).pow(2).mean((1, 2))

    d_plain, d_domain = off_domain(plain.result["latents"]), off_domain(domain.result["latents"])
    assert (d_domain < d_plain).all()
    assert d_domain.mean() < 0.95 * d_plain.mean()
    assert all(m.training is False for m in domain.encoder.modules())  # BN stayed in eval


def test_invalid_options_are_one_line_errors(g, stats):
    x = targets(g, 1)
    cases = [(dict(latent_space="s"), "latent_space must be one of z, w, w+; got 's'"),
             (dict(latent_space="z"), "latent_space=z starts from a random z"),
             (dict(init="encoder"), "init=encoder and domain_lambda > 0 need an encoder"),
             (dict(lpips_lambda=1.0), "lpips_lambda > 0 needs an lpips network"),
             (dict(noise_init="random"), "noise_init=random needs optimize_noise=true"),
             (dict(steps=0), "steps must be an int >= 1")]
    for kw, message in cases:
        with pytest.raises(ValueError, match=message.replace("+", r"\+")):
            OptimizationInversion(g, x, w_stats=stats, **kw)
    with pytest.raises(ValueError, match="must divide the generator's"):
        OptimizationInversion(g, torch.zeros(1, 3, 24, 24), w_stats=stats)


def test_pti_beats_its_pivot_and_saves_a_loadable_generator(g, stats, lpips, tmp_path):
    x = targets(g, 2)
    pivots = g.broadcast(stats[0].expand(2, -1)).clone()
    with torch.no_grad():
        pivot_mse = image_mse(g.synthesis(pivots), x)
    before = {k: v.clone() for k, v in g.state_dict().items()}
    module = PTI(g, x, pivots, lpips, steps=30)  # official lr 3e-4
    assert fit(module).global_step == 30
    tuned_mse = image_mse(module.result["images"], x)
    assert (tuned_mse < 0.75 * pivot_mse).all(), (tuned_mse, pivot_mse)
    assert all(torch.equal(v, g.state_dict()[k]) for k, v in before.items())  # the original is untouched
    assert all(torch.equal(a, b) for a, b in zip(module.generator.style.parameters(), g.style.parameters()))
    path = save_generator(tmp_path / "tuned.pt", module.generator)
    loaded = load_generator(path)
    with torch.no_grad():
        assert torch.allclose(loaded.synthesis(pivots), module.result["images"], atol=1e-5)


def test_pti_stops_at_the_lpips_threshold_and_locality_starts_at_zero(g, stats, lpips):
    x = targets(g, 1)
    z = torch.randn(1, g.style_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pivots = g.broadcast(g.mapping(z))  # the code targets(g, 1) was made from
    module = PTI(g, x, pivots, lpips, steps=30, lpips_threshold=0.06)
    assert fit(module).global_step == 0  # the pivot reproduces the target: nothing to tune
    local = PTI(g, targets(g, 2, seed=2), g.broadcast(stats[0].expand(2, -1)), lpips, steps=2,
                locality_regularization=True)
    with torch.no_grad():
        assert torch.equal(local.locality_loss(torch.arange(2)), torch.zeros(2))  # tuned == original
    assert fit(local).global_step == 2
