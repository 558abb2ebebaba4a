"""What the optimisation family and PTI share: a LightningModule that owns its target images, and
the helpers around it (the projectors' w statistics, pSp's face_pool resize).

Images are in [-1, 1]; targets are [N, 3, H, H] with H dividing the generator's size.
"""
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from .base import check_precision


@torch.no_grad()
def w_statistics(generator, n=10000, seed=0):
    """Mean w [D] and spread σ_w = sqrt(Σ‖w − w̄‖² / n) of ``n`` mapped z ~ N(0, I) (the
    projectors' w_avg and w_std), from a fixed seed so runs are reproducible."""
    device = next(generator.parameters()).device
    z = torch.randn(n, generator.style_dim, generator=torch.Generator().manual_seed(seed)).to(device)
    w = torch.cat([generator.mapping(chunk) for chunk in z.split(4096)])
    mean = w.mean(0)
    return mean, ((w - mean).pow(2).sum() / n).sqrt().item()


def device_of(module, default):
    """Where a module's parameters live (``default`` for callables without parameters)."""
    params = module.parameters() if isinstance(module, nn.Module) else ()
    return next((p.device for p in params), default)


def fit_to(img, size):
    """Average-pool generator outputs [B, 3, S, S] down to ``size`` (pSp's face_pool); as is when equal."""
    return img if tuple(img.shape[-2:]) == tuple(size) else F.adaptive_avg_pool2d(img, size)


class TargetsModule(pl.LightningModule):
    """A LightningModule that owns its target images [N, 3, H, W] (a buffer) and runs a fixed
    number of steps from ``trainer.fit(module)`` with no datamodule. Frozen networks it holds
    stay in eval mode. Subclasses implement ``training_step`` with manual optimisation."""

    def __init__(self, generator, targets, total_steps, keys=None):
        super().__init__()
        if targets.ndim != 4 or targets.shape[1] != 3 or targets.shape[2] != targets.shape[3]:
            raise ValueError(f"targets must be square images [N, 3, H, H], got {tuple(targets.shape)}")
        size, out = targets.shape[-1], generator.size
        if size > out or out % size:
            raise ValueError(f"targets are {size} px but the generator makes {out} px images; "
                             f"the target size must divide the generator's")
        keys = [str(i) for i in range(len(targets))] if keys is None else [str(k) for k in keys]
        if len(keys) != len(targets):
            raise ValueError(f"keys: {len(keys)} given for {len(targets)} targets")
        self.automatic_optimization = False
        self.generator = generator
        self.keys = keys
        self.total_steps = int(total_steps)
        self.register_buffer("targets", targets.detach().float().clone())
        self.history = []  # per step: loss per image [N]
        self.result = None

    @property
    def num_images(self):
        return self.targets.shape[0]

    def train(self, mode=True):
        # Nothing here learns through train-mode behaviour; frozen G/E/LPIPS/VGG must stay in eval.
        return super().train(False)

    def train_dataloader(self):
        # The module owns its data: one "epoch" is the optimisation, one item per step.
        return range(self.total_steps)

    def setup(self, stage):
        check_precision(self.trainer)

    def shard(self):
        """Indices of the images this rank computes: a contiguous slice of range(N)."""
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self._trainer else (1, 0)
        return torch.arange(self.num_images, device=self.targets.device).tensor_split(world)[rank]

    def world_size(self):
        return self.trainer.world_size if self._trainer else 1

    def gather(self, rows, values):
        """Per-image values of this rank's rows -> the full [N] vector on every rank."""
        full = values.new_zeros(self.num_images)
        full[rows] = values.detach().to(full.dtype)
        if self.world_size() > 1:
            full = self.trainer.strategy.reduce(full, reduce_op="sum")
        return full

    def zero_loss(self):
        """A zero connected to every trainable parameter: a rank with no images still takes part
        in DDP's gradient all-reduce."""
        return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0

    def log_curves(self, name, per_image):
        self.history.append(per_image.detach().cpu())
        logs = {f"{name}/{key}": v for key, v in zip(self.keys, per_image)}
        logs[f"{name}/total"] = per_image.sum()
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=1)

    @property
    def curves(self):
        """Loss per step and image: [steps run, N]."""
        return torch.stack(self.history) if self.history else torch.zeros(0, self.num_images)

    def on_train_epoch_end(self):
        # One pass over the steps is the whole run, whatever the trainer's max_epochs.
        self.trainer.should_stop = True

    def on_train_end(self):
        # Here the module is still on the accelerator (Lightning moves it to CPU at teardown);
        # every rank holds every image's parameters, so every rank has the results.
        self.result = self.reconstruct()
