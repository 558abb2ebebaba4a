"""A guard against NaN/Inf training losses: stop with the step and the loss name, or skip the update."""
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

ACTIONS = ("stop", "skip")


class NonFiniteLossError(FloatingPointError):
    """A logged training loss became NaN or ±Inf; the message names the step and the losses."""


class NonFiniteLossGuard(pl.Callback):
    """Checks the logged training losses (``trainer.callback_metrics`` whose name starts with one of
    ``prefixes``) after every batch.

    ``action='stop'``: raise :class:`NonFiniteLossError`, one line such as
    ``non-finite loss train/loss_l2=nan at step 12``, where the step is ``trainer.global_step`` when
    the batch began (0: the first update). Lightning runs checkpoint callbacks after all others, so
    the weights of that step are never saved.

    ``action='skip'``: an optimizer step whose gradients hold a NaN/Inf is dropped (its gradients
    are set to None, so parameters and optimizer state stay as they were) and training goes on with
    a warning naming the step; after ``max_consecutive_skips`` such batches in a row the run stops as
    above. Gradients are checked where every update passes: ``on_before_optimizer_step`` (after the
    backward of automatic optimisation) and a step pre-hook on each torch optimizer (manual
    optimisation, including the uncounted steps of :func:`ganinv.methods.base.step_uncounted`).
    State a method keeps outside its optimizers (e4e's pool of fake latents) may still take in the
    values of a skipped batch. Under DDP the decision is reduced over all processes.
    """

    def __init__(self, action="stop", prefixes=("train/",), max_consecutive_skips=20):
        if action not in ACTIONS:
            raise ValueError(f"NonFiniteLossGuard: action must be one of {', '.join(ACTIONS)}, got {action!r}")
        self.action, self.prefixes = action, tuple(prefixes)
        self.max_consecutive_skips = max_consecutive_skips
        self._hooks, self._step, self._dropped, self._in_a_row = [], 0, 0, 0

    def _drop_if_nonfinite(self, optimizer):
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if params and not torch.stack([p.grad.isfinite().all() for p in params]).all():
            for p in params:
                p.grad = None
            self._dropped += 1

    def on_train_start(self, trainer, pl_module):
        if self.action == "skip":
            self._hooks = [opt.register_step_pre_hook(lambda opt, args, kwargs: self._drop_if_nonfinite(opt))
                           for opt in trainer.optimizers]

    def _remove_hooks(self):
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def on_train_end(self, trainer, pl_module):
        self._remove_hooks()

    def on_exception(self, trainer, pl_module, exception):
        self._remove_hooks()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.action == "skip":
            self._drop_if_nonfinite(optimizer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._step, self._dropped = trainer.global_step, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        bad = {name: float(value) for name, value in trainer.callback_metrics.items()
               if name.startswith(self.prefixes) and not torch.as_tensor(value).isfinite().all()}
        local = self._dropped > 0 if self.action == "skip" else bool(bad)
        if not trainer.strategy.reduce_boolean_decision(local, all=False):
            self._in_a_row = 0
            return
        if bad:
            what = "loss " + ", ".join(f"{name}={value:g}" for name, value in sorted(bad.items()))
        else:
            what = "gradients" if self._dropped else "loss in another process"
        message = f"non-finite {what} at step {self._step}"
        if self.action == "stop":
            raise NonFiniteLossError(message)
        self._in_a_row += 1
        if self._in_a_row >= self.max_consecutive_skips:
            raise NonFiniteLossError(f"{message}; {self._in_a_row} updates in a row were skipped, stopping")
        rank_zero_warn(f"skipped the update of step {self._step}: {message}")
