"""e4e latent-code discriminator and its history pool (e4e ``models/discriminator.py``,
``models/latent_codes_pool.py``)."""
import random

import torch
from torch import nn


class LatentCodesDiscriminator(nn.Module):
    """MLP on single codes: (n_mlp-1) x [Linear(d, d), LeakyReLU(0.2)], Linear(d, 1).

    w [..., style_dim] -> logits [..., 1]. Plain ``nn.Linear`` layers under ``mlp.N`` as official.
    """

    def __init__(self, style_dim=512, n_mlp=4):
        super().__init__()
        self.style_dim = style_dim
        layers = []
        for _ in range(n_mlp - 1):
            layers += [nn.Linear(style_dim, style_dim), nn.LeakyReLU(0.2)]
        layers.append(nn.Linear(style_dim, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, w):
        return self.mlp(w)


class LatentCodesPool:
    """History buffer of past codes for the latent discriminator (the CycleGAN image pool for w).

    ``query(ws)`` takes w [B, D] or W+ [B, n, D]; from W+ it keeps one random row per sample, as
    the official does, so it always returns [B, D]. Until ``pool_size`` codes are stored each
    code is stored and returned; afterwards, with probability 1/2 a code is returned as is,
    otherwise it replaces a random stored code and that older code is returned.
    ``pool_size=0`` returns ``ws`` unchanged. ``rng`` is a ``random.Random`` (default: the
    global ``random`` module, like the official).
    """

    def __init__(self, pool_size=50, rng=None):
        self.pool_size = pool_size
        self.rng = random if rng is None else rng
        self.ws = []

    def query(self, ws):
        if self.pool_size == 0:
            return ws
        out = []
        for w in ws:
            if w.ndim == 2:
                w = w[self.rng.randint(0, len(w) - 1)]
            out.append(self._swap(w))
        return torch.stack(out, 0)

    def _swap(self, w):
        # Stored codes are detached: they are returned in later steps, after their graph is gone.
        if len(self.ws) < self.pool_size:
            self.ws.append(w.detach())
            return w
        if self.rng.uniform(0, 1) > 0.5:
            j = self.rng.randint(0, self.pool_size - 1)
            old, self.ws[j] = self.ws[j].clone(), w.detach()
            return old
        return w
