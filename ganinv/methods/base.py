"""What every ganinv LightningModule shares: iteration counting, EMA, image grids."""
import copy
import random
from pathlib import Path

import torch
import torchvision

from ..checkpoints.safe import atomic_write


def step_uncounted(optimizer):
    """Step a Lightning-wrapped optimizer without advancing ``trainer.global_step``.

    Under manual optimisation Lightning counts every ``LightningOptimizer.step()`` in
    ``global_step``; a method with several optimizers steps all but one through this so that
    ``global_step`` (and with it ``max_steps``, schedules and logs) counts iterations.
    Mixed precision here is bf16 (no grad scaler), so the raw step is the whole step.
    """
    optimizer.optimizer.step()


def offset_seed_by_rank(trainer):
    """``seed_everything`` gives every DDP rank the same seed; offset the torch and Python RNGs
    by rank so ranks draw different z / noise / mixing / pool decisions (no-op on one process)."""
    if trainer is not None and trainer.world_size > 1:
        seed = torch.initial_seed() + 1000003 * trainer.global_rank
        torch.manual_seed(seed)
        random.seed(seed)


def check_precision(trainer):
    if trainer is not None and str(trainer.precision).startswith("16"):
        raise ValueError("trainer.precision=16-mixed is not supported by ganinv methods (manual "
                         "optimisation with several optimizers); use bf16-mixed or 32")


@torch.no_grad()
def ema_update(target, source, decay):
    """target <- decay * target + (1 - decay) * source, over parameters; buffers copied."""
    for pt, ps in zip(target.parameters(), source.parameters()):
        pt.lerp_(ps.detach(), 1 - decay)
    for bt, bs in zip(target.buffers(), source.buffers()):
        bt.copy_(bs)


def frozen_copy(module):
    """A deep copy in eval mode with requires_grad False (e.g. an EMA generator)."""
    clone = copy.deepcopy(module).eval()
    clone.requires_grad_(False)
    return clone


def image_grid(rows, nrow=None):
    """rows: list of [B, 3, H, W] tensors in [-1, 1] of equal shape -> uint8-ready grid [3, H', W']
    in [0, 1], one row per sample, columns in the order given (e.g. input | recon | target)."""
    rows = [r.detach().float().cpu().clamp(-1, 1) for r in rows]
    stacked = torch.stack(rows, 1).flatten(0, 1)  # [B * len(rows), 3, H, W]
    return torchvision.utils.make_grid(stacked, nrow=nrow or len(rows), normalize=True, value_range=(-1, 1))


def log_grid(module, name, rows, caption=None):
    """Log an image grid to every logger that takes images (W&B) and save it as PNG under the
    run's ``images/`` folder (atomic write), named by iteration. Rank 0 only."""
    trainer = module.trainer
    if trainer is None or not trainer.is_global_zero:
        return
    grid = image_grid(rows)
    step = trainer.global_step
    for logger in trainer.loggers:
        if hasattr(logger, "log_image"):
            extra = {"caption": [caption]} if caption else {}
            logger.log_image(key=name, images=[grid], step=step, **extra)
    out = Path(trainer.default_root_dir) / "images" / f"{name.replace('/', '_')}_{step:07d}.png"
    atomic_write(out, lambda f: torchvision.utils.save_image(grid, f, format="png"))


def rng_state():
    """Python and torch CPU RNG states, stored in checkpoints so a resumed run draws the same
    z/noise/pool decisions as an uninterrupted one."""
    import random

    return {"python": random.getstate(), "torch": torch.get_rng_state()}


def set_rng_state(state):
    if state:
        random.setstate(state["python"])
        torch.set_rng_state(state["torch"])
