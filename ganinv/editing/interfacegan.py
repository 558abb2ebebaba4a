"""InterFaceGAN (Shen et al. 2020): linear attribute boundaries in W, fitted, loaded and applied to W+.

Files read here:

* e4e's ``editings/interfacegan_directions/*.pt``: a tensor [1, 512] or [512]; edit w + f·d on every
  W+ row (e4e ``LatentEditor.apply_interfacegan``).
* InterFaceGAN's ``boundaries/*.npy``: a float array [1, 512].
* IDInvert's ``boundaries/<model>/*.npy``: a pickled dict ``{'boundary': [1, n_latent, 512],
  'meta_data': {'manipulate_layers': ...}}``; edit ``w[:, layers] += f · boundary[:, layers]``
  (IDInvert ``utils/editor.py manipulate`` with ``is_boundary_layerwise=True``).

Plain arrays are read with ``numpy.load(allow_pickle=False)``. IDInvert's dicts need unpickling, which
is done with an unpickler that only admits numpy array reconstruction and plain containers, so a
boundary file can never run code.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ganinv.checkpoints import UnsafeCheckpointError, load_torch
from ganinv.checkpoints.safe import check_file


class Direction(NamedTuple):
    """An edit direction: ``vector`` [1, D] (same shift on every edited row) or [n_latent, D]
    (layer-wise), and the W+ rows it edits (``None``: all rows)."""

    vector: Tensor
    layers: list[int] | None = None


class FittedBoundary(NamedTuple):
    normal: Tensor  # [1, D], unit norm, pointing towards high scores
    val_accuracy: float | None  # on the held-out part of the chosen samples; None without one


def parse_layers(layers, n_latent: int | None = None) -> list[int] | None:
    """W+ row indices from an int, a sequence of ints, or genforce's index string (``'2-5'``,
    ``'0,3,6-8'``; ranges inclusive) -> sorted unique list. ``None``, ``'all'``, ``''`` or an empty
    sequence mean every row: ``list(range(n_latent))``, or ``None`` when ``n_latent`` is not given.
    Indices must lie in [0, n_latent) when ``n_latent`` is given."""
    if isinstance(layers, str):
        layers = layers.replace(" ", "")
        if layers in ("", "all"):
            layers = None
    elif layers is not None and not isinstance(layers, (int, np.integer)) and len(layers) == 0:
        layers = None
    if layers is None:
        return None if n_latent is None else list(range(n_latent))
    if isinstance(layers, str):
        out = []
        for part in layers.split(","):
            bounds = part.split("-")
            if len(bounds) > 2 or not all(b.isdigit() for b in bounds):
                raise ValueError(f"layers: cannot parse {part!r} in {layers!r} (use e.g. '2-5' or '0,3,6-8')")
            out.extend(range(int(bounds[0]), int(bounds[-1]) + 1))
    else:
        out = [int(i) for i in np.asarray(layers).reshape(-1)]
    out = sorted(set(out))
    if not out or out[0] < 0 or (n_latent is not None and out[-1] >= n_latent):
        bound = f"[0, {n_latent - 1}]" if n_latent is not None else "non-negative"
        raise ValueError(f"layers {layers!r} must be {bound} row indices")
    return out


def train_boundary(latents: Tensor, scores: Tensor, chosen_ratio: float = 0.02, split_ratio: float = 0.7,
                   c: float = 1.0, seed: int = 0) -> FittedBoundary:
    """Fit a linear boundary separating high from low attribute scores, as InterFaceGAN's
    ``train_boundary``: sort by score, take the top and bottom ``chosen_ratio`` of the samples (or that
    many samples when > 1, at most half each) as positives/negatives, train on ``split_ratio`` of them,
    report accuracy on the rest, return the unit normal.

    latents [N, D] (W codes); scores [N] or [N, 1], continuous or binary (0/1 or bool).
    Difference from the official code: it trains sklearn's ``SVC(kernel='linear', C=1)`` (hinge loss);
    sklearn is not a dependency here, so this minimises the same objective with the logistic loss,
    ½‖w‖² + c·Σ log(1 + exp(−y(w·x + b))), by L-BFGS in float64. On separable data both normals
    approach the maximum-margin direction, so they agree closely; they are not bit-identical.
    """
    x = torch.as_tensor(latents).detach().double().cpu()
    s = torch.as_tensor(scores).detach().double().cpu().reshape(-1)
    if x.ndim != 2 or s.shape[0] != x.shape[0]:
        raise ValueError(f"train_boundary: latents must be [N, D] and scores [N], got {tuple(x.shape)} "
                         f"and {tuple(torch.as_tensor(scores).shape)}")
    if chosen_ratio <= 0:
        raise ValueError(f"train_boundary: chosen_ratio must be positive, got {chosen_ratio}")
    n = x.shape[0]
    order = torch.argsort(s, descending=True, stable=True)
    x = x[order]
    chosen = int(n * chosen_ratio) if chosen_ratio <= 1 else int(chosen_ratio)
    chosen = min(chosen, n // 2)
    n_train = int(chosen * split_ratio)
    if n_train < 1:
        raise ValueError(f"train_boundary: {n} samples with chosen_ratio {chosen_ratio} leave no "
                         "training data")
    gen = torch.Generator().manual_seed(seed)
    pos = x[:chosen][torch.randperm(chosen, generator=gen)]
    neg = x[n - chosen:][torch.randperm(chosen, generator=gen)]
    train_x = torch.cat([pos[:n_train], neg[:n_train]])
    train_y = torch.cat([torch.ones(n_train), -torch.ones(n_train)]).double()

    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = 0.5 * w.square().sum() + c * F.softplus(-train_y * (train_x @ w + b)).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w = w.detach()
    if not torch.isfinite(w).all() or w.norm() == 0:
        raise ValueError("train_boundary: the fit did not converge (are the scores constant?)")
    val_accuracy = None
    if chosen > n_train:
        val_x = torch.cat([pos[n_train:], neg[n_train:]])
        val_y = torch.cat([torch.ones(chosen - n_train), -torch.ones(chosen - n_train)]).double()
        val_accuracy = ((val_x @ w + b.detach()).sign() == val_y).double().mean().item()
    return FittedBoundary((w / w.norm()).float().unsqueeze(0), val_accuracy)


# -- loading ------------------------------------------------------------------------------------

def _as_direction(array, path, layers=None) -> Direction:
    """[D] or [1, D] -> [1, D]; layer-wise [1, n_latent, D] (IDInvert) -> [n_latent, D]."""
    t = torch.as_tensor(array if isinstance(array, Tensor) else np.asarray(array)).float()
    if t.ndim == 1:
        t = t.unsqueeze(0)
    elif t.ndim == 3 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 2 or not t.numel():
        raise ValueError(f"direction file {path}: expected a direction [D], [1, D] or [1, n_latent, D], "
                         f"got shape {tuple(np.shape(array))}")
    if layers is not None and t.shape[0] > 1 and layers[-1] >= t.shape[0]:
        raise ValueError(f"direction file {path}: manipulate_layers {layers} exceed its {t.shape[0]} rows")
    return Direction(t.contiguous(), layers)


class _NumpyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays, numpy scalars and plain containers; refuses every other global."""

    _ALLOWED = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # numpy 1.x wrote these as numpy.core.*, numpy 2 as numpy._core.*
        ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
        ("numpy.core.multiarray", "scalar"): np._core.multiarray.scalar,
        ("numpy._core.multiarray", "scalar"): np._core.multiarray.scalar,
    }

    def __init__(self, file, name):
        super().__init__(file)
        self.name = name

    def find_class(self, module, name):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"direction file {self.name}: refused to load global '{module}.{name}' (it was not imported "
                "or executed); only numpy arrays, numbers, strings, lists and dicts are accepted") from None


def _load_npy(path: Path):
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        if "Object arrays" not in str(e):
            raise ValueError(f"direction file {path} is not a readable .npy file ({e})") from None
    with open(path, "rb") as f:  # an object array (IDInvert's dict): .npy header, then a pickle
        try:
            version = np.lib.format.read_magic(f)
            shape, _, dtype = getattr(np.lib.format, f"read_array_header_{version[0]}_{version[1]}")(f)
            obj = _NumpyUnpickler(f, str(path)).load()
        except UnsafeCheckpointError:
            raise
        except Exception as e:  # truncated or corrupt data surfaces as many exception types
            raise ValueError(f"direction file {path} is truncated or corrupt ({type(e).__name__})") from None
    if not dtype.hasobject or not isinstance(obj, np.ndarray) or obj.shape != shape:
        raise ValueError(f"direction file {path} is not a numpy object array")
    return obj[()] if obj.ndim == 0 else obj


def load_direction(path) -> Direction:
    """Read an InterFaceGAN direction: e4e ``.pt`` ([1, D] or [D]), InterFaceGAN ``.npy`` ([1, D]) or
    IDInvert ``.npy`` (dict with a layer-wise ``boundary`` [1, n_latent, D] and
    ``meta_data['manipulate_layers']``). Raises one-line errors naming the file."""
    path = check_file(path, "direction file")
    if path.suffix == ".npy":
        data = _load_npy(path)
        if isinstance(data, dict):
            if "boundary" not in data:
                raise ValueError(f"direction file {path}: dict without a 'boundary' entry "
                                 f"(keys {sorted(data)})")
            meta = data.get("meta_data")
            layers = meta.get("manipulate_layers") if isinstance(meta, dict) else None
            try:
                layers = parse_layers(layers)
            except (ValueError, TypeError) as e:
                raise ValueError(f"direction file {path}: bad manipulate_layers ({e})") from None
            return _as_direction(data["boundary"], path, layers)
        if not np.issubdtype(np.asarray(data).dtype, np.floating):
            raise ValueError(f"direction file {path}: expected a float array, "
                             f"got dtype {np.asarray(data).dtype}")
        return _as_direction(data, path)
    data = load_torch(path, "direction file")
    if not isinstance(data, Tensor):
        raise ValueError(f"direction file {path}: expected a tensor, got {type(data).__name__}")
    return _as_direction(data, path)


def apply_direction(ws: Tensor, direction: Direction | Tensor, strengths) -> Tensor:
    """ws [B, n_latent, D] -> [S, B, n_latent, D]: ws + s · direction on the direction's rows, one
    slice per strength s (InterFaceGAN/e4e: w + f·d; IDInvert: only ``manipulate_layers``).
    A bare tensor direction ([D], [1, D] or [n_latent, D]) edits every row."""
    if isinstance(direction, Tensor):
        direction = Direction(direction)
    if ws.ndim != 3:
        raise ValueError(f"apply_direction: ws must be [B, n_latent, D], got {tuple(ws.shape)}")
    vec = direction.vector.to(ws)
    vec = vec.unsqueeze(0) if vec.ndim == 1 else vec
    if vec.ndim != 2 or vec.shape[-1] != ws.shape[-1] or vec.shape[0] not in (1, ws.shape[1]):
        raise ValueError(f"apply_direction: direction {tuple(vec.shape)} does not fit ws {tuple(ws.shape)}")
    s = torch.as_tensor(strengths, dtype=ws.dtype, device=ws.device).reshape(-1, 1, 1, 1)
    mask = torch.zeros(ws.shape[1], 1, dtype=ws.dtype, device=ws.device)
    mask[parse_layers(direction.layers, ws.shape[1])] = 1
    return ws.unsqueeze(0) + s * (mask * vec)
