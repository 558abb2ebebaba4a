"""ganinv.evaluate: per-image values equal direct metric calls, summary.md equals numpy, invert.py
folders, one-line errors."""
import csv
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ganinv.editing.interfacegan import Direction
from ganinv.evaluate import evaluate
from ganinv.losses import IDLoss, LPIPSLoss
from ganinv.metrics import (
    DistributionMetrics,
    id_similarity,
    latent_editing_consistency,
    lec_distances,
    lpips_distance,
    mse,
    psnr,
    shift_edit,
    ssim,
)
from ganinv.nets.irse import Backbone
from ganinv.outputs import COLUMNS

ROOT = Path(__file__).resolve().parents[1]


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _folders(tmp_path):
    """originals a.png, sub/b.jpg, c.png, only_gt.png; reconstructions a.png (48 px: resized), sub/b.png,
    c.png (identical), extra.png (no original)."""
    rng = np.random.default_rng(0)
    gt, rec = tmp_path / "gt", tmp_path / "rec"
    images = {k: rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for k in ("a", "sub/b", "c", "only_gt")}
    for key, img in images.items():
        _save(gt / f"{key}{'.jpg' if key == 'sub/b' else '.png'}", img)
    noisy = lambda img: np.clip(img.astype(int) + rng.integers(-30, 31, img.shape), 0, 255).astype(np.uint8)  # noqa: E731
    _save(rec / "a.png", np.array(Image.fromarray(noisy(images["a"])).resize((48, 48))))
    _save(rec / "sub/b.png", noisy(images["sub/b"]))
    _save(rec / "c.png", images["c"])
    _save(rec / "extra.png", images["a"])
    return gt, rec


def _load(path):
    img = Image.open(path).convert("RGB").resize((256, 256), Image.BILINEAR)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 127.5 - 1


def _summary(path):
    """summary.md -> {metric: (mean, std or None, n)}."""
    out = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 3 and cells[0] not in ("metric", "---"):
            mean, _, std = cells[1].partition(" ± ")
            out[cells[0]] = (float(mean), float(std) if std else None, int(cells[2]))
    return out


def test_values_equal_direct_calls_and_summary_equals_numpy(tmp_path):
    torch.manual_seed(0)
    gt, rec = _folders(tmp_path)
    lpips = LPIPSLoss(net="alex", pnet_rand=True)
    id_loss = IDLoss(backbone=Backbone(112, 50, "ir_se", drop_ratio=0.6, affine=True))
    feature = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten())
    feature.num_features = 48
    rows, summary = evaluate(rec, gt, tmp_path / "out", lpips=lpips, id_loss=id_loss,
                             distribution=DistributionMetrics(feature=feature, kid_subset_size=3))
    assert [r["image"] for r in rows] == ["a", "c", "sub/b"]
    expected = DistributionMetrics(feature=feature, kid_subset_size=3)
    for row in rows:
        y_hat, y = _load(rec / f"{row['image']}.png"), _load(next(gt.glob(f"{row['image']}.*")))
        direct = {"mse": mse(y_hat, y), "psnr": psnr(y_hat, y), "ssim": ssim(y_hat, y),
                  "lpips": lpips_distance(y_hat, y, lpips), "id": id_similarity(y_hat, y, id_loss)}
        for name, value in direct.items():
            assert row[name] == pytest.approx(float(value), abs=1e-6, rel=1e-6), (row["image"], name)
        expected.update(y, real=True)
        expected.update(y_hat, real=False)
    assert rows[1]["mse"] == 0 and rows[1]["psnr"] == float("inf") and rows[0]["mse"] > 0.01
    with open(tmp_path / "out" / "metrics.csv") as f:
        written = list(csv.DictReader(f))
    assert [w["image"] for w in written] == ["a", "c", "sub/b"]
    table = _summary(tmp_path / "out" / "summary.md")
    for name in ("mse", "ssim", "lpips", "id"):
        column = np.array([float(w[name]) for w in written])
        np.testing.assert_allclose(column, [r[name] for r in rows], rtol=1e-15)
        mean, std, n = table[name]
        assert (mean, std, n) == (pytest.approx(np.mean(column), rel=1e-8), pytest.approx(np.std(column), rel=1e-8), 3)
    assert table["psnr"][0] == float("inf")
    assert set(table) == {"mse", "psnr", "ssim", "lpips", "id", "fid", "kid_mean", "kid_std"}
    for name, value in expected.compute().items():
        # KID draws its subsets with torch.randperm: same set of 3 here, float32 sums in another order
        assert table[name][0] == pytest.approx(value, rel=1e-6 if name == "fid" else 1e-4, abs=1e-6), name


def test_invert_output_folder(tmp_path):
    gt, rec = _folders(tmp_path)
    out = tmp_path / "inverted"
    for key in ("a", "c"):
        _save(out / "reconstructions" / f"{key}.png", np.array(Image.open(rec / f"{key}.png").resize((40, 40))))
    _save(out / "grid.png", np.zeros((8, 8, 3), np.uint8))  # not a reconstruction
    lines = [",".join(COLUMNS), "a,0.1,20,0.5,,1.25,", "c,0.0,inf,1.0,,0.75,"]
    (out / "metrics.csv").write_text("\n".join(lines) + "\n")
    rows, summary = evaluate(out, gt, size=0)
    assert [(r["image"], r["seconds"]) for r in rows] == [("a", 1.25), ("c", 0.75)]
    assert summary["seconds"] == (1.0, 0.25, 2)
    assert rows[1]["mse"] == 0.0
    assert (out / "evaluation" / "metrics.csv").is_file() and (out / "metrics.csv").read_text().count("\n") == 3


def _cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "ganinv.evaluate", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_writes_outputs_and_one_line_errors(tmp_path):
    gt, rec = _folders(tmp_path)
    done = _cli(rec, gt, "--output", tmp_path / "cli", "--lpips-random")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("3 pairs: mse ")
    assert set(_summary(tmp_path / "cli" / "summary.md")) == {"mse", "psnr", "ssim", "lpips"}
    missing = _cli(tmp_path / "nope", gt)
    assert missing.returncode == 2
    expected = f"ganinv.evaluate: reconstructions folder not found: {tmp_path / 'nope'}"
    assert missing.stderr.strip().splitlines() == [expected]
    (tmp_path / "empty").mkdir()
    none = _cli(tmp_path / "empty", gt, "--lpips-random")
    assert none.returncode == 2
    lines = none.stderr.strip().splitlines()
    assert len(lines) == 1 and "no matching pairs" in lines[0] and str(tmp_path / "empty") in lines[0]


class _ToyInverter:
    """encode: pool to 4x4 -> tanh(linear) codes [B, 4, 8]; decode: codes -> 16 px images (tanh)."""

    def __init__(self):
        g = torch.Generator().manual_seed(3)
        self.enc, self.dec = torch.randn(48, 32, generator=g) / 7, torch.randn(32, 768, generator=g) / 6
        self.generator = SimpleNamespace(n_latent=4, style_dim=8)

    def encode(self, x):
        return torch.tanh(F.adaptive_avg_pool2d(x, 4).flatten(1) @ self.enc).view(-1, 4, 8)

    def decode(self, ws, resize=False):
        assert resize  # e4e's LEC decodes with face_pool
        return torch.tanh(ws.flatten(1) @ self.dec).view(-1, 3, 16, 16)


def test_lec_column_and_e4e_score(tmp_path):
    gt, rec = _folders(tmp_path)
    inv, vector = _ToyInverter(), torch.randn(1, 8, generator=torch.Generator().manual_seed(4))
    rows, summary = evaluate(rec, gt, tmp_path / "out", lec=(inv, Direction(vector, layers=[1, 2]), 2.0))
    originals = torch.cat([_load(next(gt.glob(f"{r['image']}.*"))) for r in rows])
    delta = torch.zeros(4, 8)
    delta[1:3] = vector
    edit, inverse = shift_edit(delta, 2.0)
    decode = lambda w: inv.decode(w, resize=True)  # noqa: E731
    direct = lec_distances(originals, inv.encode, decode, edit, inverse)
    codes = inv.encode(originals)  # by hand: rows 0 and 3 are not edited
    by_hand = (codes - (inv.encode(inv.decode(codes + 2 * delta, resize=True)) - 2 * delta)).flatten(1).norm(dim=1)
    torch.testing.assert_close(direct, by_hand)
    np.testing.assert_allclose([r["lec"] for r in rows], direct.tolist(), rtol=1e-6)
    assert min(r["lec"] for r in rows) > 1e-3
    batches = [originals[:3]]  # 3 images: one batch of 4 or fewer, as e4e's score then is its mean
    score = latent_editing_consistency(batches, inv.encode, decode, edit, inverse)
    assert summary["lec_e4e"][0] == pytest.approx(score, rel=1e-6)
    assert _summary(tmp_path / "out" / "summary.md")["lec_e4e"] == (pytest.approx(score, rel=1e-8), None, 3)
