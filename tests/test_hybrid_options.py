"""pbaylies/stylegan-encoder options of OptimizationInversion (encode_images.py, encoder/perceptual_model.py)
on a tiny random generator: each term's value is its formula, and the schedule / stopping rules
follow the official code step by step."""
import inspect
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from conftest import noisy_generator
from omegaconf import OmegaConf
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

from ganinv.losses import LPIPSLoss
from ganinv.losses.masked import (
    MSSSIM_BETAS,
    dlatent_l1,
    logcosh_pixel_loss,
    masked_mse,
    msssim_loss,
    msssim_min_size,
)
from ganinv.methods.optimization import OptimizationInversion, exponential_lr
from ganinv.methods.targets import w_statistics
from ganinv.nets.stylegan2 import Discriminator

CONF = Path(__file__).resolve().parents[1] / "conf" / "invert" / "inversion"


pytestmark = pytest.mark.usefixtures("module_one_thread")


@pytest.fixture(scope="module")
def g():
    return noisy_generator(latent_avg=False)


@pytest.fixture(scope="module")
def stats(g):
    return w_statistics(g, 2000)


def targets(g, n, seed=1):
    with torch.no_grad():
        w = g.mapping(torch.randn(n, g.style_dim, generator=torch.Generator().manual_seed(seed)))
        return g.synthesis(g.broadcast(w))


def fit(module):
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(module)
    return trainer


def loss_now(module):
    """The module's per-image loss [N] at its current latent (no latent noise)."""
    rows = torch.arange(module.num_images)
    with torch.no_grad():
        ws, img = module.synthesize(rows)
        return module.image_losses(rows, img, ws, noise_phase=False)[0], ws, img


def test_staircase_lr_decay_follows_the_official_formula(g, stats):
    # tf.train.exponential_decay(0.25, step + 1, 4, 0.9, staircase=True) for 100 iterations, decay_steps=4 %
    assert exponential_lr(0, 100, 0.25) == 0.25
    assert exponential_lr(2, 100, 0.25) == 0.25
    assert exponential_lr(3, 100, 0.25) == pytest.approx(0.225)  # global step 4: first decay
    assert exponential_lr(99, 100, 0.25) == pytest.approx(0.25 * 0.9 ** 25)
    module = OptimizationInversion(g, targets(g, 1), steps=50, lr=0.2, schedule="exponential", lr_decay_rate=0.5,
                                   lr_decay_every=0.1, w_stats=stats)
    lrs = [module.schedule(i)[0] for i in range(50)]
    assert lrs == [0.2 * 0.5 ** ((i + 1) // 5) for i in range(50)]
    with pytest.raises(ValueError, match="schedule=exponential needs lr_decay_rate > 0 and lr_decay_every > 0"):
        OptimizationInversion(g, targets(g, 1), schedule="exponential", lr_decay_every=0.0, w_stats=stats)


def test_l1_dlatent_penalty_is_its_formula(g, stats):
    x = targets(g, 2)
    module = OptimizationInversion(g, x, mse_lambda=0.0, l1_lambda=0.5, w_stats=stats)
    loss, ws, _ = loss_now(module)
    assert torch.equal(loss, torch.zeros(2))  # the mean-w start has no penalty
    with torch.no_grad():
        module.latent.add_(torch.linspace(-1, 1, g.n_latent * g.style_dim).view(1, g.n_latent, g.style_dim))
    loss, ws, _ = loss_now(module)
    # official: l1_penalty · 512 · mean|dlatents − dlatent_avg| with 512 = D
    expected = 0.5 * g.style_dim * (ws - stats[0]).abs().mean((1, 2))
    assert torch.allclose(loss, expected, rtol=1e-6)
    assert torch.allclose(dlatent_l1(ws, stats[0]), (ws - stats[0]).abs().sum(2).mean(1), rtol=1e-5)
    assert loss[0].item() == pytest.approx(0.5 * 64 * 0.5, rel=1e-2)  # mean |linspace(-1, 1)| ≈ 0.5


def test_tile_dlatents_keeps_every_layer_equal(g, stats):
    x = targets(g, 2)
    module = OptimizationInversion(g, x, tile_dlatents=True, steps=20, lr=0.05, w_stats=stats)
    assert module.hparams.latent_space == "w" and module.latent.shape == (2, g.style_dim)
    fit(module)
    ws = module.result["latents"]
    assert torch.equal(ws, ws[:, :1].expand_as(ws))
    assert (module.curves[-1] < 0.5 * module.curves[0]).all()  # it did optimise
    with pytest.raises(ValueError, match="tile_dlatents=true optimises one w"):
        OptimizationInversion(g, x, tile_dlatents=True, latent_space="z", init="random", w_stats=stats)


def official_stop(losses, threshold, patience):
    """encode_images.py's early-stopping loop over a loss sequence -> the iteration it breaks at, or None."""
    avg = prev = None
    count = 0
    for i, loss in enumerate(losses):
        if prev is not None:
            if avg is not None:
                avg = 0.5 * avg + (prev - loss)
                count = count + 1 if avg < threshold else 0
                if count > patience:
                    return i
            else:
                avg = prev - loss
        prev = loss
    return None


def test_plateau_early_stop_matches_the_official_loop(g, stats):
    x = targets(g, 2)
    always = OptimizationInversion(g, x, steps=30, lr=0.05, plateau_threshold=1e9, plateau_patience=3, w_stats=stats)
    trainer = fit(always)
    # every step counts from the third on: count > 3 at iteration 5; that step's update is taken
    assert always.result["frozen_at"].tolist() == [5, 5]
    assert trainer.global_step == 6
    never = OptimizationInversion(g, x, steps=12, lr=0.05, plateau_threshold=-1e9, plateau_patience=3, w_stats=stats)
    assert fit(never).global_step == 12 and never.result["frozen_at"].tolist() == [-1, -1]
    # a real threshold: each image stops where the official loop on its own loss curve breaks
    kw = dict(steps=60, lr=0.05, plateau_threshold=0.05, plateau_patience=4, w_stats=stats)
    real = OptimizationInversion(g, x, **kw)
    fit(real)
    stops = [official_stop(real.curves[:, i].tolist(), 0.05, 4) for i in range(2)]
    assert real.result["frozen_at"].tolist() == [-1 if s is None else s for s in stops]
    assert all(s is not None and 6 <= s < 59 for s in stops), stops  # measured: stops inside the run
    frozen = real.result["frozen_at"]
    for i in range(2):  # frozen after its stop: the loss no longer changes
        tail = real.curves[frozen[i] + 1:, i]
        assert torch.allclose(tail, tail[:1].expand_as(tail)), i


def test_pixel_msssim_lpips_and_mask_terms(g, stats):
    x = targets(g, 2)
    torch.manual_seed(3)
    mask = (torch.rand(2, 1, 32, 32) > 0.5).float()
    lpips = LPIPSLoss(net="alex", pnet_rand=True)
    betas = (0.6, 0.4)  # two scales fit 32 px images
    module = OptimizationInversion(g, x, mask=mask, mse_lambda=2.0, logcosh_lambda=1.5, msssim_lambda=200.0,
                                   msssim_betas=betas, lpips_lambda=100.0, lpips=lpips, w_stats=stats)
    loss, _, img = loss_now(module)
    mx, mr = mask * x, mask * img  # stylegan-encoder: ref_weight * ref_img, ref_weight * generated_image
    ms = multiscale_structural_similarity_index_measure(mr, mx, betas=betas, kernel_size=11,
                                                        data_range=2.0, reduction="none", normalize="relu")
    d = (mr - mx) * 127.5
    expected = (2.0 * (mr - mx).pow(2).mean((1, 2, 3))
                + 1.5 * (torch.logaddexp(d.double(), -d.double()) - math.log(2)).float().mean((1, 2, 3))
                + 200.0 * (1 - ms) + 100.0 * lpips(mr, mx, per_image=True))
    assert torch.allclose(loss, expected, rtol=1e-4), (loss, expected)
    assert torch.allclose(masked_mse(img, x, mask), (mr - mx).pow(2).mean((1, 2, 3)))
    # logcosh stays finite where cosh overflows float32: log cosh(255) = 255 − log 2
    big = logcosh_pixel_loss(torch.ones(1, 3, 4, 4), -torch.ones(1, 3, 4, 4))
    assert big.item() == pytest.approx(255 - math.log(2), rel=1e-6)
    assert torch.allclose(msssim_loss(x, x, betas=betas), torch.zeros(2), atol=1e-5)
    assert [msssim_min_size(b) for b in ((0.5, 0.5), (0.4, 0.3, 0.3), MSSSIM_BETAS)] == [12, 44, 176]
    with pytest.raises(ValueError, match="msssim_lambda > 0 with 5 msssim_betas needs targets of at least"):
        OptimizationInversion(g, x, msssim_lambda=1.0, w_stats=stats)


def test_discriminator_term_and_frozen_d(g, stats):
    torch.manual_seed(0)
    d = Discriminator(32, channel_max=32)
    before = {k: v.clone() for k, v in d.state_dict().items()}
    x = targets(g, 2)
    module = OptimizationInversion(g, x, mse_lambda=0.0, discriminator_lambda=0.5, discriminator=d, steps=5,
                                   lr=0.05, w_stats=stats)
    loss, _, img = loss_now(module)
    with torch.no_grad():
        expected = 0.5 * F.softplus(-d(img)).flatten()
    assert torch.allclose(loss, expected, rtol=1e-6)
    fit(module)
    assert module.curves[-1].sum() < module.curves[0].sum()  # the codes move toward what D calls real
    assert all(torch.equal(v, d.state_dict()[k]) for k, v in before.items())
    assert not any(p.requires_grad for p in d.parameters()) and not d.training
    with pytest.raises(ValueError, match="discriminator_lambda > 0 needs a discriminator network"):
        OptimizationInversion(g, x, discriminator_lambda=0.5, w_stats=stats)


def test_stylegan_encoder_preset_names_real_options_with_official_defaults():
    preset = OmegaConf.merge(OmegaConf.load(CONF / "projector.yaml"), OmegaConf.load(CONF / "stylegan_encoder.yaml"))
    params = set(inspect.signature(OptimizationInversion.__init__).parameters)
    keys = set(preset) - {"_target_", "_partial_", "defaults"}
    assert keys <= params, keys - params
    official = dict(steps=100, lr=0.25, lr_decay_rate=0.9, lr_decay_every=0.04, logcosh_lambda=1.5,
                    msssim_lambda=200.0, lpips_lambda=100.0, vgg_lambda=0.4, l1_lambda=0.5, plateau_threshold=0.5,
                    plateau_patience=10, feature_resize=256, schedule="exponential", latent_space="w+",
                    tile_dlatents=False, mse_lambda=0.0)
    assert {k: preset[k] for k in official} == official
    assert list(preset.vgg.layers) == ["conv3_3"]
    edit = OmegaConf.load(CONF / "image2stylegan_pp_edit.yaml")
    assert edit._target_ == "ganinv.methods.image2stylegan_pp.Image2StyleGANpp"
