"""Latent Editing Consistency (LEC), e4e (Tov et al. 2021) ``metrics/LEC.py``.

For images x, encoder E and generator G (codes in absolute W+, i.e. with ``latent_avg`` added where
the encoder predicts offsets) and an edit f with inverse f⁻¹:

    LEC(x) = ‖ E(x) − f⁻¹(E(G(f(E(x))))) ‖_F    (Frobenius norm over the [n_latent, D] code)

An encoder whose inversions commute with editing scores 0. e4e averages LEC over each batch, drops
the batch means below the 1st or above the 99th percentile (numpy 'lower'/'higher' interpolation),
and averages the rest; :func:`latent_editing_consistency` does the same.
"""
import numpy as np
import torch


def shift_edit(direction, factor=3.0):
    """(edit, inverse) for the linear edit w ± factor·direction used in e4e's LEC example (an
    InterFaceGAN direction [1, D] or [D], factor 3)."""
    return (lambda ws: ws + factor * direction.to(ws)), (lambda ws: ws - factor * direction.to(ws))


@torch.no_grad()
def lec_distances(images, encode, decode, edit, inverse_edit):
    """Per-image LEC [B] for images [B, 3, H, W]; ``encode`` images -> ws [B, n_latent, D],
    ``decode`` ws -> images the encoder accepts (e.g. synthesis followed by pSp's face pooling)."""
    codes = encode(images)
    if codes.ndim != 3:
        raise ValueError(f"LEC: encode must return codes [B, n_latent, D], got {tuple(codes.shape)}")
    recovered = inverse_edit(encode(decode(edit(codes))))
    return (codes - recovered).flatten(1).norm(dim=1)


def filter_outliers(values):
    """Keep the values between the 1st ('lower') and 99th ('higher') percentiles, as e4e does."""
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    lo = np.percentile(arr, 1, method="lower")
    hi = np.percentile(arr, 99, method="higher")
    return arr[(lo <= arr) & (arr <= hi)]


def latent_editing_consistency(batches, encode, decode, edit, inverse_edit):
    """e4e's LEC score over ``batches`` (image tensors, or (images, ...) tuples as data loaders yield):
    per-batch mean distance, 1–99 percentile filtering across batches, mean."""
    means = []
    for batch in batches:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        means.append(lec_distances(images, encode, decode, edit, inverse_edit).mean().item())
    if not means:
        raise ValueError("latent_editing_consistency: no batches")
    return float(filter_outliers(means).mean())
