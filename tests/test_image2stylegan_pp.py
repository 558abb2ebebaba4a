"""Image2StyleGAN++ local editing: masked losses, inpainting, crossover, local style transfer and
activation-tensor blending, on a tiny random generator (32 px, style_dim 64) whose images G(w*)
are the ground truth.
"""
import pytest
import pytorch_lightning as pl
import torch
from conftest import noisy_generator
from PIL import Image

from ganinv.data.masks import load_mask
from ganinv.losses import LPIPSLoss, VGG16Features, vgg_feature_loss
from ganinv.losses.masked import (
    gram_style_loss,
    logcosh_pixel_loss,
    masked_mse,
    masked_vgg_loss,
    msssim_loss,
    resize_mask,
)
from ganinv.methods.image2stylegan_pp import (
    Image2StyleGANpp,
    crossover,
    feature_blend,
    inpaint,
    state_modules,
    style_transfer,
)
from ganinv.methods.optimization import OptimizationInversion
from ganinv.methods.targets import w_statistics
from ganinv.nets.stylegan2 import Generator

pytestmark = pytest.mark.usefixtures("module_one_thread")


@pytest.fixture(scope="module")
def g():
    return noisy_generator(latent_avg=False)


@pytest.fixture(scope="module")
def stats(g):
    return w_statistics(g, 2000)


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)  # random features, the same whatever ran before
    return VGG16Features(layers=("conv1_2", "conv2_2"), pretrained=False)


def codes(g, n, seed):
    with torch.no_grad():
        return g.broadcast(g.mapping(torch.randn(n, g.style_dim, generator=torch.Generator().manual_seed(seed))))


def images(g, n, seed=1):
    with torch.no_grad():
        return g.synthesis(codes(g, n, seed))


def trainer():
    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False)


def region_mse(a, b, m):
    """MSE of a against b over the pixels where the binary mask m is 1, per image."""
    return ((a - b).pow(2) * m).sum((1, 2, 3)) / (3 * m.sum((1, 2, 3)))


def left_half(size=32):
    m = torch.zeros(1, 1, size, size)
    m[..., : size // 2] = 1
    return m


def test_masked_losses_give_exactly_zero_gradient_outside_the_mask(vgg):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32).mul(2).sub(1).requires_grad_()
    y = torch.rand(2, 3, 32, 32).mul(2).sub(1)
    mask = torch.zeros(2, 1, 16, 16)  # any size: resized to the images
    mask[:, :, 4:12, 2:10] = 1
    up = (resize_mask(mask, (32, 32)) > 0).float()  # where the resized mask counts at all
    assert 0.2 < up.mean() < 0.4  # (8 x 8 of 16 x 16, plus the bilinear border)
    lpips = LPIPSLoss(net="alex", pnet_rand=True)
    losses = {
        "mse": lambda: masked_mse(x, y, mask),
        "vgg": lambda: masked_vgg_loss(vgg, x, y, mask),
        "logcosh": lambda: logcosh_pixel_loss(x, y, mask),
        "msssim": lambda: msssim_loss(x, y, mask, betas=(0.5, 0.5), kernel_size=7),
        "style": lambda: gram_style_loss(vgg, x, y[:1], mask),
    }
    for name, loss in losses.items():
        (grad,) = torch.autograd.grad(loss().sum(), x)
        assert torch.equal(grad * (1 - up), torch.zeros_like(grad)), name  # exactly zero outside
        assert (grad * up).abs().sum() > 0, name
    # the module's whole image loss (MSE + LPIPS + VGG + logcosh + MS-SSIM) with a mask
    g = Generator(32, 64, n_mlp=2, channel_max=32).eval()
    module = OptimizationInversion(g, y, mask=mask, lpips_lambda=1.0, lpips=lpips, vgg_lambda=1.0, vgg=vgg,
                                   logcosh_lambda=1.0, msssim_lambda=1.0, msssim_betas=(0.5, 0.5),
                                   w_stats=(torch.zeros(64), 1.0), steps=1)
    img = x.detach().clone().requires_grad_()
    loss, _ = module.image_losses(torch.arange(2), img, None, noise_phase=False)
    (grad,) = torch.autograd.grad(loss.sum(), img)
    assert torch.equal(grad * (1 - up), torch.zeros_like(grad))
    # an all-one mask is the unmasked loss
    ones = torch.ones(1, 1, 32, 32)
    assert torch.allclose(masked_mse(x, y, ones), (x - y).pow(2).mean((1, 2, 3)))
    assert torch.allclose(masked_vgg_loss(vgg, x, y, ones), vgg_feature_loss(vgg, x, y, per_image=True))


def test_load_mask_any_size_and_one_line_errors(tmp_path):
    arr = torch.zeros(48, 64, dtype=torch.uint8)
    arr[:, :32] = 255  # left half white, 64 wide x 48 tall: centre crop keeps columns 8 … 55
    Image.fromarray(arr.numpy(), "L").save(tmp_path / "m.png")
    m = load_mask(tmp_path / "m.png", 16)
    assert m.shape == (1, 1, 16, 16) and m.dtype == torch.float32
    assert m.min() >= 0 and m.max() <= 1
    assert torch.equal(m[..., :7], torch.ones(1, 1, 16, 7))  # 24 of 48 cropped columns are white
    assert torch.equal(m[..., 9:], torch.zeros(1, 1, 16, 7))
    assert m.mean().item() == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_mask(tmp_path / "missing.png", 16)
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ValueError, match="bad.png: not a recognised image format"):
        load_mask(tmp_path / "bad.png", 16)
    with pytest.raises(ValueError, match="size must be a positive int"):
        load_mask(tmp_path / "m.png", 0)


def test_inpainting_fills_the_hole_better_than_an_unmasked_fit(g, stats):
    x = images(g, 2)
    hole = torch.zeros(1, 1, 32, 32)
    hole[..., 8:24, 8:24] = 1
    holed = x * (1 - hole)  # the hole is grey (0)
    kw = dict(latent_space="w+", steps=100, lr=0.05, w_stats=stats)
    result = inpaint(g, holed, hole, trainer=trainer(), **kw)
    plain = OptimizationInversion(g, holed, **kw)
    trainer().fit(plain)
    filled, unmasked = region_mse(result["images"], x, hole), region_mse(plain.result["images"], x, hole)
    # measured: filled [0.43, 0.14], unmasked [6.7, 0.67] (grey itself: [8.5, 1.08])
    assert (filled < 0.3 * unmasked).all(), (filled, unmasked)
    known = 1 - hole
    assert torch.equal(result["composite"] * known, holed * known)
    assert torch.equal(result["composite"] * hole, result["images"] * hole)


def test_crossover_matches_each_source_in_its_region(g, stats):
    x1, x2 = images(g, 2, seed=1), images(g, 2, seed=5)
    m = left_half()
    out = crossover(g, x1, x2, m, trainer=trainer(), latent_space="w+", steps=100, lr=0.05, w_stats=stats)["images"]
    in1, in1_other = region_mse(out, x1, m), region_mse(out, x2, m)
    in2, in2_other = region_mse(out, x2, 1 - m), region_mse(out, x1, 1 - m)
    # measured: in M 0.27 / 0.14 to x1 vs 7.9 / 2.5 to x2; outside 0.24 / 0.17 to x2 vs 6.1 / 1.5 to x1
    assert (in1 < 0.2 * in1_other).all(), (in1, in1_other)
    assert (in2 < 0.2 * in2_other).all(), (in2, in2_other)


def test_local_style_term_lowers_the_gram_distance_in_its_region(g, stats, vgg):
    content, style = images(g, 1, seed=1), images(g, 1, seed=9)
    m = left_half()  # content on the left, style on the right (style_mask defaults to 1 − mask)
    kw = dict(latent_space="w+", steps=60, lr=0.05, w_stats=stats, style_vgg=vgg, trainer=trainer())
    plain = style_transfer(g, content, style, m, 0.0, **kw)["images"]
    kw["trainer"] = trainer()
    styled = style_transfer(g, content, style, m, 100.0, **kw)["images"]
    before, after = gram_style_loss(vgg, plain, style, 1 - m), gram_style_loss(vgg, styled, style, 1 - m)
    assert after < 0.05 * before, (after, before)  # measured 8.7e-5 vs 1.24e-2
    assert region_mse(styled, content, m) < 0.5, region_mse(styled, content, m)  # measured 0.23


def test_feature_blend_is_a_at_zero_b_state_at_one_and_local(g):
    ws_a, ws_b = codes(g, 2, 1), codes(g, 2, 2)
    with torch.no_grad():
        image_a = g.synthesis(ws_a)
    zeros, ones = torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8)
    for layer in range(g.num_layers):
        assert torch.equal(feature_blend(g, ws_a, ws_b, zeros, layer), image_a), layer
        mixed = torch.cat([ws_b[:, : layer + 1], ws_a[:, layer + 1:]], 1)
        with torch.no_grad():
            expected = g.synthesis(mixed)
        assert torch.allclose(feature_blend(g, ws_a, ws_b, ones, layer), expected, atol=1e-5), layer
    # the tensor entering layer 4 after blending at layer 3 is B's layer-3 feature map exactly
    conv, _ = state_modules(g, 3)
    seen = {}

    def keep(name, value):
        seen[name] = value  # returns None: the hooks only look

    handle = conv.register_forward_hook(lambda mod, inputs, out: keep("b", out))
    with torch.no_grad():
        g.synthesis(ws_b)
    handle.remove()
    handle = g.convs[3].register_forward_pre_hook(lambda mod, inputs: keep("blended", inputs[0]))
    feature_blend(g, ws_a, ws_b, ones, 3)
    handle.remove()
    assert seen["b"].shape == (2, 32, 16, 16)
    assert torch.equal(seen["blended"], seen["b"])
    assert all(not m._forward_hooks for m in g.modules())  # feature_blend removed its hooks
    # locality: at the first 32 px conv (layer 5) only a few pixels past the left-half mask change
    out = feature_blend(g, ws_a, ws_b, left_half(), 5)
    assert torch.allclose(out[..., 20:], image_a[..., 20:], atol=1e-6)
    assert (out[..., :12] - image_a[..., :12]).abs().mean() > 0.05
    with pytest.raises(ValueError, match=r"layer must be an int in \[0, 6\]"):
        feature_blend(g, ws_a, ws_b, ones, 7)


def test_options_and_hparams(g, stats, vgg):
    x = images(g, 1)
    with pytest.raises(ValueError, match="targets2 needs a mask"):
        Image2StyleGANpp(g, x, targets2=x, w_stats=stats)
    with pytest.raises(ValueError, match="style_lambda > 0 needs a style image"):
        Image2StyleGANpp(g, x, style_lambda=1.0, w_stats=stats)
    with pytest.raises(ValueError, match=r"mask must be a tensor \[N or 1, 1, H, W\]"):
        OptimizationInversion(g, x, mask=torch.ones(1, 3, 32, 32), w_stats=stats)
    with pytest.raises(ValueError, match=r"mask values must lie in \[0, 1\]"):
        OptimizationInversion(g, x, mask=torch.full((1, 1, 8, 8), 2.0), w_stats=stats)
    module = Image2StyleGANpp(g, x, targets2=images(g, 1, 3), mask=left_half(8), style=images(g, 1, 4),
                              style_lambda=1.0, style_vgg=vgg, w_stats=stats)
    assert module.mask.shape == (1, 1, 32, 32)  # resized to the targets
    assert torch.equal(module.style_mask, 1 - module.mask)
    assert not any(torch.is_tensor(v) for v in module.hparams.values())
    assert {"targets2", "style", "style_mask", "style_vgg", "mask"}.isdisjoint(module.hparams)
    assert module.hparams.style_lambda == 1.0
