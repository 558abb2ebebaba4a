"""Progress of ganinv runs, as Lightning callbacks.

- :class:`StepProgress`: a log line every ``every_n`` steps of a module that runs a fixed number of
  steps, one per batch (the optimisation family and PTI, ``ganinv.methods.targets.TargetsModule``):
  steps done / total, the summed loss and each image's, steps per second and the time left.
  Without it nothing shows until the whole batch of images is inverted.
- :class:`StepProgressBar`: train.py's tqdm bar counting optimizer steps against
  ``trainer.max_steps`` over the whole run ("120/1000", also after a resume), instead of
  Lightning's default, which with ``max_steps`` and ``max_epochs=-1`` reads "Epoch 0/-2".
- :class:`LogLastStep`: the last training step's metrics reach the loggers (``csv/metrics.csv``)
  even when ``log_every_n_steps`` does not divide ``max_steps`` (Lightning logs only every
  n-th step, so a 3-step run with ``log_every_n_steps=10`` logged nothing).
"""
import datetime
import logging
import math
import time

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar

LOG = logging.getLogger(__name__)


def format_seconds(seconds):
    """``H:MM:SS`` of a duration (``?`` when unknown)."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    return str(datetime.timedelta(seconds=round(seconds)))


class StepProgress(pl.Callback):
    """Log ``<name>: step <done>/<total> loss <sum> (<key> <loss>, ...) <rate> step/s ETA <H:MM:SS>``
    through the ``ganinv.progress`` logger (INFO; Hydra's drivers print it and write it to the
    run's log) on global rank zero, every ``every_n`` steps, at the last step and, when a run stops
    early (all images met their stopping rule), at its last step. ``every_n=0``: no lines.

    Steps done is ``batch_idx + 1`` (each batch is one step), out of ``pl_module.total_steps``
    (``trainer.max_steps`` for other modules). The loss is the last row of ``pl_module.history``
    (the per-image losses [N] that ``TargetsModule.log_curves`` records), summed as the logged
    ``<name>/total``; a module without ``history`` shows the logged metric ``metric`` instead.
    At most ``max_images`` per-image values are listed. The label is ``pl_module.hparams.name``
    (``batch_00000`` in invert.py) when the module has one, else ``label``.
    """

    def __init__(self, every_n=50, metric="train/loss", max_images=8, label="run"):
        if not isinstance(every_n, int) or every_n < 0:
            raise ValueError(f"StepProgress every_n must be an int >= 0, got {every_n!r}")
        self.every_n, self.metric, self.max_images, self.label = every_n, metric, max_images, label
        self.start, self.last_shown, self.done = None, 0, 0

    @staticmethod
    def total_steps(trainer, pl_module):
        total = getattr(pl_module, "total_steps", None)
        return int(total) if total is not None else int(trainer.max_steps)

    def name(self, pl_module):
        hparams = getattr(pl_module, "hparams", {})
        return str(hparams.get("name", self.label)) if hasattr(hparams, "get") else self.label

    def on_train_start(self, trainer, pl_module):
        self.start, self.last_shown, self.done = time.perf_counter(), 0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.done = batch_idx + 1
        total = self.total_steps(trainer, pl_module)
        if self.every_n and (self.done % self.every_n == 0 or self.done == total):
            self.show(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        if self.every_n and self.done and self.done != self.last_shown:  # stopped early
            self.show(trainer, pl_module)

    def losses(self, trainer, pl_module):
        """(total loss or None, [(key, loss)]) of the last step."""
        history = getattr(pl_module, "history", None)
        if history:
            per_image = history[-1].detach().float().cpu()
            keys = getattr(pl_module, "keys", None) or [str(i) for i in range(len(per_image))]
            return float(per_image.sum()), list(zip(keys, per_image.tolist()))
        value = trainer.callback_metrics.get(self.metric)
        return (None if value is None else float(value)), []

    def line(self, trainer, pl_module):
        """The progress line of the step just done."""
        total = self.total_steps(trainer, pl_module)
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else math.inf
        eta = (total - self.done) / rate if rate > 0 else None
        loss, per_image = self.losses(trainer, pl_module)
        text = f"{self.name(pl_module)}: step {self.done}/{total}"
        if loss is not None:
            text += f" loss {loss:.6g}"
        if per_image:
            shown = ", ".join(f"{key} {value:.4g}" for key, value in per_image[:self.max_images])
            more = f", +{len(per_image) - self.max_images} more" if len(per_image) > self.max_images else ""
            text += f" ({shown}{more})"
        return f"{text} {rate:.2f} step/s ETA {format_seconds(eta)}"

    def show(self, trainer, pl_module):
        self.last_shown = self.done
        if trainer.is_global_zero:
            LOG.info(self.line(trainer, pl_module))


class StepProgressBar(TQDMProgressBar):
    """Lightning's tqdm progress bar, counting ``trainer.global_step`` (optimizer steps, what
    ``max_steps`` limits: a GAN step of G and D counts two) out of ``trainer.max_steps`` for the
    whole run, so a resumed run starts at its step; described as ``train``. With ``max_steps=-1``
    (an epoch budget) it is Lightning's bar ("Epoch N"). Validation bars are Lightning's."""

    @property
    def train_description(self):
        return "train"

    def count_steps(self, trainer):
        """Make the (fresh) train bar count global steps out of max_steps."""
        bar = self.train_progress_bar
        bar.total = trainer.max_steps
        bar.n = bar.initial = trainer.global_step  # tqdm's rate counts from `initial`
        bar.refresh()

    def on_train_start(self, trainer, *args):
        super().on_train_start(trainer, *args)
        if trainer.max_steps > 0:
            self.count_steps(trainer)

    def on_train_epoch_start(self, trainer, *args):
        if trainer.max_steps <= 0:
            return super().on_train_epoch_start(trainer, *args)
        if self.train_progress_bar.disable and self.is_enabled:  # closed at the previous epoch's end (leave=True)
            self.train_progress_bar = self.init_train_tqdm()
            self.count_steps(trainer)
        return None  # one bar over the epochs

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.max_steps <= 0:
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar = self.train_progress_bar
        last = trainer.global_step >= trainer.max_steps
        if bar is not None and self.is_enabled and ((batch_idx + 1) % self.refresh_rate == 0 or last):
            bar.n = min(trainer.global_step, trainer.max_steps)
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            bar.refresh()
        return None


class LogLastStep(pl.Callback):
    """At the step that reaches ``trainer.max_steps``, have Lightning send that step's metrics to
    the loggers although ``log_every_n_steps`` does not divide it: the logging interval is set to
    1 for that step only (Lightning checks ``step % trainer.log_every_n_steps`` right after
    ``on_train_batch_end``) and restored before validation and at the end of training."""

    def __init__(self):
        self.saved = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if 0 < trainer.max_steps <= trainer.global_step and trainer.log_every_n_steps > 1 and self.saved is None:
            self.saved = trainer.log_every_n_steps
            trainer.log_every_n_steps = 1

    def restore(self, trainer):
        if self.saved is not None:
            trainer.log_every_n_steps = self.saved
            self.saved = None

    def on_validation_start(self, trainer, pl_module):
        self.restore(trainer)

    def on_train_end(self, trainer, pl_module):
        self.restore(trainer)
