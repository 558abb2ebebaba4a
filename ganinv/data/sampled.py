"""Images sampled from a generator together with their ground-truth latents."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset


class GeneratorSampledDataset(Dataset):
    """Item i -> ``{"x": G(ws), "y": G(ws), "ws": ws}`` with ws [n_latent, D] and images [3, S, S] clamped
    to [-1, 1], all float32 on the CPU.

    For in-domain encoder training and latent-recovery metrics. z_i ~ N(0, I) comes from a generator
    seeded by (seed, i); w_i = mapping(z_i), truncated by ``truncation`` towards ``generator.latent_avg``
    (or, if unset, the mean of 4096 mapped samples drawn with ``seed``); ws = w_i repeated per layer.
    noise_mode 'random' draws per-item noise maps from the same seeded stream, so every item is
    reproducible. Synthesis runs under no_grad on the generator's device; a DataLoader batch is
    synthesised together (``__getitems__``) in forward passes of at most batch_size images, so items are
    identical across access patterns up to float rounding. Keep num_workers=0 if the generator is on a GPU.
    """

    def __init__(
        self,
        generator: nn.Module,
        length: int,
        seed: int = 0,
        truncation: float = 1.0,
        noise_mode: str = "const",
        batch_size: int = 16,
    ):
        if noise_mode not in ("const", "random", "none"):
            raise ValueError(f"noise_mode must be 'const', 'random' or 'none', got {noise_mode!r}")
        if length < 0 or batch_size < 1:
            raise ValueError(f"need length >= 0 and batch_size >= 1, got {length}, {batch_size}")
        self.generator, self.length, self.seed = generator, length, seed
        self.truncation, self.noise_mode, self.batch_size = truncation, noise_mode, batch_size
        self.center = None
        if truncation != 1:
            avg = generator.latent_avg
            self.center = avg.reshape(1, -1) if avg is not None else generator.mean_latent(4096, seed=seed)

    def __len__(self) -> int:
        return self.length

    def _item_stream(self, index: int) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, index]).generate_state(2, np.uint32)
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    @torch.no_grad()
    def _render(self, indices: list[int]) -> dict[str, Tensor]:
        g = self.generator
        device = next(g.parameters()).device
        zs, noises = [], []
        for i in indices:
            stream = self._item_stream(i)
            zs.append(torch.randn(g.style_dim, generator=stream))
            if self.noise_mode == "random":
                shapes = [getattr(g.noises, f"noise_{k}").shape[1:] for k in range(g.num_layers)]
                noises.append([torch.randn(shape, generator=stream) for shape in shapes])
        w = g.mapping(torch.stack(zs).to(device), self.truncation, self.center)
        ws = g.broadcast(w)
        noise = self.noise_mode
        if noise == "random":
            noise = [torch.stack(maps).to(device) for maps in zip(*noises)]
        images = g.synthesis(ws, noise).clamp(-1, 1)
        return {"images": images.float().cpu(), "ws": ws.float().cpu().contiguous()}

    def __getitems__(self, indices: list[int]) -> list[dict[str, Tensor]]:
        for i in indices:
            if not 0 <= i < self.length:
                raise IndexError(f"index {i} out of range for a dataset of length {self.length}")
        items = []
        for start in range(0, len(indices), self.batch_size):
            out = self._render(indices[start : start + self.batch_size])
            items += [{"x": im, "y": im, "ws": ws} for im, ws in zip(out["images"], out["ws"])]
        return items

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return self.__getitems__([index])[0]
