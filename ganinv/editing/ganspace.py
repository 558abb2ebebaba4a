"""GANSpace (Härkönen et al. 2020): principal components of W, and e4e's layer-range edits along them.

The PCA is stored in the layout of e4e's ``editings/ganspace_pca/ffhq_pca.pt`` (GANSpace's cache
renamed): ``{'mean': [1, D], 'comp': [K, 1, D] unit rows by decreasing variance, 'std': [K]}``.
"""
import torch

from ganinv.checkpoints import load_torch, save_atomic


def pca_of_w(w, n_components=None):
    """PCA of W samples [N, D] -> ``{'mean', 'comp', 'std'}`` (float32, CPU); ``std`` is the square
    root of the variance (N − 1 denominator) along each component."""
    if w.ndim != 2 or w.shape[0] < 2:
        raise ValueError(f"pca_of_w: need W samples [N >= 2, D], got {tuple(w.shape)}")
    w = w.detach().double().cpu()
    mean = w.mean(0)
    return _from_moments(mean, (w - mean).T @ (w - mean) / (w.shape[0] - 1), n_components)


def _from_moments(mean, cov, n_components):
    """PCA dict ``{mean [1, D], comp [k, 1, D], std [k]}`` (descending variance) from moments of w."""
    var, vec = torch.linalg.eigh(cov)  # ascending
    k = cov.shape[0] if n_components is None else n_components
    if not 1 <= k <= cov.shape[0]:
        raise ValueError(f"n_components must be in [1, {cov.shape[0]}], got {n_components}")
    var, vec = var.flip(0)[:k].clamp_min(0), vec.flip(1)[:, :k]
    return {"mean": mean.float().reshape(1, -1), "comp": vec.T.float().unsqueeze(1),
            "std": var.sqrt().float()}


GANSPACE_SAMPLES = 300_000  # GANSpace config.py: ``-n`` default, "Number of examples to use in decomposition"
GANSPACE_COMPONENTS = 80  # GANSpace config.py: ``-c`` default; e4e's ffhq_pca.pt has 80 as well


@torch.no_grad()
def ganspace_pca(generator, n_samples=GANSPACE_SAMPLES, n_components=GANSPACE_COMPONENTS, batch=4096, seed=0):
    """GANSpace's PCA of W (harskish/ganspace ``decomposition.py`` with ``--use_w --layer=style``):
    map ``n_samples`` z ~ N(0, I) (no truncation; GANSpace's default count, 300 000) and keep the top
    ``n_components`` (80) principal components -> ``{'mean' [1, D], 'comp' [K, 1, D], 'std' [K]}``.

    Deviations, both within sampling noise of the official numbers: GANSpace fits scikit-learn's
    ``IncrementalPCA`` batch by batch (an approximation of the full PCA) and measures ``std`` as the
    spread of 5 000 fresh samples' coordinates; here the exact covariance is accumulated in float64
    batch by batch (memory does not grow with ``n_samples``; the same PCA as
    ``sklearn.decomposition.PCA`` on all samples) and ``std`` is the square root of its eigenvalue."""
    if n_samples < 2:
        raise ValueError(f"ganspace_pca: n_samples must be at least 2, got {n_samples}")
    device = next(generator.parameters()).device
    gen = torch.Generator(device).manual_seed(seed)
    dim = generator.style_dim
    total = torch.zeros(dim, dtype=torch.float64, device=device)
    gram = torch.zeros(dim, dim, dtype=torch.float64, device=device)
    for start in range(0, n_samples, batch):
        z = torch.randn(min(batch, n_samples - start), dim, device=device, generator=gen)
        w = generator.mapping(z).double()
        total += w.sum(0)
        gram += w.T @ w
    mean = total / n_samples
    cov = (gram - n_samples * torch.outer(mean, mean)) / (n_samples - 1)
    return _from_moments(mean.cpu(), cov.cpu(), n_components)


def save_ganspace_pca(pca, path):
    """Write a PCA atomically in e4e's ``ffhq_pca.pt`` layout: ``{'mean' [1, D], 'comp' [K, 1, D],
    'std' [K]}`` float32 tensors (read back by :func:`load_ganspace_pca`)."""
    k, dim = pca["comp"].shape[0], pca["mean"].numel()
    data = {"mean": pca["mean"].float().reshape(1, dim).clone(), "comp": pca["comp"].float().reshape(k, 1, dim).clone(),
            "std": pca["std"].float().reshape(k).clone()}
    return save_atomic(data, path)


def load_ganspace_pca(path):
    """Read a PCA file in e4e's layout; ``mean`` [D] or [1, D] and ``comp`` [K, D] or [K, 1, D] are
    accepted and returned as [1, D] and [K, 1, D]."""
    data = load_torch(path, "GANSpace PCA file")
    if not isinstance(data, dict) or not {"mean", "comp", "std"} <= set(data):
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"GANSpace PCA file {path}: expected a dict with 'mean', 'comp', 'std', got {keys}")
    mean, comp, std = (torch.as_tensor(data[k]).float() for k in ("mean", "comp", "std"))
    dim = mean.numel()
    comp = comp.reshape(comp.shape[0], -1) if comp.ndim in (2, 3) else comp
    if comp.ndim != 2 or comp.shape[1] != dim or std.reshape(-1).shape[0] != comp.shape[0]:
        raise ValueError(f"GANSpace PCA file {path}: shapes mean {tuple(data['mean'].shape)}, comp "
                         f"{tuple(data['comp'].shape)}, std {tuple(data['std'].shape)} do not fit "
                         "[1, D], [K, 1, D], [K]")
    return {"mean": mean.reshape(1, dim), "comp": comp.unsqueeze(1), "std": std.reshape(-1)}


def apply_ganspace(ws, pca, index, start, end, strengths):
    """e4e's GANSpace edit (``editings/ganspace.py``), ws [B, n_latent, D] -> [S, B, n_latent, D].

    For component c = comp[index] with spread σ = std[index], the code's coordinate is read from its
    first row, t = ⟨w₀ − mean, c⟩ / σ, and rows [start, end) are shifted by (s − t)·σ·c: the strength
    s is the target coordinate in standard deviations, not an offset (s = t leaves the code as is).
    """
    if ws.ndim != 3:
        raise ValueError(f"apply_ganspace: ws must be [B, n_latent, D], got {tuple(ws.shape)}")
    n_comp, n_latent = pca["comp"].shape[0], ws.shape[1]
    if not 0 <= index < n_comp:
        raise ValueError(f"apply_ganspace: component {index} out of range [0, {n_comp - 1}]")
    if not 0 <= start < end <= n_latent:
        raise ValueError(f"apply_ganspace: layer range [{start}, {end}) must lie within [0, {n_latent}]")
    comp = pca["comp"][index].reshape(-1).to(ws)
    sigma = pca["std"][index].to(ws)
    coord = ((ws[:, 0] - pca["mean"].reshape(-1).to(ws)) @ comp) / sigma  # [B]
    s = torch.as_tensor(strengths, dtype=ws.dtype, device=ws.device).reshape(-1, 1)
    delta = ((s - coord) * sigma)[..., None, None] * comp  # [S, B, 1, D]
    mask = torch.zeros(n_latent, 1, dtype=ws.dtype, device=ws.device)
    mask[start:end] = 1
    return ws.unsqueeze(0) + delta * mask
