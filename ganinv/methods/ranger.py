"""Ranger (RAdam + Lookahead + gradient centralisation), the optimizer of pSp/e4e/ReStyle.

Built on ``torch.optim.RAdam`` (rectification threshold 5, like the official Ranger) instead of
a copy: gradients of tensors with more than one dimension are centralised (minus their mean over
all but the first dim) before the RAdam step, and every ``k`` steps the fast weights are pulled
toward slow weights: slow += alpha * (fast - slow); fast = slow. Defaults are pSp's.
"""
import torch


class Ranger(torch.optim.RAdam):
    def __init__(self, params, lr=1e-4, alpha=0.5, k=6, betas=(0.95, 0.999), eps=1e-5, weight_decay=0.0):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self.alpha, self.k = alpha, k

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        first = {}  # slow weights start at the pre-update weights
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.dim() > 1:
                    p.grad.sub_(p.grad.mean(dim=tuple(range(1, p.grad.dim())), keepdim=True))
                if "slow" not in self.state[p]:
                    first[p] = p.detach().clone()
        super().step()
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if p in first:
                    state["slow"] = first[p]
                if p.grad is not None and int(state["step"]) % self.k == 0:
                    state["slow"].add_(p - state["slow"], alpha=self.alpha)
                    p.copy_(state["slow"])
        return loss


def make_optimizer(name, params, lr):
    """'ranger' (pSp/e4e default) or 'adam' (torch defaults), as the official ``optim_name``."""
    if name == "ranger":
        return Ranger(params, lr=lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"method.optimizer must be 'ranger' or 'adam', got {name!r}")
