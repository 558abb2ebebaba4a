"""Exports during training: the model's ``export`` file every N optimizer steps, for learning curves.

Lightning's ``ModelCheckpoint`` saves resumable ``.ckpt`` files (weights, optimizer state, the
generator and D); a learning curve needs what ``invert.py method=...`` reads, at several points of
one run. :class:`ExportEvery` writes ``<dirpath>/step_<global step:07d>.pt`` through the module's own
``export`` (pSp/e4e/ReStyle/IDInvert: the official checkpoint layout), atomically, on global rank 0.
``experiments/sweep/curves.py`` turns them into curves of the sweep's yardsticks.

    python train.py +method=psp +callbacks.export_every._target_=ganinv.methods.snapshots.ExportEvery \
        +callbacks.export_every.every_n_steps=250
"""
from pathlib import Path

import pytorch_lightning as pl


def snapshot_name(step):
    """The file name of the export after ``step`` optimizer steps."""
    return f"step_{int(step):07d}.pt"


class ExportEvery(pl.Callback):
    """Call ``pl_module.export(dirpath / snapshot_name(step))`` after every ``every_n_steps``-th
    optimizer step (``trainer.global_step``, so a resumed run continues the same grid) and, with
    ``at_end``, after the last one. ``dirpath=None``: ``<trainer.default_root_dir>/snapshots``.
    """

    def __init__(self, every_n_steps, dirpath=None, at_end=True):
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"ExportEvery every_n_steps must be an int >= 1, got {every_n_steps!r}")
        self.every_n_steps, self.dirpath, self.at_end = every_n_steps, dirpath, at_end
        self.last = None

    def folder(self, trainer):
        return Path(self.dirpath) if self.dirpath else Path(trainer.default_root_dir) / "snapshots"

    def export(self, trainer, pl_module):
        step = trainer.global_step
        if step == self.last or not trainer.is_global_zero:
            return
        path = self.folder(trainer) / snapshot_name(step)
        path.parent.mkdir(parents=True, exist_ok=True)
        pl_module.export(path)
        self.last = step

    def setup(self, trainer, pl_module, stage):
        if not callable(getattr(pl_module, "export", None)):
            raise ValueError(f"callbacks.export_every: {type(pl_module).__name__} has no export() to call")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step > 0 and trainer.global_step % self.every_n_steps == 0:
            self.export(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        if self.at_end:
            self.export(trainer, pl_module)
