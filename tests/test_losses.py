"""Losses and regularisers: hand-checkable values, frozen perceptual nets, no downloads."""
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

from ganinv.losses import (
    VGG16_LAYERS,
    LPIPSLoss,
    MocoLoss,
    VGG16Features,
    d_logistic_loss,
    delta_regularization,
    g_nonsaturating_loss,
    lazy_r1,
    noise_normalize_,
    noise_regularize,
    r1_penalty,
    require_file,
    vgg_feature_loss,
    w_norm,
)


@pytest.fixture
def hub_dir(tmp_path):
    """An empty torch hub cache, restored afterwards."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    yield tmp_path
    torch.hub.set_dir(old)


@pytest.fixture(scope="module")
def lpips_alex():
    return LPIPSLoss(net="alex", pnet_rand=True)


def images(b=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g) * 2 - 1


# ---------------------------------------------------------------- regularisers

def test_w_norm_known_batch():
    avg = torch.randn(4)
    ws = avg.expand(2, 3, 4).clone()
    ws[0] += 1.0  # ‖·‖_F = sqrt(3·4)
    assert w_norm(ws, avg).item() == pytest.approx(math.sqrt(12) / 2, rel=1e-6)
    assert w_norm(torch.ones(2, 3, 4)).item() == pytest.approx(math.sqrt(12), rel=1e-6)
    assert w_norm(ws, avg.expand(3, 4)).item() == pytest.approx(math.sqrt(12) / 2, rel=1e-6)


def test_delta_regularization_known_offsets():
    n, d = 6, 8
    w0 = torch.randn(3, 1, d)
    offsets = torch.arange(n, dtype=torch.float32).view(1, n, 1) * F.one_hot(torch.tensor(2), d)
    ws = w0 + offsets  # w_i = w_0 + i·e_2, so ‖w_i − w_0‖ = i for every sample
    # the first 4 rows: deltas 1, 2, 3 (the official 1..stage at progressive stage 3)
    assert delta_regularization(ws, 4).item() == pytest.approx(1 + 2 + 3)
    assert delta_regularization(ws, "all").item() == pytest.approx(sum(range(n)))
    assert delta_regularization(ws, 1).item() == 0
    assert delta_regularization(ws + torch.randn(d), 4).item() == pytest.approx(6, rel=1e-5)
    ws_l1 = w0 + offsets + torch.arange(n).view(1, n, 1) * F.one_hot(torch.tensor(5), d)
    assert delta_regularization(ws_l1, 3, p=1).item() == pytest.approx(2 * (1 + 2))
    with pytest.raises(ValueError, match="stage"):
        delta_regularization(ws, n + 1)


def test_noise_regularize_constant_and_white():
    c = 0.5
    # 16x16: levels 16 and 8, each (c²)² twice -> 4c⁴; a 4x4 map has one level -> 2c⁴
    assert noise_regularize([torch.full((1, 1, 16, 16), c)]).item() == pytest.approx(4 * c**4)
    assert noise_regularize([torch.full((1, 1, 4, 4), c)]).item() == pytest.approx(2 * c**4)
    assert noise_regularize([torch.randn(1, 1, 64, 64), torch.randn(1, 1, 32, 32)]).item() < 2e-2
    # a map correlated with its shifted copy is penalised
    smooth = F.interpolate(torch.randn(1, 1, 8, 8), size=64, mode="bilinear")
    assert noise_regularize([smooth / smooth.std()]).item() > 0.5


def test_noise_regularize_per_image():
    noise = torch.stack([torch.full((1, 16, 16), 0.5), torch.full((1, 16, 16), 1.0)])
    per = noise_regularize([noise], per_image=True)
    assert per.shape == (2,) and torch.allclose(per, torch.tensor([4 * 0.5**4, 4.0]))
    # batch mean couples images as in rosinality: mean c² = 0.625
    assert noise_regularize([noise]).item() == pytest.approx(4 * 0.625**2)


def test_noise_normalize_in_place():
    noise = (torch.randn(2, 1, 8, 8) * 3 + 1).requires_grad_()
    ptr = noise.data_ptr()
    noise_normalize_([noise])
    assert noise.data_ptr() == ptr and noise.requires_grad
    assert noise.mean().abs().item() < 1e-6 and noise.std().item() == pytest.approx(1, rel=1e-5)
    skewed = torch.cat([torch.randn(1, 1, 8, 8), 5 * torch.randn(1, 1, 8, 8) + 2])
    noise_normalize_([skewed], per_image=True)
    assert torch.allclose(skewed.mean((1, 2, 3)), torch.zeros(2), atol=1e-6)
    assert torch.allclose(skewed.std((1, 2, 3)), torch.ones(2), atol=1e-5)


# ---------------------------------------------------------------- adversarial

def test_logistic_losses_at_zero_logits():
    z = torch.zeros(4, 1)
    assert d_logistic_loss(z, z).item() == pytest.approx(2 * math.log(2))
    assert g_nonsaturating_loss(z).item() == pytest.approx(math.log(2))
    assert d_logistic_loss(torch.full((4, 1), 30.0), torch.full((4, 1), -30.0)).item() < 1e-12
    assert g_nonsaturating_loss(torch.full((2, 1), -3.0)).item() == pytest.approx(math.log1p(math.exp(3)))


@pytest.mark.parametrize("shape", [(5, 512), (3, 3, 8, 8)])
def test_r1_of_linear_discriminator(shape):
    a = torch.randn(shape[1:], requires_grad=True)  # D(x) = <a, x>, ∇_x D = a
    x = torch.randn(shape, requires_grad=True)
    logits = (x * a).flatten(1).sum(1, keepdim=True)
    r1 = r1_penalty(logits, x)
    assert r1.item() == pytest.approx(a.pow(2).sum().item(), rel=1e-5)
    lazy = lazy_r1(logits, x, gamma=10, interval=16)
    assert lazy.shape == () and lazy.item() == pytest.approx(5 * 16 * r1.item(), rel=1e-5)
    (grad_a,) = torch.autograd.grad(r1, a)  # d‖a‖²/da: the penalty trains D
    assert torch.allclose(grad_a, 2 * a.detach())


def test_r1_needs_grad_inputs():
    with pytest.raises(ValueError, match="requires_grad"):
        r1_penalty(torch.zeros(2, 1), torch.zeros(2, 512))


# ---------------------------------------------------------------- weights

def test_require_file(tmp_path):
    (tmp_path / "a.pt").write_bytes(b"x")
    assert require_file(tmp_path / "a.pt", "A", "here") == tmp_path / "a.pt"
    with pytest.raises(FileNotFoundError) as err:
        require_file(tmp_path / "b.pt", "Foo", "bar")
    assert str(err.value) == f"Foo weights not found: {tmp_path / 'b.pt'}. Put the file there (bar)."


# ---------------------------------------------------------------- LPIPS

def test_lpips_zero_for_identical_positive_otherwise(lpips_alex):
    x, y = images(seed=0), images(seed=1)
    assert lpips_alex(x, x).item() == pytest.approx(0, abs=1e-7)
    d = lpips_alex(x, y, per_image=True)
    assert d.shape == (2,) and (d > 0).all()
    assert lpips_alex(x, y).item() == pytest.approx(d.mean().item(), rel=1e-6)


def test_lpips_per_image_independent_of_batch(lpips_alex):
    x, y = images(3, seed=2), images(3, seed=3)
    together = lpips_alex(x, y, per_image=True)
    alone = torch.cat([lpips_alex(x[i:i + 1], y[i:i + 1], per_image=True) for i in range(3)])
    assert torch.allclose(together, alone, rtol=1e-5, atol=1e-7)


def test_lpips_frozen_but_differentiable(lpips_alex):
    assert not any(p.requires_grad for p in lpips_alex.parameters())
    lpips_alex.train()
    assert not any(m.training for m in lpips_alex.modules())
    x = images(seed=4).requires_grad_()
    lpips_alex(x, images(seed=5)).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in lpips_alex.parameters())


def test_lpips_average_pools_large_inputs():
    loss = LPIPSLoss(resize=32, pnet_rand=True)
    full = LPIPSLoss(resize=None, pnet_rand=True)
    full.load_state_dict(loss.state_dict())
    x, y = images(size=64, seed=6), images(size=64, seed=7)
    expected = full(F.avg_pool2d(x, 2), F.avg_pool2d(y, 2))
    assert loss(x, y).item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss(x[..., :32, :32], y[..., :32, :32]).item() == pytest.approx(
        full(x[..., :32, :32], y[..., :32, :32]).item(), rel=1e-5)
    with pytest.raises(ValueError, match="LPIPSLoss"):
        loss(x, y[:, :, :32])


def test_lpips_missing_trunk_weights_error(hub_dir):
    with pytest.raises(ValueError, match="net must be one of"):
        LPIPSLoss(net="resnet")
    with pytest.raises(FileNotFoundError) as err:
        LPIPSLoss(net="alex")
    msg = str(err.value)
    assert "alexnet-owt-7be5be79.pth" in msg and str(hub_dir / "checkpoints") in msg and "\n" not in msg


def test_lpips_loads_trunk_from_hub_cache(hub_dir):
    trunk = torchvision.models.squeezenet1_1()
    (hub_dir / "checkpoints").mkdir()
    torch.save(trunk.state_dict(), hub_dir / "checkpoints" / "squeezenet1_1-b8a52dc0.pth")
    loss = LPIPSLoss(net="squeeze")
    assert torch.equal(loss.model.net.slice1[0].weight, trunk.features[0].weight)


# ---------------------------------------------------------------- VGG16

def test_vgg_layer_shapes_and_zero_loss():
    vgg = VGG16Features(layers=tuple(VGG16_LAYERS), pretrained=False)
    x = images(1, size=32, seed=8)
    feats = vgg(x)
    assert list(feats) == list(VGG16_LAYERS)
    for name, f in feats.items():
        block = int(name[4])
        side = 32 >> (block - 1)
        assert f.shape == (1, [64, 128, 256, 512, 512][block - 1], side, side), name
        assert (f >= 0).all()  # taken after the ReLU
    assert vgg_feature_loss(vgg, x, x).item() == 0


def test_vgg_feature_loss_value_and_gradient():
    layers = ("conv1_1", "conv1_2", "conv3_2", "conv4_2")  # Image2StyleGAN
    vgg = VGG16Features(layers=layers, pretrained=False)
    assert len(vgg.features) == VGG16_LAYERS["conv4_2"] + 2
    x = images(2, size=32, seed=9).requires_grad_()
    y = images(2, size=32, seed=10)
    fx, fy = vgg(x), vgg(y)
    expected = sum(((fx[n] - fy[n]) ** 2).mean() for n in layers)
    per = vgg_feature_loss(vgg, x, y, per_image=True)
    assert per.shape == (2,) and per.mean().item() == pytest.approx(expected.item(), rel=1e-5)
    vgg_feature_loss(vgg, x, y).backward()
    assert x.grad.abs().sum() > 0 and all(p.grad is None for p in vgg.parameters())


def test_vgg_missing_weights_error(hub_dir):
    with pytest.raises(FileNotFoundError) as err:
        VGG16Features()
    msg = str(err.value)
    assert "vgg16-397923af.pth" in msg and str(hub_dir / "checkpoints") in msg and "\n" not in msg
    with pytest.raises(FileNotFoundError, match="IDInvert VGG16 weights not found"):
        VGG16Features(weights_path=hub_dir / "vgg16.pth")


def test_vgg_torchvision_weights_and_preprocessing(hub_dir):
    w, b = torch.randn(64, 3, 3, 3), torch.randn(64)
    (hub_dir / "checkpoints").mkdir()
    torch.save({"features.0.weight": w, "features.0.bias": b}, hub_dir / "checkpoints" / "vgg16-397923af.pth")
    vgg = VGG16Features(layers=("conv1_1",))
    x = images(1, size=16, seed=11)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    ref = F.relu(F.conv2d(((x + 1) / 2 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1), w, b, padding=1))
    assert torch.allclose(vgg(x)["conv1_1"], ref, atol=1e-5)


def test_vgg_idinvert_weights_and_caffe_preprocessing(tmp_path):
    w, b = torch.randn(64, 3, 3, 3) * 0.01, torch.randn(64)
    torch.save({"layer0.weight": w, "layer0.bias": b}, tmp_path / "vgg16.pth")
    vgg = VGG16Features(layers=("conv1_1",), weights_path=tmp_path / "vgg16.pth")
    x = images(1, size=16, seed=12)
    bgr = (x + 1) * 127.5
    bgr = bgr[:, [2, 1, 0]] - torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)
    assert torch.allclose(vgg(x)["conv1_1"], F.relu(F.conv2d(bgr, w, b, padding=1)), atol=1e-4)
    with pytest.raises(ValueError, match="missing layer2.weight"):
        VGG16Features(layers=("conv1_2",), weights_path=tmp_path / "vgg16.pth")


def test_vgg_rejects_unknown_layer():
    with pytest.raises(ValueError, match="conv6_1"):
        VGG16Features(layers=("conv6_1",), pretrained=False)


# ---------------------------------------------------------------- MoCo

def test_moco_loss_loads_query_encoder_and_matches_reference(tmp_path):
    ref = torchvision.models.resnet50().eval()
    state = {f"module.encoder_q.{k}": v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    state["module.encoder_q.fc.0.weight"] = torch.zeros(2048, 2048)  # MoCo-v2 MLP head: dropped
    state["module.encoder_k.conv1.weight"] = torch.zeros(1)  # key encoder: ignored
    torch.save({"epoch": 800, "arch": "resnet50", "state_dict": state}, tmp_path / "moco.pt")
    moco = MocoLoss(tmp_path / "moco.pt")
    assert isinstance(moco.model.fc, torch.nn.Identity)
    ref.fc = torch.nn.Identity()
    ours = moco.model.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in ref.state_dict().items())

    # x = y makes diff_views 1; 224 px ResNet-50 forwards are the cost, so one image each
    y = images(1, size=64, seed=13)
    y_hat = (y + 0.2 * images(1, size=64, seed=14)).requires_grad_()
    with torch.no_grad():
        fy, fyh = F.normalize(ref(F.interpolate(torch.cat([y, y_hat]), size=224)), dim=1)
    cos = (fy @ fyh).item()
    loss, improvement, logs = moco(y_hat, y, y)
    assert loss.item() == pytest.approx(1 - cos, abs=1e-5)
    assert improvement == pytest.approx(cos - 1, abs=1e-5)
    assert logs[0] == pytest.approx({"diff_target": cos, "diff_input": cos, "diff_views": 1.0}, abs=1e-5)
    loss.backward()
    assert y_hat.grad.abs().sum() > 0 and all(p.grad is None for p in moco.parameters())


def test_moco_missing_or_wrong_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="MoCo-v2 ResNet-50 weights not found"):
        MocoLoss(tmp_path / "moco.pt")
    bad = {"module.encoder_q.conv1.weight": torch.zeros(64, 3, 7, 7)}
    torch.save({"state_dict": bad}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt: no MoCo ResNet-50 query encoder"):
        MocoLoss(tmp_path / "bad.pt")
