"""Ground-truth editability on the procedural faces (:mod:`ganinv.data.procedural`).

Every procedural face is a known function of ``len(FACTORS)`` factors, so an edit can be scored by
what it did to them: a :class:`FactorRegressor`, trained on real rendered faces, reads the factors of
the original and the edited images, and :func:`editability_score` reports how far the target factor
moved against how far the others — and the identity factors in particular — drifted.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from ganinv.checkpoints import load_torch, save_atomic
from ganinv.data.procedural import FACTORS, ProceduralFaces, render_batch

# Who the face is (its shape and colouring), as opposed to pose (yaw), expression (mouth_curve),
# hairstyle (hair_amount) and background (bg_hue), which a face-ID network is meant to ignore.
IDENTITY_FACTORS = ("head_width", "head_height", "skin_hue", "skin_light", "hair_tone", "eye_size",
                    "eye_spacing", "mouth_width")


class FactorRegressor(nn.Module):
    """Small CNN: images [B, 3, H, W] in [-1, 1] -> factors [B, n_factors] in [0, 1].

    Inputs of another size are resampled (bilinear, antialiased) to ``size``. Stride-2 3×3 convs with
    BatchNorm halve the resolution down to 4×4 (widths ``width``·(1, 2, 4, 4, ...)), then an MLP head.
    """

    def __init__(self, n_factors=len(FACTORS), size=64, width=16):  # noqa: B008 (len of a constant tuple)
        super().__init__()
        if size < 8 or size & (size - 1):
            raise ValueError(f"FactorRegressor: size must be a power of two >= 8, got {size}")
        self.n_factors, self.size, self.width = n_factors, size, width
        layers, ch = [], 3
        for i in range(int(math.log2(size)) - 2):
            out = width * 2 ** min(i, 2)
            layers += [nn.Conv2d(ch, out, 3, 2, 1), nn.BatchNorm2d(out), nn.ReLU()]
            ch = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(ch * 16, 256), nn.ReLU(), nn.Linear(256, n_factors))

    def forward(self, x):
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, (self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return torch.sigmoid(self.head(self.features(x)))


def _render(factors, size, chunk=256):
    return torch.cat([render_batch(factors[i:i + chunk], size) for i in range(0, len(factors), chunk)])


@torch.no_grad()
def evaluate_regressor(regressor, n=512, seed=0):
    """Mean squared error of the regressor on ``n`` validation faces (the 'val' split of
    :class:`ProceduralFaces`), next to the predict-the-mean baseline: ``{'val_mse', 'baseline_mse',
    'val_mse_per_factor'}`` (floats, and a list in FACTORS order)."""
    data = ProceduralFaces(n, regressor.size, seed, "val")
    factors = torch.stack([data.factors(i) for i in range(n)])
    device = next(regressor.parameters()).device
    was_training = regressor.training
    regressor.eval()
    pred = torch.cat([regressor(_render(factors[i:i + 256], regressor.size).to(device)).cpu()
                      for i in range(0, n, 256)])
    regressor.train(was_training)
    per_factor = (pred - factors).square().mean(0)
    return {"val_mse": per_factor.mean().item(),
            "baseline_mse": (factors - factors.mean(0)).square().mean().item(),
            "val_mse_per_factor": per_factor.tolist()}


def train_factor_regressor(steps=600, batch=64, size=64, seed=0, width=16, lr=2e-3, pool=2048, refresh=4, val_size=512,
                           device=None):
    """Train a :class:`FactorRegressor` on procedural faces rendered on the fly; -> (regressor in eval
    mode, :func:`evaluate_regressor` stats).

    A pool of ``pool`` faces with uniform random factors is rendered first; every step trains on a
    random batch from it and re-renders ``refresh`` of its faces with new factors, so rendering (the
    slow part on a CPU) is spread over training and the model keeps seeing new faces. MSE loss, Adam
    with a one-cycle schedule peaking at ``lr``; validated on ``val_size`` faces. Defaults: ~1–2
    minutes on two CPU cores, validation MSE about 0.004 against 0.083 for predicting the mean.
    """
    device = torch.device(device or "cpu")
    gen = torch.Generator().manual_seed(seed)
    n_f = len(FACTORS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FactorRegressor(n_f, size, width).to(device)
    pool_f = torch.rand(pool, n_f, generator=gen)
    pool_x = _render(pool_f, size)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    for step in range(steps):
        idx = torch.randint(pool, (batch,), generator=gen)
        loss = F.mse_loss(model(pool_x[idx].to(device)), pool_f[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if refresh:
            slots = torch.arange(step * refresh, (step + 1) * refresh) % pool
            pool_f[slots] = torch.rand(refresh, n_f, generator=gen)
            pool_x[slots] = render_batch(pool_f[slots], size)
    model.eval()
    return model, evaluate_regressor(model, n=val_size, seed=seed)


def save_regressor(regressor, path, stats=None):
    """Write the regressor (and optional stats) atomically; read it back with :func:`load_regressor`."""
    return save_atomic({"state_dict": regressor.state_dict(), "n_factors": regressor.n_factors,
                        "size": regressor.size, "width": regressor.width, "factors": list(FACTORS),
                        "stats": stats or {}}, path)


def load_regressor(path):
    """A regressor saved by :func:`save_regressor` (safe loading: tensors and plain data only), in
    eval mode. Refuses one trained for a different factor list."""
    data = load_torch(path, "factor regressor")
    if not isinstance(data, dict) or "state_dict" not in data:
        raise ValueError(f"factor regressor {path}: not a file written by save_regressor")
    if list(data.get("factors", [])) != list(FACTORS):
        raise ValueError(f"factor regressor {path}: trained for factors {data.get('factors')}, "
                         f"not the current {list(FACTORS)}")
    model = FactorRegressor(data["n_factors"], data["size"], data["width"])
    model.load_state_dict(data["state_dict"])
    return model.eval()


@torch.no_grad()
def editability_score(original, edited, target, regressor):
    """Score an edit meant to change factor ``target`` (index or name in FACTORS).

    original, edited: images [B, 3, H, W] in [-1, 1] (e.g. the inversion and its edit). With the
    regressor's factor estimates f (in [0, 1]) and Δ = f(edited) − f(original):

    * ``target_shift``: mean |Δ_target| — how far the edit moved what it should;
    * ``other_drift``: mean |Δ_j| over all other factors — collateral change;
    * ``identity_drift``: mean |Δ_j| over the :data:`IDENTITY_FACTORS` other than the target.
    """
    if isinstance(target, str):
        if target not in FACTORS:
            raise ValueError(f"editability_score: unknown factor {target!r}; known: {list(FACTORS)}")
        target = FACTORS.index(target)
    if not 0 <= target < len(FACTORS):
        raise ValueError(f"editability_score: factor index {target} out of range [0, {len(FACTORS) - 1}]")
    if original.ndim != 4 or original.shape != edited.shape:
        raise ValueError(f"editability_score: expected two image batches [B, 3, H, W] of equal shape, got "
                         f"{tuple(original.shape)} and {tuple(edited.shape)}")
    was_training = regressor.training
    regressor.eval()
    device = next(regressor.parameters()).device
    delta = (regressor(edited.to(device).float()) - regressor(original.to(device).float())).abs().cpu()
    regressor.train(was_training)
    others = [j for j in range(len(FACTORS)) if j != target]
    identity = [FACTORS.index(n) for n in IDENTITY_FACTORS if FACTORS.index(n) != target]
    return {"target_shift": delta[:, target].mean().item(),
            "other_drift": delta[:, others].mean().item(),
            "identity_drift": delta[:, identity].mean().item()}
