"""StyleALAE checkpoints (the official ``Checkpointer`` ``.pth`` of podgorskiy/ALAE or a ganinv export,
:mod:`ganinv.checkpoints.alae`) as invert.py's method=PATH: x -> w = E(x) -> G(w), as the official
``interactive_demo.py`` / ``make_figures`` reconstructions.

ALAE has one w per image ([B, D]); :class:`ALAEEncoder` broadcasts it to every style input of its
decoder, W+ [B, 2·layer_count, D] with all rows equal, so the latents files have invert.py's shape
[n_latent, D]. :class:`ALAEGenerator` decodes such codes. Deviation: reconstructions are decoded
without per-pixel noise (``noise=False``, deterministic re-runs); the official inference adds random
noise (``noise=True``).
"""
from torch import nn

from ..checkpoints.alae import load_alae
from ..checkpoints.safe import load_torch


def is_alae_file(path):
    """Whether ``path`` is an ALAE checkpoint: a dict with a ``models`` dict (official and ours)."""
    try:
        ckpt = load_torch(path, "checkpoint")
    except (ValueError, OSError):
        return False
    return isinstance(ckpt, dict) and isinstance(ckpt.get("models"), dict)


class ALAEGenerator(nn.Module):
    """The ALAE decoder with the generator interface invert.py uses: ``size``, ``n_latent``
    (2·layer_count style inputs), ``style_dim`` and ``synthesis(ws [B, n_latent, D], noise_mode)``
    -> images [B, 3, size, size] in ~[-1, 1] (``noise_mode="const"``: no noise)."""

    def __init__(self, inverter):
        super().__init__()
        self.inverter = inverter
        self.size = inverter.size
        self.n_latent = 2 * inverter.config.layer_count
        self.style_dim = inverter.config.latent_size

    def synthesis(self, ws, noise_mode="const"):
        return self.inverter.decode(ws, noise=noise_mode != "const")


class ALAEEncoder(nn.Module):
    """The ALAE encoder as an inverter: ``encode(x [B, 3, h, w])`` -> W+ [B, n_latent, D] (E(x)
    broadcast to every layer; one pass, so ``return_steps`` gives one entry), ``generator``."""

    restyle = False

    def __init__(self, inverter):
        super().__init__()
        self.alae = inverter
        self.generator = ALAEGenerator(inverter)

    def encode(self, x, n_iters=None, return_steps=False):
        if n_iters is not None:
            raise ValueError("restyle_iters applies to ReStyle checkpoints only, not to an ALAE checkpoint")
        w = self.alae.encode(x)
        codes = w[:, None].expand(-1, self.generator.n_latent, -1)
        return [codes] if return_steps else codes


def load_alae_encoder(path, device="cpu"):
    """An :class:`ALAEEncoder` of an ALAE file (EMA nets, the file's own config), eval, frozen."""
    return ALAEEncoder(load_alae(path, device=device)).eval().requires_grad_(False)
