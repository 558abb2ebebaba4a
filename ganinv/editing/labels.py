"""Latents and attribute scores to fit InterFaceGAN boundaries on (:mod:`ganinv.editing.boundary`).

Latents (:func:`load_latents`): an invert.py output folder (``latents/<key>.pt``, W+ [n_latent, D]
per image, see :mod:`ganinv.inversion`), or one file of codes [N, D] / [N, n_latent, D] (a torch
``.pt`` tensor, or ``.npy`` as InterFaceGAN's ``w.npy``), whose keys are the row numbers "0".."N-1".
W+ codes become one W code per image: the mean of the rows (``row='mean'``; a W inversion's rows
are all equal, so this is its w) or one row.

Scores (:func:`read_scores`): a CSV with a key column (``image``, ``key`` or ``latent``, else the
first column) and one column per attribute, or InterFaceGAN's ``scores.npy`` [N, 1] in row order.

Procedural labels (:func:`procedural_scores`): InterFaceGAN's own recipe (sample z, synthesise,
score the images with an attribute predictor) with the predictor a
:class:`~ganinv.metrics.editability.FactorRegressor` trained on procedural faces, whose 12 factors
(:data:`ganinv.data.procedural.FACTORS`) are known by construction.
"""
import csv
import io
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ganinv.checkpoints import load_torch
from ganinv.checkpoints.safe import check_file
from ganinv.editing.interfacegan import load_npy

KEY_COLUMNS = ("image", "key", "latent")


def _npy_array(path):
    data = load_npy(Path(path))
    if not isinstance(data, np.ndarray) or data.dtype.kind not in "fiub":
        raise ValueError(f"{path}: expected a plain numeric .npy array, got {type(data).__name__}")
    return data


def _check_codes(t, what, shapes=(2, 3)):
    """``t`` as a float32 tensor after checking it is a non-empty, finite ``shapes``-d float tensor."""
    if not isinstance(t, Tensor) or t.ndim not in shapes or not t.is_floating_point() or not t.numel():
        got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"{what}: expected a float tensor of {' or '.join(f'{n}-d' for n in shapes)} codes, got {got}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{what}: holds non-finite values")
    return t.float()


def saved_latents(run):
    """An invert.py output folder -> {key: W+ code [n_latent, D]}, keys sorted (``latents/<key>.pt``,
    keys may hold ``/``)."""
    root = Path(run) / "latents"
    if not root.is_dir():
        raise FileNotFoundError(f"{run}: not an invert.py output folder (no latents/ folder in it)")
    files = sorted(root.rglob("*.pt"))
    if not files:
        raise ValueError(f"{root}: no latent files (<key>.pt) in it")
    out = {}
    for f in files:
        key = f.relative_to(root).with_suffix("").as_posix()
        out[key] = _check_codes(load_torch(f, "latent file"), f"latent file {f}", (2,))
    return out


def load_latents(path, row="mean"):
    """An invert.py folder or a codes file (module docstring) -> (keys, W codes [N, D] float32)."""
    path = Path(path)
    if path.is_dir():
        codes = saved_latents(path)
        keys, ws = list(codes), torch.stack(list(codes.values()))
    else:
        check_file(path, "latents file")
        if path.suffix == ".npy":
            data = torch.from_numpy(_npy_array(path).astype("float32"))
        else:
            data = load_torch(path, "latents file")
        ws = _check_codes(data, f"latents file {path}")
        keys = [str(i) for i in range(len(ws))]
    if ws.ndim == 3:
        if row == "mean":
            ws = ws.mean(1)
        elif not 0 <= int(row) < ws.shape[1]:
            raise ValueError(f"--row {row}: the codes in {path} have rows 0..{ws.shape[1] - 1}")
        else:
            ws = ws[:, int(row)]
    return keys, ws


def read_scores(path, keys, attribute=None):
    """Scores for ``keys`` -> (indices into ``keys`` of those that have one, their scores [n] float64).
    A CSV names its key and ``attribute`` columns (``attribute`` may be left out when there is one
    score column); a CSV key without a latent is an error (a typo would otherwise drop it silently);
    latents without a score are left out. A ``.npy`` holds [N] or [N, 1] scores in the latents' order."""
    path = check_file(path, "scores file")
    if path.suffix == ".npy":
        s = torch.from_numpy(_npy_array(path).astype("float64")).reshape(-1)
        if s.shape[0] != len(keys):
            raise ValueError(f"scores file {path}: {s.shape[0]} scores for {len(keys)} latents")
        return list(range(len(keys))), s
    try:
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"scores file {path}: not a readable CSV file ({e})") from None
    if len(rows) < 2:
        raise ValueError(f"scores file {path}: expected a header and at least one row")
    header = [h.strip() for h in rows[0]]
    key_col = next((header.index(k) for k in KEY_COLUMNS if k in header), 0)
    others = [h for i, h in enumerate(header) if i != key_col]
    if attribute is None:
        if len(others) != 1:
            raise ValueError(f"scores file {path}: choose the attribute column with --attribute (columns {others})")
        attribute = others[0]
    if attribute not in others:
        raise ValueError(f"scores file {path}: no column {attribute!r} (columns {others})")
    col = header.index(attribute)
    by_key = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise ValueError(f"scores file {path} line {line}: {len(row)} fields, the header has {len(header)}")
        try:
            value = float(row[col])
        except ValueError:
            raise ValueError(f"scores file {path} line {line}: {attribute}={row[col]!r} is not a number") from None
        by_key[row[key_col].strip()] = value
    known = set(keys)
    missing = [k for k in by_key if k not in known]
    if missing:
        raise ValueError(f"scores file {path}: key {missing[0]!r} has no latent ({len(missing)} such keys)")
    found = [i for i, k in enumerate(keys) if k in by_key]
    return found, torch.tensor([by_key[keys[i]] for i in found], dtype=torch.float64)


@torch.no_grad()
def procedural_scores(generator, regressor, n_samples, seed=0, batch=256):
    """Sample w = mapping(z) (z ~ N(0, I) from ``seed``, no truncation), render G(w) with constant
    noise (clamped to [-1, 1]) and read the factors with ``regressor`` -> (w [N, D], scores [N, F])."""
    device = next(generator.parameters()).device
    z = torch.randn(n_samples, generator.style_dim, generator=torch.Generator().manual_seed(seed))
    ws, scores = [], []
    regressor = regressor.to(device).eval()
    for chunk in z.split(batch):
        w = generator.mapping(chunk.to(device))
        images = generator.synthesis(generator.broadcast(w), noise_mode="const").clamp(-1, 1)
        ws.append(w.float().cpu())
        scores.append(regressor(images).float().cpu())
    return torch.cat(ws), torch.cat(scores)
