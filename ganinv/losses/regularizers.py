"""Latent and noise regularisers: pSp w-norm, e4e delta regularisation, StyleGAN2 projector noise."""
import torch
import torch.nn.functional as F


def w_norm(ws, latent_avg=None):
    """pSp WNormLoss: Σ_b ‖w_b − w_avg‖_F / B.

    ws [B, n_latent, D] (or [B, D]); latent_avg [D] or [n_latent, D], or None for pSp's
    ``start_from_latent_avg=False`` (norm of ws itself). The Frobenius norm runs over all
    non-batch dims, as pSp's ``latent.norm(2, dim=(1, 2))``.
    """
    if latent_avg is not None:
        ws = ws - latent_avg
    return ws.flatten(1).norm(dim=1).sum() / ws.shape[0]


def delta_losses(ws, stage, p=2):
    """e4e's per-delta terms: [mean_b ‖w_i − w_0‖_p for i = 1 … stage] over ws [B, n_latent, D].

    The official coach (``calc_loss``, ``for i in range(1, progressive_stage + 1)`` since its
    commit 789f1f0 "coach.py fixups"; the first release stopped at stage − 1) logs term i as
    ``delta{i}_loss`` and regularises their sum. ``stage`` is the number of active deltas
    (0 gives an empty tensor). Adding the same latent_avg to every row does not change the
    terms, so codes may be passed with or without it.
    """
    n_latent = ws.shape[1]
    if not isinstance(stage, int) or not 0 <= stage < n_latent:
        raise ValueError(f"delta_losses: stage must be an int in [0, {n_latent - 1}], got {stage!r}")
    return (ws[:, 1:stage + 1] - ws[:, :1]).norm(p=p, dim=2).mean(0)


def delta_regularization(ws, n_rows, p=2):
    """Σ_{i=1}^{n_rows−1} mean_b ‖w_i − w_0‖_p: the deltas of the first ``n_rows`` rows of ws
    [B, n_latent, D] (``'all'``: every row). e4e at progressive stage k regularises rows 1..k,
    i.e. ``n_rows = k + 1`` (:func:`delta_losses` gives the official per-delta terms)."""
    n_latent = ws.shape[1]
    if n_rows == "all":
        n_rows = n_latent
    if not isinstance(n_rows, int) or not 0 <= n_rows <= n_latent:
        raise ValueError(f"delta_regularization: stage (n_rows) must be 'all' or an int in [0, {n_latent}], "
                         f"got {n_rows!r}")
    return delta_losses(ws, max(n_rows - 1, 0), p).sum()


def noise_regularize(noises, per_image=False):
    """StyleGAN2 projector noise regulariser (rosinality ``noise_regularize``, NVIDIA projector).

    For every noise map n [B, 1, H, W]: (mean(n · roll_W(n, 1)))² + (mean(n · roll_H(n, 1)))²,
    repeated on 2×2 average-pooled copies while the side exceeds 8 (the 8×8 level, or the map
    itself if smaller, is the last one), summed over levels and maps. The mean runs over the
    whole batch as in rosinality; ``per_image=True`` takes it per image and returns [B].
    """
    dims = (1, 2, 3) if per_image else (0, 1, 2, 3)
    loss = 0
    for noise in noises:
        while True:
            loss = (loss + (noise * torch.roll(noise, shifts=1, dims=3)).mean(dims).pow(2)
                    + (noise * torch.roll(noise, shifts=1, dims=2)).mean(dims).pow(2))
            if noise.shape[2] <= 8:
                break
            noise = F.avg_pool2d(noise, 2)
    return loss


@torch.no_grad()
def noise_normalize_(noises, per_image=False):
    """In place: n ← (n − mean(n)) / std(n) for every noise map (unbiased std, over the whole
    tensor as rosinality ``noise_normalize_``; per image with ``per_image=True``)."""
    for noise in noises:
        dims = tuple(range(1, noise.ndim)) if per_image else tuple(range(noise.ndim))
        noise.sub_(noise.mean(dims, keepdim=True)).div_(noise.std(dims, keepdim=True))
