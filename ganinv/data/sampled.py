"""Images sampled from a generator together with their ground-truth latents (in-domain encoder
training, latent-recovery metrics, and the G(w) -> w pairs of pbaylies/stylegan-encoder
``train_resnet.py`` ``generate_dataset_main``)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset


class GeneratorSampledDataset(Dataset):
    """Item i -> ``{"x": G(ws), "y": G(ws), "ws": ws}`` with ws [n_latent, D] and images [3, S, S] clamped
    to [-1, 1], all float32 on the CPU.

    For in-domain encoder training and latent-recovery metrics. z_i ~ N(0, I) comes from a generator
    seeded by (seed, i); w_i = mapping(z_i), truncated by ``truncation`` towards ``generator.latent_avg``
    (or, if unset, the mean of 4096 mapped samples drawn with ``seed``); ws = w_i repeated per layer
    (see ``style_groups``).
    noise_mode 'random' draws per-item noise maps from the same seeded stream, so every item is
    reproducible. Synthesis runs under no_grad on the generator's device; a DataLoader batch is
    synthesised together (``__getitems__``) in forward passes of at most batch_size images, so items are
    identical across access patterns up to float rounding. Keep num_workers=0 if the generator is on a GPU;
    :meth:`render` gives batched tensors on the generator's device (training on the fly).

    The two options of pbaylies' ``generate_dataset_main`` (``train_resnet.py``):

    - ``mirror``: "negative truncation" pairs: items 2k and 2k+1 share their z (drawn from the stream of
      (seed, k)); the odd one is truncated with -truncation, i.e. reflected through the centre.
    - ``style_groups``: each item is made of several w's, each driving consecutive layers: with
      probability 1/2 n_latent/2 groups of 2 layers, else 3 groups of n_latent/3 layers (2 groups of
      n_latent/2 when n_latent is not a multiple of 3). Official: the coin is drawn once per generated
      chunk; here per item.

    ``split``: an extra key of the per-item streams (e.g. 1 for a held-out set of the same seed);
    None keeps the plain (seed, index) streams.
    """

    def __init__(
        self,
        generator: nn.Module,
        length: int,
        seed: int = 0,
        truncation: float = 1.0,
        noise_mode: str = "const",
        batch_size: int = 16,
        mirror: bool = False,
        style_groups: bool = False,
        split: int | None = None,
    ):
        if noise_mode not in ("const", "random", "none"):
            raise ValueError(f"noise_mode must be 'const', 'random' or 'none', got {noise_mode!r}")
        if length < 0 or batch_size < 1:
            raise ValueError(f"need length >= 0 and batch_size >= 1, got {length}, {batch_size}")
        self.generator, self.length, self.seed = generator, length, seed
        self.truncation, self.noise_mode, self.batch_size = truncation, noise_mode, batch_size
        self.mirror, self.style_groups, self.split = mirror, style_groups, split
        self.center = None
        if truncation != 1 or mirror:
            avg = generator.latent_avg
            self.center = avg.reshape(1, -1) if avg is not None else generator.mean_latent(4096, seed=seed)

    def __len__(self):
        return self.length

    def _item_stream(self, index):
        """torch.Generator seeded by (seed, [split,] index): item ``index``'s z, truncation and noise."""
        key = [self.seed, index] if self.split is None else [self.seed, self.split, index]
        state = np.random.SeedSequence(key).generate_state(2, np.uint32)
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    def _groups(self, stream):
        """How many w's make one item (1 without ``style_groups``)."""
        n = self.generator.n_latent
        if not self.style_groups:
            return 1
        if torch.randint(2, (1,), generator=stream).item():
            return n // 2
        return 3 if n % 3 == 0 else 2

    @torch.no_grad()
    def _render(self, indices):
        g = self.generator
        device = next(g.parameters()).device
        zs, groups, psis, noises = [], [], [], []
        for i in indices:
            stream = self._item_stream(i // 2 if self.mirror else i)
            groups.append(self._groups(stream))
            zs.append(torch.randn(groups[-1], g.style_dim, generator=stream))
            psis += [-self.truncation if self.mirror and i % 2 else self.truncation] * groups[-1]
            if self.noise_mode == "random":
                shapes = [getattr(g.noises, f"noise_{k}").shape[1:] for k in range(g.num_layers)]
                noises.append([torch.randn(shape, generator=stream) for shape in shapes])
        w = g.mapping(torch.cat(zs).to(device))
        if self.center is not None:
            psi = torch.tensor(psis, device=device, dtype=w.dtype)[:, None]
            w = g.truncate(w, psi, self.center.to(device))
        # item k: its groups' w's, each repeated over n_latent / groups consecutive layers
        ws = torch.stack([part.repeat_interleave(g.n_latent // len(part), 0) for part in w.split(groups)])
        noise = self.noise_mode
        if noise == "random":
            noise = [torch.stack(maps).to(device) for maps in zip(*noises)]
        return {"images": g.synthesis(ws, noise).clamp(-1, 1), "ws": ws}

    def render(self, indices):
        """Items ``indices`` as batched tensors on the generator's device, in its dtype: ``images``
        [n, 3, S, S] in [-1, 1] and ``ws`` [n, n_latent, D] (synthesised ``batch_size`` at a time)."""
        for i in indices:
            if not 0 <= i < self.length:
                raise IndexError(f"index {i} out of range for a dataset of length {self.length}")
        parts = [self._render(indices[start : start + self.batch_size])
                 for start in range(0, len(indices), self.batch_size)]
        return {key: torch.cat([part[key] for part in parts]) for key in ("images", "ws")}

    def __getitems__(self, indices):
        out = self.render(indices)
        images, ws = out["images"].float().cpu(), out["ws"].float().cpu()
        return [{"x": im, "y": im, "ws": w.contiguous()} for im, w in zip(images, ws)]

    def __getitem__(self, index):
        return self.__getitems__([index])[0]
