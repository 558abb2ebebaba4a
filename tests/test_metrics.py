"""Metrics on hand-checkable inputs: image metrics, FID/KID, LEC, the procedural editability score."""
import math

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn

import ganinv.metrics.fid as fid_module
from ganinv.data.procedural import FACTORS, render_batch
from ganinv.losses import IDLoss, LPIPSLoss
from ganinv.metrics import (
    INCEPTION_WEIGHTS,
    DistributionMetrics,
    compute_image_metrics,
    editability_score,
    filter_outliers,
    latent_editing_consistency,
    lec_distances,
    load_regressor,
    mse,
    psnr,
    save_regressor,
    shift_edit,
    ssim,
    train_factor_regressor,
)

# -- per-image metrics ----------------------------------------------------------------------------


def test_identical_images():
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    assert torch.equal(mse(x, x), torch.zeros(3))
    assert torch.isinf(psnr(x, x)).all()
    torch.testing.assert_close(ssim(x, x), torch.ones(3))


def test_constant_offset_per_image():
    y = torch.rand(2, 3, 32, 32) - 0.5  # in [-0.5, 0.5], so y + c stays in [-1, 1]
    c = torch.tensor([0.2, 0.4]).view(2, 1, 1, 1)
    y_hat = y + c
    torch.testing.assert_close(mse(y_hat, y), torch.tensor([0.04, 0.16]))  # c² on the [-1, 1] scale
    # PSNR on [0, 1]: the offset is c/2, so 10·log10(1 / (c/2)²) = 20 dB and 13.98 dB
    torch.testing.assert_close(psnr(y_hat, y), torch.tensor([20.0, 20 * math.log10(5)]))
    # each image is scored on its own
    torch.testing.assert_close(mse(y_hat[1:], y[1:]), mse(y_hat, y)[1:])


def test_ssim_of_constant_images():
    # flat images: σ = 0, so SSIM is the luminance term (2μxμy + C1) / (μx² + μy² + C1), C1 = 0.01²
    y = torch.zeros(1, 3, 24, 24)  # 0.5 in [0, 1]
    y_hat = torch.full_like(y, 0.2)  # 0.6 in [0, 1]
    expected = (2 * 0.5 * 0.6 + 1e-4) / (0.5**2 + 0.6**2 + 1e-4)
    torch.testing.assert_close(ssim(y_hat, y), torch.tensor([expected]))


def test_values_outside_range_are_clamped():
    y = torch.zeros(1, 3, 16, 16)
    torch.testing.assert_close(mse(torch.full_like(y, 3.0), y), torch.tensor([1.0]))


class _TinyFace(nn.Module):
    """Stand-in for IR-SE50: [B, 3, 112, 112] -> unit embeddings [B, 16]."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3 * 8 * 8, 16)

    def forward(self, x):
        return F.normalize(self.proj(F.adaptive_avg_pool2d(x, 8).flatten(1)), dim=1)


def test_compute_image_metrics_with_lpips_and_id():
    torch.manual_seed(0)
    lpips = LPIPSLoss(net="alex", resize=None, pnet_rand=True)
    id_loss = IDLoss(backbone=_TinyFace())
    y = torch.rand(2, 3, 64, 64) * 2 - 1
    y_hat = (y + 0.3 * torch.randn_like(y)).clamp(-1, 1)
    same = compute_image_metrics(y, y, lpips, id_loss)
    assert set(same) == {"mse", "psnr", "ssim", "lpips", "id"}
    torch.testing.assert_close(same["lpips"], torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(same["id"], torch.ones(2))

    out = compute_image_metrics(y_hat, y, lpips, id_loss)
    assert all(v.shape == (2,) for v in out.values())
    assert (out["lpips"] > 0).all()
    with torch.no_grad():
        one_by_one = torch.stack([lpips(y_hat[i:i + 1], y[i:i + 1]) for i in range(2)])
        torch.testing.assert_close(out["lpips"], one_by_one)
        expected_id = (id_loss.extract_feats(y_hat) * id_loss.extract_feats(y)).sum(1)
    torch.testing.assert_close(out["id"], expected_id)
    assert "lpips" not in compute_image_metrics(y_hat, y)


def test_image_metrics_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="mse"):
        mse(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))


# -- FID / KID ------------------------------------------------------------------------------------

class _PixelFeatures(nn.Module):
    """Features = the [0, 1] pixels of a [N, 3, 1, 2] image, so the test controls them exactly."""

    num_features = 6

    def forward(self, x):
        return x.flatten(1)


def _as_images(features):
    return (2 * features - 1).reshape(-1, 3, 1, 2)


def _frechet(a, b):
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))


def _kid(a, b):
    k = lambda x, y: (x @ y.T / x.shape[1] + 1) ** 3  # noqa: E731
    m = a.shape[0]
    kxx, kyy, kxy = k(a, a), k(b, b), k(a, b)
    return ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.sum() / m**2


def test_fid_and_kid_match_closed_form():
    gen = torch.Generator().manual_seed(0)
    mix = torch.randn(6, 6, generator=gen) * 0.03
    real = (0.5 + torch.randn(400, 6, generator=gen) @ mix).clamp(0, 1).double()
    fake = (0.45 + 1.5 * torch.randn(400, 6, generator=gen) @ mix.T).clamp(0, 1).double()
    metric = DistributionMetrics(_PixelFeatures(), kid_subsets=1, kid_subset_size=1000)
    for chunk in range(0, 400, 150):  # streamed in batches
        metric.update(_as_images(real[chunk:chunk + 150]), real=True)
        metric.update(_as_images(fake[chunk:chunk + 150]), real=False)
    out = metric.compute()
    # features pass through float32 images, so compare with what the module actually saw
    seen_real = ((_as_images(real).float() + 1) / 2).flatten(1).double().numpy()
    seen_fake = ((_as_images(fake).float() + 1) / 2).flatten(1).double().numpy()
    assert out["fid"] == pytest.approx(_frechet(seen_real, seen_fake), rel=1e-4)
    assert out["fid"] > 1e-3
    assert out["kid_mean"] == pytest.approx(_kid(seen_real, seen_fake), rel=1e-4)  # one subset of all 400

    metric.reset()
    metric.update(_as_images(real), real=True)
    metric.update(_as_images(real), real=False)
    assert abs(metric.compute()["fid"]) < 1e-6


def test_fid_missing_inception_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match=f"{INCEPTION_WEIGHTS} in {tmp_path / 'hub' / 'checkpoints'}"):
        DistributionMetrics()
    with pytest.raises(FileNotFoundError, match=f"{INCEPTION_WEIGHTS} in {tmp_path}"):
        DistributionMetrics(weights_path=tmp_path / INCEPTION_WEIGHTS)
    (tmp_path / INCEPTION_WEIGHTS).write_bytes(b"weights")
    monkeypatch.setattr(fid_module, "_torch_fidelity_available", lambda: False)
    with pytest.raises(ModuleNotFoundError, match="torch-fidelity"):
        DistributionMetrics(weights_path=tmp_path / INCEPTION_WEIGHTS)


# -- LEC ------------------------------------------------------------------------------------------

def _linear_world(scale):
    """A 'generator' that writes the code into the image and an encoder reading it back ×scale."""
    decode = lambda ws: ws.unsqueeze(1)  # noqa: E731  [B, L, D] -> "image" [B, 1, L, D]
    encode = lambda x: scale * x[:, 0]  # noqa: E731
    return encode, decode


def test_lec_zero_for_consistent_encoder():
    images = torch.randn(4, 1, 6, 8)
    direction = torch.randn(1, 8)
    edit, inverse = shift_edit(direction, 3.0)
    encode, decode = _linear_world(1.0)
    # zero up to float32 rounding of (c + 3d) − 3d
    torch.testing.assert_close(lec_distances(images, encode, decode, edit, inverse), torch.zeros(4),
                               atol=1e-5, rtol=0)
    batches = [(torch.randn(4, 1, 6, 8), None) for _ in range(3)]
    assert latent_editing_consistency(batches, encode, decode, edit, inverse) < 1e-5


def test_lec_of_inconsistent_encoder():
    images = torch.randn(4, 1, 6, 8)
    direction = torch.randn(1, 8)
    edit, inverse = shift_edit(direction, 3.0)
    encode, decode = _linear_world(0.5)
    # c = x/2; E(G(c + 3d)) − 3d = c/2 − 3d/2, so the gap is c/2 + 3d/2
    c = 0.5 * images[:, 0]
    expected = (0.5 * c + 1.5 * direction).flatten(1).norm(dim=1)
    torch.testing.assert_close(lec_distances(images, encode, decode, edit, inverse), expected)
    score = latent_editing_consistency([images[:2], images[2:]], encode, decode, edit, inverse)
    assert score == pytest.approx((expected[:2].mean() + expected[2:].mean()).item() / 2, rel=1e-6)


def test_lec_outlier_filter():
    values = [1.0] * 200 + [1e6]
    assert filter_outliers(values).tolist() == [1.0] * 200
    assert filter_outliers([1.0, 2.0, 3.0]).tolist() == [1.0, 2.0, 3.0]  # too few to drop any


# -- editability ----------------------------------------------------------------------------------

class _Oracle(nn.Module):
    """Reads the factors written into row 0 of channel 0 of a [B, 3, 1, F] image."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return x[:, 0, 0]


def test_editability_score_arithmetic():
    f = torch.full((2, 1, len(FACTORS)), 0.5)
    g = f.clone()
    yaw, eye = FACTORS.index("yaw"), FACTORS.index("eye_size")
    g[:, 0, yaw] = torch.tensor([0.9, 0.7])  # target moved by 0.4 and 0.2
    g[:, 0, eye] += 0.11  # an identity factor drifted
    g[:, 0, FACTORS.index("bg_hue")] -= 0.22  # a non-identity factor drifted
    as_image = lambda t: t.unsqueeze(1).expand(-1, 3, -1, -1)  # noqa: E731
    score = editability_score(as_image(f), as_image(g), "yaw", _Oracle())
    assert score["target_shift"] == pytest.approx(0.3)
    assert score["other_drift"] == pytest.approx((0.11 + 0.22) / (len(FACTORS) - 1))
    assert score["identity_drift"] == pytest.approx(0.11 / 8)
    with pytest.raises(ValueError, match="unknown factor"):
        editability_score(as_image(f), as_image(g), "nose", _Oracle())


def test_factor_regressor_training_and_editability(tmp_path):
    # a tiny schedule (~10 s on two cores); the default one (600 steps at 64 px) reaches MSE ~0.0035
    model, stats = train_factor_regressor(steps=80, batch=32, size=32, pool=256, refresh=2, seed=0,
                                          val_size=256)
    assert stats["baseline_mse"] == pytest.approx(1 / 12, rel=0.1)  # uniform factors
    assert stats["val_mse"] < stats["baseline_mse"] / 2

    path = save_regressor(model, tmp_path / "regressor.pt", stats)
    loaded = load_regressor(path)
    x = render_batch(torch.rand(4, len(FACTORS)), 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))

    # a real edit of the yaw factor on rendered faces: the regressor sees yaw move most
    f = torch.rand(16, len(FACTORS), generator=torch.Generator().manual_seed(1))
    f[:, FACTORS.index("yaw")] = 0.05
    g = f.clone()
    g[:, FACTORS.index("yaw")] = 0.95
    score = editability_score(render_batch(f, 48), render_batch(g, 48), "yaw", loaded)  # resized to 32
    assert score["target_shift"] > 0.3
    assert score["target_shift"] > 4 * score["other_drift"]

    data = torch.load(path, weights_only=True)
    data["factors"] = ["something_else"]
    torch.save(data, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: trained for factors"):
        load_regressor(tmp_path / "other.pt")
