"""SeFa (Shen & Zhou 2021): closed-form edit directions from the generator's style-modulation weights.

Follows genforce/sefa ``factorize_weight`` for StyleGAN2. Layer l is W+ row l and its weight is the
modulation (affine) matrix of the layer that consumes that row: in the rosinality layout row 0 ->
``conv1``, row r (1 <= r <= n_latent − 2) -> ``convs[r − 1]``, the last row -> ``to_rgbs[-1]`` (earlier
ToRGBs share their row with a conv, which takes precedence, as in genforce). Each selected matrix
[C_l, D] contributes its C_l rows, each normalised to unit length; the directions are the eigenvectors
of AᵀA for the stacked A [ΣC_l, D].
"""
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ganinv.editing.interfacegan import parse_layers


class SeFa(NamedTuple):
    layers: list[int]  # W+ rows the directions were factorised from and are applied to
    directions: Tensor  # [D, D], row k = k-th direction (unit norm), by decreasing eigenvalue
    eigenvalues: Tensor  # [D], decreasing


def modulation_weight(generator, row):
    """Modulation weight [C, D] of the layer consuming W+ row ``row`` of a rosinality-layout generator."""
    n_latent = generator.n_latent
    if not 0 <= row < n_latent:
        raise ValueError(f"SeFa: layer {row} out of range [0, {n_latent - 1}]")
    if row == 0:
        layer = generator.conv1
    elif row == n_latent - 1:
        layer = generator.to_rgbs[-1]
    else:
        layer = generator.convs[row - 1]
    return layer.conv.modulation.weight


@torch.no_grad()
def sefa_directions(generator, layers="all"):
    """Factorise the modulation weights of ``layers`` (W+ row indices, or genforce's strings such as
    '2-5'; 'all' = every row).

    genforce takes ``numpy.linalg.eig`` of AᵀA and keeps its (unspecified) order; here the symmetric
    solver ``eigh`` is used and directions are sorted by decreasing eigenvalue, so index 0 is always
    the strongest direction. Signs are arbitrary, as in the official code.
    """
    rows = parse_layers(layers, generator.n_latent)
    a = torch.cat([modulation_weight(generator, r).detach().double().cpu() for r in rows])
    a = a / a.norm(dim=1, keepdim=True)
    values, vectors = torch.linalg.eigh(a.T @ a)
    return SeFa(rows, vectors.flip(1).T.float().contiguous(), values.flip(0).float())


def apply_sefa(ws, sefa, index, strengths):
    """ws [B, n_latent, D] -> [S, B, n_latent, D]: ws + s · directions[index] on ``sefa.layers``."""
    if ws.ndim != 3:
        raise ValueError(f"apply_sefa: ws must be [B, n_latent, D], got {tuple(ws.shape)}")
    if not 0 <= index < sefa.directions.shape[0]:
        raise ValueError(f"apply_sefa: direction {index} out of range [0, {sefa.directions.shape[0] - 1}]")
    if sefa.layers[-1] >= ws.shape[1]:
        raise ValueError(f"apply_sefa: layers {sefa.layers} exceed ws with {ws.shape[1]} rows")
    s = torch.as_tensor(strengths, dtype=ws.dtype, device=ws.device).reshape(-1, 1, 1, 1)
    mask = torch.zeros(ws.shape[1], 1, dtype=ws.dtype, device=ws.device)
    mask[sefa.layers] = 1
    return ws.unsqueeze(0) + s * (mask * sefa.directions[index].to(ws))


def save_sefa(sefa, n_latent, path, index):
    """Write direction ``index`` atomically in IDInvert's layer-wise boundary layout (a ``.npy`` dict
    ``{'boundary': float32 [1, n_latent, D], 'meta_data': {'manipulate_layers': 'r0,r1,...'}}``, the
    direction on every row, its rows in ``manipulate_layers``), so ``interfacegan:PATH:STRENGTHS`` edits
    exactly as ``sefa:INDEX:STRENGTHS:layers=ROWS`` does. genforce/sefa writes no file (it renders
    pages); this is the nearest official layout that keeps the rows with the direction."""
    from ganinv.checkpoints.safe import atomic_write

    if not 0 <= index < sefa.directions.shape[0]:
        raise ValueError(f"save_sefa: direction {index} out of range [0, {sefa.directions.shape[0] - 1}]")
    boundary = sefa.directions[index].float().cpu().numpy().reshape(1, 1, -1).repeat(n_latent, axis=1)
    data = {"boundary": boundary, "meta_data": {"manipulate_layers": ",".join(map(str, sefa.layers)),
                                                "eigenvalue": float(sefa.eigenvalues[index])}}
    # an object array holding a plain dict, as IDInvert writes it (np.save pickles it); it is only ever
    # read back by the restricted unpickler of load_direction
    return atomic_write(path, lambda f: np.save(f, np.array(data, dtype=object)))
