"""The sweep's shared yardsticks: held-out test faces, a factor regressor, InterFaceGAN boundaries
fitted once in the generator's W space, and the two code-level scores every method gets.

Editability (:func:`editability`): for each target factor f, the boundary normal n_f ([1, D], unit)
is fitted by :func:`ganinv.editing.train_boundary` on sampled w = mapping(z), labelled by the factor
regressor reading G(w) (const noise). A method's codes ws [B, L, D] are edited on every W+ row,
ws ± s_f·n_f with s_f = ``strength`` × the standard deviation of (w·n_f) over the sampled w, and
decoded by the method's generator (PTI: each image's tuned generator). The factor regressor scores
(original decode, edit) with :func:`ganinv.metrics.editability_score`, averaged over both signs:
``target_shift`` (mean |Δ target factor|), ``identity_drift`` (mean |Δ| over the identity factors
other than the target) and ``other_drift``. The scalar is

    editability = mean_f target_shift_f − mean_f identity_drift_f      (in factor units, [-1, 1];
                                                                        higher = edits do what they
                                                                        should and keep who it is)

Latent realism (:func:`latent_realism`): how far a method's codes are from G's W distribution. Each
W+ row is one sample. A small MLP latent discriminator (standardised 512-d code -> 256 -> 1) is
trained to tell method rows from sampled w = mapping(z), with images split into ``folds`` folds
(all rows of an image on the same side) and a class-balanced loss; ``latent_d_acc`` is its
balanced held-out accuracy, (TPR on the held-out images' rows + TNR on fresh sampled w) / 2:
0.5 = indistinguishable from W, 1.0 = always told apart. ``latent_d_detect_per_layer`` is the
held-out detection rate of each W+ row, ``latent_d_p_real`` the mean held-out P(real) the D gives
the method's rows (graded where the accuracy saturates; about the value it gives sampled w,
``latent_d_p_real_sampled_w``, when indistinguishable). ``w_radius_ratio``: the mean norm of the
method's standardised rows over that of sampled w — about 1 for typical codes, below 1 for codes
collapsed toward the mean w (as encoders starting from latent_avg early in training), above 1 for
codes outside W's shell.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ganinv.checkpoints import load_generator, load_torch, save_atomic
from ganinv.checkpoints.safe import atomic_write
from ganinv.data.images import save_image
from ganinv.data.procedural import FACTORS, ProceduralFaces
from ganinv.editing import apply_direction, train_boundary
from ganinv.metrics import editability_score, load_regressor, save_regressor, train_factor_regressor


def fingerprint(obj) -> str:
    """A short stable hash of plain data (what a cached artefact was made from)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_json(path, obj):
    text = json.dumps(obj, indent=1, default=str) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def read_json(path):
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


@contextlib.contextmanager
def locked(path):
    """An exclusive lock file, so parallel launchers build the shared artefacts once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# -- sampling W --------------------------------------------------------------------------------
@torch.no_grad()
def sample_w(generator, n, seed, chunk=1000):
    """n codes w = mapping(z), z ~ N(0, I) from ``seed``: [n, D]."""
    z = torch.randn(n, generator.style_dim, generator=torch.Generator().manual_seed(seed))
    return torch.cat([generator.mapping(c) for c in z.split(chunk)])


@torch.no_grad()
def decode(generator, ws, chunk=64):
    """W+ codes [B, L, D] -> images [B, 3, S, S] clamped to [-1, 1] (const noise)."""
    return torch.cat([generator.synthesis(c, noise_mode="const").clamp(-1, 1) for c in ws.split(chunk)])


# -- the prepare step ------------------------------------------------------------------------
def write_inputs(folder, n, size, seed=0):
    """The held-out test faces (ProceduralFaces split='test') as face_XX.png; -> their keys."""
    faces = ProceduralFaces(n, size, seed=seed, split="test")
    keys = [f"face_{i:03d}" for i in range(n)]
    for i, key in enumerate(keys):
        save_image(faces[i][0], Path(folder) / f"{key}.png")
    return keys


@torch.no_grad()
def fit_boundaries(generator, regressor, factors, n, seed, chosen_ratio=0.1, strength=2.0):
    """InterFaceGAN boundaries in W, one per factor name: {name: {'normal' [1, D], 'strength',
    'val_accuracy', 'sigma'}}; labels are the regressor's readings of G(w)."""
    w = sample_w(generator, n, seed)
    scores = torch.cat([regressor(decode(generator, generator.broadcast(c))) for c in w.split(256)])
    out = {}
    for name in factors:
        fit = train_boundary(w, scores[:, FACTORS.index(name)], chosen_ratio=chosen_ratio, seed=seed)
        sigma = (w @ fit.normal[0]).std().item()
        out[name] = {"normal": fit.normal, "sigma": sigma, "strength": strength * sigma,
                     "val_accuracy": fit.val_accuracy}
    return out


def shared_config(cfg) -> dict:
    """What the shared artefacts depend on (a change rebuilds them)."""
    from omegaconf import OmegaConf

    s = cfg.setting
    return {"format": 2, "generator": str(s.generator), "inputs": str(s.inputs), "n_images": cfg.n_images,
            "seed": cfg.seed, "editability": bool(s.editability),
            "yardsticks": OmegaConf.to_container(cfg.yardsticks, resolve=True)}


def ensure_shared(shared_dir, cfg, log=print):
    """Build (once, under a lock) or reuse the sweep's shared artefacts in ``shared_dir``:
    ``inputs/`` (procedural test faces), ``regressor.pt``, ``boundaries.pt``, ``w_ref.pt`` and
    ``prepare.json`` (with ``reference``: the yardsticks on sampled w, the in-domain ceiling).
    -> the prepare record (dict)."""
    shared_dir = Path(shared_dir)
    want = shared_config(cfg)
    with locked(shared_dir / ".lock"):
        record = read_json(shared_dir / "prepare.json")
        if record and record.get("config") == want:
            return record
        t0 = time.time()
        y, s = cfg.yardsticks, cfg.setting
        g = load_generator(s.generator)
        torch.manual_seed(cfg.seed)
        if s.inputs == "procedural":
            inputs = shared_dir / "inputs"
            for old in inputs.glob("*.png"):
                old.unlink()
            write_inputs(inputs, cfg.n_images, g.size, seed=cfg.seed)
        else:
            inputs = Path(s.inputs)
            if not inputs.exists():
                raise FileNotFoundError(f"setting.inputs={inputs}: no such folder of test images")
        record = {"config": want, "inputs": str(inputs.resolve()), "fingerprint": fingerprint(want)}
        if s.editability:
            log(f"prepare: training the factor regressor ({y.regressor_steps} steps) ...")
            regressor, stats = train_factor_regressor(steps=y.regressor_steps, seed=cfg.seed,
                                                      size=min(g.size, 64))
            save_regressor(regressor, shared_dir / "regressor.pt", stats)
            log(f"prepare: fitting InterFaceGAN boundaries for {list(y.edit_factors)} on {y.boundary_samples} "
                "sampled w ...")
            bounds = fit_boundaries(g, regressor, list(y.edit_factors), y.boundary_samples, cfg.seed + 1,
                                    y.chosen_ratio, y.edit_strength)
            save_atomic(bounds, shared_dir / "boundaries.pt")
            record["regressor"] = stats
            record["boundaries"] = {k: {"val_accuracy": v["val_accuracy"], "sigma": v["sigma"],
                                        "strength": v["strength"]} for k, v in bounds.items()}
        w_ref = sample_w(g, y.realism_ref, cfg.seed + 2)
        save_atomic(w_ref, shared_dir / "w_ref.pt")
        # The yardsticks on codes that are in W by construction: what a perfect in-domain inversion scores.
        ws = g.broadcast(sample_w(g, max(cfg.n_images or 16, 2), cfg.seed + 3)).clone()
        reference = latent_realism(ws, w_ref, y.realism_folds, y.realism_steps, seed=cfg.seed)
        if s.editability:
            reference.update(editability(ws, [g] * len(ws), bounds, regressor))
        record["reference"] = reference
        record["seconds"] = time.time() - t0
        write_json(shared_dir / "prepare.json", record)
        log(f"prepare: shared artefacts in {shared_dir} ({record['seconds']:.0f} s)")
        return record


# -- editability ------------------------------------------------------------------------------
def editability(ws, generators, boundaries, regressor):
    """Codes ws [B, L, D] of B images, each decoded by ``generators[i]`` (the same object for
    plain methods, the tuned one per image for PTI) -> dict (see the module docstring)."""
    groups = {}
    for i, g in enumerate(generators):
        groups.setdefault(id(g), (g, []))[1].append(i)

    def render(codes):
        out = torch.empty(len(codes), 3, generators[0].size, generators[0].size)
        for g, idx in groups.values():
            out[idx] = decode(g, codes[idx])
        return out

    original = render(ws)
    per_factor = {}
    for name, b in boundaries.items():
        edits = apply_direction(ws, b["normal"], [-b["strength"], b["strength"]])
        scores = [editability_score(original, render(e), name, regressor) for e in edits]
        per_factor[name] = {k: sum(s[k] for s in scores) / len(scores) for k in scores[0]}
    mean = {k: sum(f[k] for f in per_factor.values()) / len(per_factor) for k in
            ("target_shift", "identity_drift", "other_drift")}
    return {"editability": mean["target_shift"] - mean["identity_drift"], **mean, "per_factor": per_factor}


# -- latent realism -----------------------------------------------------------------------------
class _LatentD(nn.Module):
    def __init__(self, dim, hidden=256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)


def latent_realism(codes, w_ref, folds=4, steps=300, lr=1e-3, weight_decay=1e-2, seed=0):
    """codes [B, L, D] (a method's W+ codes), w_ref [N, D] (sampled w; half trains the D, half
    tests it) -> dict (see the module docstring). Needs B >= 2."""
    b, n_layers, dim = codes.shape
    if b < 2:
        raise ValueError(f"latent_realism: needs at least 2 images, got {b}")
    gen = torch.Generator().manual_seed(seed)
    ref = w_ref[torch.randperm(len(w_ref), generator=gen)]
    ref_train, ref_test = ref[: len(ref) // 2], ref[len(ref) // 2:]
    mean, std = ref_train.mean(0), ref_train.std(0).clamp_min(1e-6)
    norm = lambda x: (x - mean) / std  # noqa: E731
    k = min(folds, b)
    order = torch.randperm(b, generator=gen)
    p_fake = torch.zeros(b, n_layers)  # held-out P(real) of every method row
    p_ref = []
    for fold in range(k):
        test = order[fold::k]
        train = order[torch.isin(order, test, invert=True)]
        x_fake = norm(codes[train].reshape(-1, dim))
        x_real = norm(ref_train)
        x = torch.cat([x_fake, x_real])
        y = torch.cat([torch.zeros(len(x_fake)), torch.ones(len(x_real))])
        weight = torch.cat([torch.full((len(x_fake),), 0.5 / len(x_fake)),
                            torch.full((len(x_real),), 0.5 / len(x_real))])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + fold)
            d = _LatentD(dim)
        opt = torch.optim.Adam(d.parameters(), lr=lr, weight_decay=weight_decay)
        for _ in range(steps):
            loss = (F.binary_cross_entropy_with_logits(d(x), y, reduction="none") * weight).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            p_fake[test] = torch.sigmoid(d(norm(codes[test].reshape(-1, dim)))).reshape(len(test), n_layers)
            p_ref.append(torch.sigmoid(d(norm(ref_test))))
    p_ref = torch.cat(p_ref)
    detect = (p_fake < 0.5).float()
    tnr = (p_ref >= 0.5).float().mean().item()
    radius = lambda x: norm(x).norm(dim=-1).mean().item()  # noqa: E731
    return {"latent_d_acc": 0.5 * (detect.mean().item() + tnr),
            "latent_d_detect_per_layer": detect.mean(0).tolist(),
            "latent_d_p_real": p_fake.mean().item(), "latent_d_p_real_sampled_w": p_ref.mean().item(),
            "w_radius_ratio": radius(codes.reshape(-1, dim)) / radius(ref_test)}


def load_shared(shared_dir, editability_on=True):
    """(regressor or None, boundaries or None, w_ref [N, D]) from the prepare step's files."""
    shared_dir = Path(shared_dir)
    regressor = boundaries = None
    if editability_on:
        regressor = load_regressor(shared_dir / "regressor.pt")
        boundaries = load_torch(shared_dir / "boundaries.pt", "sweep boundaries")
    return regressor, boundaries, load_torch(shared_dir / "w_ref.pt", "sweep reference codes")
