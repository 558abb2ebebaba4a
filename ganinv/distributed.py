"""DDP helpers that make N ranks x batch B train like 1 process x batch N·B.

- :class:`SyncBatchNorm`: BatchNorm over the global batch, also on CPU / gloo, where
  ``torch.nn.SyncBatchNorm`` refuses to run; :class:`SyncBatchNormPlugin` puts it into a
  Lightning model for ``trainer.sync_batchnorm=true``.
- :func:`shard_randn`: this rank's rows of a normal draw seeded by (run seed, iteration), so N
  ranks together draw exactly the rows one process with the global batch draws, and ranks
  draw different rows.
"""
import hashlib
import os

import torch
import torch.distributed as dist
from pytorch_lightning.plugins.layer_sync import TorchSyncBatchNorm, _BatchNormXd
from torch.nn.modules.batchnorm import _BatchNorm

# Devices torch's own SyncBatchNorm kernels run on; elsewhere (CPU) SyncBatchNorm syncs itself.
NATIVE_SYNC_DEVICES = ("cuda", "hpu", "xpu", torch._C._get_privateuse1_backend_name())


def run_seed():
    """The run seed: ``PL_GLOBAL_SEED``, which ``pl.seed_everything`` (train.py) sets in every rank; 0 without."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def step_seed(*keys):
    """A 63-bit seed from any keys (run seed, iteration, a name for the draw, ...), stable across
    processes and Python versions (SHA-256 of their text, unlike ``hash``)."""
    digest = hashlib.sha256(":".join(map(str, keys)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def shard_randn(n, dim, *, seed, step, rank=0, world_size=1, key="z", device=None):
    """This rank's ``n`` rows of a standard normal draw of ``n·world_size`` rows.

    The full draw [n·world_size, *dim] comes from a CPU ``torch.Generator`` seeded by
    (seed, step, key) (the same on CPU and GPU runs); rank r takes rows r::world_size, the
    rows ``ShardSampler`` gives it too. So the ranks of a DDP run together draw exactly what one
    process with the global batch draws, ranks draw different rows, and a resumed run draws
    what an uninterrupted one does. ``key`` separates several draws in one iteration.
    dim: int or shape tuple. Returns [n, *dim] on ``device``.
    """
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    g = torch.Generator().manual_seed(step_seed(seed, step, key))
    full = torch.randn(n * world_size, *dims, generator=g)
    return full[rank::world_size].to(device)


def module_randn(module, n, dim, key):
    """:func:`shard_randn` for a training LightningModule: run seed, its iteration, rank and world
    size, on its device. -> [n, *dim]."""
    return shard_randn(n, dim, seed=run_seed(), step=module.global_step, rank=module.global_rank,
                       world_size=module.trainer.world_size, key=key, device=module.device)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks with autograd: the backward sums the incoming gradients over ranks, so each
    rank's inputs get the gradient of the sum of all ranks' losses (what torch's SyncBatchNorm
    backward does; ``torch.distributed.nn.functional.all_reduce`` is deprecated)."""

    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class SyncBatchNorm(_BatchNorm):
    """BatchNorm over all ranks' batches: ``torch.nn.SyncBatchNorm``'s arguments, parameters,
    buffers and state-dict names, also on devices torch's version refuses (CPU, e.g. gloo tests).

    On CPU, in training with a process group of more than one rank, the per-channel statistics
    of input [N, C, *] are those of the global batch: two sum all-reduces (sums and counts, then
    squared deviations from the global mean: stable when |mean| >> std), normalisation with the
    global biased variance, running_mean / running_var (unbiased, global count) /
    num_batches_tracked updated as ``nn.BatchNorm`` does (``momentum``, or a cumulative average
    when it is None). The all-reduces keep autograd, so after DDP averages the parameter
    gradients they equal one process's on the concatenated batch. On CUDA (and torch's other
    SyncBatchNorm devices) this runs ``torch.nn.SyncBatchNorm.forward``; in eval or one process,
    plain batch norm. Not a ``torch.nn.SyncBatchNorm`` subclass: DDP refuses those on CPU.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 process_group=None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.process_group = process_group

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def _check_non_zero_input_channels(self, input):
        if input.size(1) == 0:
            raise ValueError("SyncBatchNorm number of input channels should be non-zero")

    def forward(self, input):
        if input.device.type in NATIVE_SYNC_DEVICES:
            return torch.nn.SyncBatchNorm.forward(self, input)  # torch's kernels (needs only what is defined here)
        synced = self.training and dist.is_available() and dist.is_initialized()
        group = (self.process_group or dist.group.WORLD) if synced else None
        if not synced or dist.get_world_size(group) == 1:
            return super().forward(input)  # plain batch norm
        self._check_input_dim(input)
        self._check_non_zero_input_channels(input)
        return self._global_batch_norm(input, group)

    def _global_batch_norm(self, input, group):
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)  # per-channel [C] -> broadcast over [N, C, *]
        x = input.float()  # statistics in float32 also under bf16 autocast
        count = x.new_full((1,), x.numel() / x.shape[1])
        totals = _AllReduceSum.apply(torch.cat([x.sum(dims), count]), group)
        n = totals[-1].detach()
        if n <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got {int(n)} over all ranks")
        mean = totals[:-1] / n
        centred = x - mean.reshape(shape)
        var = _AllReduceSum.apply(centred.pow(2).sum(dims), group) / n  # biased: normalises
        out = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.weight is not None:
            out = out * self.weight.reshape(shape)
        if self.bias is not None:
            out = out + self.bias.reshape(shape)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach() * n / (n - 1))
        return out.to(input.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean, unbiased_var):
        self.num_batches_tracked.add_(1)
        f = 1.0 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), f)
        self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), f)


def convert_sync_batchnorm(module, process_group=None):
    """Replace every ``_BatchNorm`` in ``module`` (itself included) by :class:`SyncBatchNorm`,
    sharing its weight/bias Parameters and buffers and keeping its training flag; the original
    class is remembered for :func:`revert_sync_batchnorm`. Returns the converted module."""
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
        out = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats, process_group)
        _copy_batchnorm_state(module, out)
        out.original_class = type(module)
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, process_group))
    return out


def revert_sync_batchnorm(module):
    """Undo :func:`convert_sync_batchnorm`: each :class:`SyncBatchNorm` becomes its original class
    again (a shape-agnostic batch norm when that class cannot be rebuilt from the standard arguments)."""
    out = module
    if isinstance(module, SyncBatchNorm):
        args = (module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        try:
            out = getattr(module, "original_class", _BatchNormXd)(*args)
        except TypeError:  # a BatchNorm subclass with another constructor
            out = _BatchNormXd(*args)
        _copy_batchnorm_state(module, out)
    for name, child in module.named_children():
        out.add_module(name, revert_sync_batchnorm(child))
    return out


def _copy_batchnorm_state(src, dst):
    if src.affine:  # the same Parameters: optimizers built before keep them
        dst.weight, dst.bias = src.weight, src.bias
    dst.running_mean, dst.running_var = src.running_mean, src.running_var
    dst.num_batches_tracked = src.num_batches_tracked
    dst.train(src.training)
    if hasattr(src, "qconfig"):
        dst.qconfig = src.qconfig


class SyncBatchNormPlugin(TorchSyncBatchNorm):
    """Lightning ``LayerSync`` plugin for ``Trainer(sync_batchnorm=True)`` with :class:`SyncBatchNorm`
    (a ``TorchSyncBatchNorm`` subclass: Lightning accepts only those next to ``sync_batchnorm=True``).
    DDP strategies apply it before wrapping the model for fitting and revert it at teardown."""

    def apply(self, model):
        return convert_sync_batchnorm(model)

    def revert(self, model):
        return revert_sync_batchnorm(model)
