"""Per-image reconstruction metrics. Inputs are images [B, 3, H, W] in [-1, 1] (reconstruction first,
target second); values outside [-1, 1] are clamped first, as saving to 8-bit images would. Every
function returns a [B] tensor, one value per image, independent of the rest of the batch.

Scales: MSE is taken on the [-1, 1] images, the convention of pSp's and e4e's
``scripts/calc_losses_on_images.py`` and so of the numbers the papers report (e.g. pSp 0.034 on
CelebA-HQ); it is 4x the MSE of the same images in [0, 1]. PSNR and SSIM use [0, 1] images with
data range 1, the usual image-quality convention (torchmetrics' defaults: Gaussian window 11, σ 1.5).
ID is pSp/e4e's: cosine similarity of ArcFace IR-SE50 embeddings, with ``model_ir_se50.pth`` where
:func:`id_weights_path` finds it.
"""
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

ID_WEIGHTS = "model_ir_se50.pth"  # pSp's ArcFace IR-SE50 (linked from the pixel2style2pixel README)


def id_weights_path(path=None, folder=None):
    """The ArcFace weights file for the ID metric -> a Path, or None when there is none to use.

    ``path`` given (``python -m ganinv.evaluate --id-weights``): that file, whether or not it exists
    (:class:`ganinv.losses.IDLoss` then fails naming it). Else ``<folder>/model_ir_se50.pth`` when that
    file exists, else None (no ID score, nothing downloaded); ``folder`` defaults to ``$GANINV_WEIGHTS``
    or ``pretrained_models/`` (relative to the working folder), as ``conf/paths/default.yaml``'s
    ``weights_dir`` (invert.py passes its ``paths.weights_dir``, from which the ID loss's
    ``loss.id_weights`` is built too)."""
    if path is not None:
        return Path(path)
    folder = os.environ.get("GANINV_WEIGHTS", "pretrained_models") if folder is None else folder
    default = Path(folder) / ID_WEIGHTS
    return default if default.is_file() else None


def _check(y_hat, y, what):
    """(y_hat, y) detached, float32 and clamped to [-1, 1], after checking both are [B, C, H, W] alike."""
    if y_hat.ndim != 4 or y_hat.shape != y.shape:
        raise ValueError(f"{what}: expected two image batches [B, C, H, W] of equal shape, "
                         f"got {tuple(y_hat.shape)} and {tuple(y.shape)}")
    return y_hat.detach().float().clamp(-1, 1), y.detach().float().clamp(-1, 1)


def mse(y_hat, y):
    """Mean squared error over C, H, W of the [-1, 1] images -> [B]."""
    y_hat, y = _check(y_hat, y, "mse")
    return (y_hat - y).square().flatten(1).mean(1)


def psnr(y_hat, y):
    """PSNR in dB of the [0, 1] images, data range 1 -> [B] (inf for identical images)."""
    y_hat, y = _check(y_hat, y, "psnr")
    return peak_signal_noise_ratio((y_hat + 1) / 2, (y + 1) / 2, data_range=1.0, reduction="none",
                                   dim=(1, 2, 3))


def ssim(y_hat, y):
    """SSIM of the [0, 1] images, data range 1 -> [B] (1 for identical images)."""
    y_hat, y = _check(y_hat, y, "ssim")
    return structural_similarity_index_measure((y_hat + 1) / 2, (y + 1) / 2, data_range=1.0, reduction="none")


def lpips_distance(y_hat, y, lpips):
    """LPIPS distance -> [B], with a :class:`ganinv.losses.LPIPSLoss` (which pools inputs above its
    ``resize`` to that size, as pSp does)."""
    y_hat, y = _check(y_hat, y, "lpips")
    with torch.no_grad():
        return lpips(y_hat, y, per_image=True)


def id_similarity(y_hat, y, id_loss):
    """Cosine similarity of ArcFace embeddings (pSp/e4e's ID metric) -> [B], with a
    :class:`ganinv.losses.IDLoss` (its ``extract_feats`` crops and pools the face region)."""
    y_hat, y = _check(y_hat, y, "id_similarity")
    with torch.no_grad():
        return F.cosine_similarity(id_loss.extract_feats(y_hat), id_loss.extract_feats(y), dim=1)


def compute_image_metrics(y_hat, y, lpips=None, id_loss=None):
    """``{'mse', 'psnr', 'ssim'}`` plus ``'lpips'`` / ``'id'`` when those models are given; each [B]."""
    out = {"mse": mse(y_hat, y), "psnr": psnr(y_hat, y), "ssim": ssim(y_hat, y)}
    if lpips is not None:
        out["lpips"] = lpips_distance(y_hat, y, lpips)
    if id_loss is not None:
        out["id"] = id_similarity(y_hat, y, id_loss)
    return out
