"""InterFaceGAN (Shen et al. 2020): linear attribute boundaries in W, loaded and applied to W+ (fitted
with scikit-learn's linear SVM as the official code fits them: :mod:`ganinv.editing.boundary`).

Files read here:

* e4e's ``editings/interfacegan_directions/*.pt``: a tensor [1, 512] or [512]; edit w + f·d on every
  W+ row (e4e ``LatentEditor.apply_interfacegan``).
* InterFaceGAN's ``boundaries/*.npy``: a float array [1, 512].
* IDInvert's ``boundaries/<model>/*.npy``: a pickled dict ``{'boundary': [1, n_latent, 512],
  'meta_data': {'manipulate_layers': ...}}``; edit ``w[:, layers] += f · boundary[:, layers]``
  (IDInvert ``utils/editor.py manipulate`` with ``is_boundary_layerwise=True``).

Plain arrays are read after checking their header against the file size. IDInvert's dicts need
unpickling, which is done by ganinv's restricted unpickler (:mod:`ganinv.checkpoints.allowlist`): only
numeric numpy arrays, numbers and plain containers, so a boundary file can never run code.
"""
import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ganinv.checkpoints import load_torch
from ganinv.checkpoints.allowlist import NUMPY_KINDS, PLAIN, unpickle
from ganinv.checkpoints.safe import check_file
from ganinv.editing.boundary import FittedBoundary, save_boundary, train_boundary

__all__ = ["Direction", "FittedBoundary", "apply_direction", "load_direction", "parse_layers", "save_boundary",
           "train_boundary"]


class Direction(NamedTuple):
    """An edit direction: ``vector`` [1, D] (same shift on every edited row) or [n_latent, D]
    (layer-wise), and the W+ rows it edits (``None``: all rows)."""

    vector: Tensor
    layers: list[int] | None = None


def parse_layers(layers, n_latent=None):
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


# -- loading ------------------------------------------------------------------------------------

def _as_direction(array, path, layers=None):
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


def load_npy(path):
    """A ``.npy`` file: a plain numeric array, or an object array holding a pickled dict
    (IDInvert's boundaries), unpickled by ganinv's restricted unpickler (numeric arrays, numbers,
    strings, containers; nothing else). The header's shape is checked against the file size before
    anything is allocated."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            shape, fortran, dtype = getattr(np.lib.format, f"read_array_header_{version[0]}_{version[1]}")(f)
        except (ValueError, OSError, SyntaxError, AttributeError) as e:
            raise ValueError(f"direction file {path} is not a readable .npy file ({e})") from None
        if dtype.hasobject:  # the array is a pickle after the header
            obj = unpickle(f, size - f.tell(), f"direction file {path}", PLAIN)
            if not isinstance(obj, np.ndarray) or obj.shape != shape:
                raise ValueError(f"direction file {path} is not a numpy object array of shape {shape}")
            return obj[()] if obj.ndim == 0 else obj
        if dtype.char not in NUMPY_KINDS or dtype.fields is not None:
            raise ValueError(f"direction file {path}: dtype {dtype} is not a plain numeric type")
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes != size - f.tell():
            raise ValueError(f"direction file {path}: its header declares {shape} of {dtype} ({nbytes} bytes) "
                             f"but {size - f.tell()} bytes follow")
        array = np.frombuffer(bytearray(f.read(nbytes)), dtype=dtype)
    return array.reshape(shape, order="F" if fortran else "C")


def load_direction(path):
    """Read an InterFaceGAN direction: e4e ``.pt`` ([1, D] or [D]), InterFaceGAN ``.npy`` ([1, D]) or
    IDInvert ``.npy`` (dict with a layer-wise ``boundary`` [1, n_latent, D] and
    ``meta_data['manipulate_layers']``). Raises one-line errors naming the file."""
    path = check_file(path, "direction file")
    if path.suffix == ".npy":
        data = load_npy(path)
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


def apply_direction(ws, direction, strengths):
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
