"""Timed calls: ganinv's alone, or interleaved with the official code's; the Trainer step timer."""
import json
import time
from pathlib import Path

import torch


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    """Seconds of one call of ``fn`` (CUDA work included)."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def time_calls(fn, warmup, repeats, device):
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    return [timed(fn, device) for _ in range(repeats)]


def time_interleaved(ours, official, warmup, repeats, device, after_warmup=None):
    """Side by side: ``warmup`` untimed calls of ``ours`` (then ``after_warmup()``, e.g. to read
    its peak memory before the official code runs at all) and of ``official``, then ``repeats``
    rounds of official, ours, official, ours, ... so that drift of the machine hits both alike.
    -> (our seconds, official seconds), one per round."""
    for _ in range(warmup):
        ours()
    if after_warmup is not None:
        after_warmup()
    for _ in range(warmup):
        official()
    our_times, official_times = [], []
    for _ in range(repeats):
        official_times.append(timed(official, device))
        our_times.append(timed(ours, device))
    return our_times, official_times


class StepTimes:
    """Records ``time.perf_counter()`` at the start and end of every training batch (after a CUDA
    sync); with ``count_flops``, the first batch runs under ``FlopCounterMode`` (it is a warm-up
    step, never timed). With ``path``, rank 0 writes ``{"start": [...], "end": [...]}`` there at
    the end of training (``train.py`` runs add it as
    ``+callbacks.bench_timer._target_=speedbench.timing.step_timer``)."""

    def __init__(self, path=None, count_flops=False):
        super().__init__()
        self.path, self.start, self.end = path, [], []
        self.counter = None
        if count_flops:
            from torch.utils.flop_counter import FlopCounterMode

            self.counter = FlopCounterMode(display=False)
        self.flops = None

    def _now(self, trainer):
        sync(trainer.strategy.root_device)
        return time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.counter is not None and not self.start:
            self.counter.__enter__()
        self.start.append(self._now(trainer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.end.append(self._now(trainer))
        if self.counter is not None and len(self.end) == 1:
            self.counter.__exit__(None, None, None)
            self.flops = self.counter.get_total_flops()

    def on_train_end(self, trainer, pl_module):
        if self.path and trainer.is_global_zero:
            Path(self.path).write_text(json.dumps({"start": self.start, "end": self.end}))

    def step_times(self, warmup):
        return [e - s for s, e in zip(self.start, self.end)][warmup:]


def step_timer(path=None, count_flops=False):
    """A Lightning callback with ``StepTimes``' hooks. Lightning is imported here, not at the top,
    so that measurements without a Trainer do not pay for (or count the memory of) importing it."""
    import pytorch_lightning as pl

    return type("StepTimer", (StepTimes, pl.Callback), {})(path, count_flops)
