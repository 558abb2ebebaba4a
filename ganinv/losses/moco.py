"""MoCo-v2 feature similarity loss (pSp / e4e / ReStyle ``MocoLoss``) for non-face domains."""
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet50

from ..checkpoints.safe import load_torch
from .weights import require_file

PREFIX = "module.encoder_q."


class MocoLoss(nn.Module):
    """1 − cos between MoCo-v2 ResNet-50 embeddings of the output and the target.

    f(x) = normalize(avgpool(ResNet50(nearest_resize(x, 224)))) ∈ R^2048, applied to images
    [B, 3, H, W] in [-1, 1] as they are (the official loss adds no ImageNet normalisation).
    forward(y_hat, y, x) -> (loss, sim_improvement, sim_logs):
      loss = mean_b (1 − f(ŷ_b)·f(y_b)) (f(y) detached), a scalar tensor;
      sim_improvement = mean_b (f(ŷ_b)·f(y_b) − f(y_b)·f(x_b)), a Python float;
      sim_logs[b] = {'diff_target': f(ŷ)·f(y), 'diff_input': f(ŷ)·f(x), 'diff_views': f(y)·f(x)}.

    ``weights_path``: MoCo's ``moco_v2_800ep_pretrain`` checkpoint ({'state_dict': ...} with
    ``module.encoder_q.`` keys); the query encoder without its projection head ``fc`` is kept.
    Frozen (no parameter gradients, always eval); gradients reach y_hat.
    """

    def __init__(self, weights_path):
        super().__init__()
        path = require_file(weights_path, "MoCo-v2 ResNet-50",
                            "moco_v2_800ep_pretrain.pth.tar from facebookresearch/moco")
        checkpoint = load_torch(path, "MoCo-v2 ResNet-50 weights")
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise ValueError(f"{path}: expected a MoCo checkpoint dict with a 'state_dict' entry")
        state = {k[len(PREFIX):]: v for k, v in checkpoint["state_dict"].items()
                 if k.startswith(PREFIX) and not k.startswith(PREFIX + "fc.")}
        self.model = resnet50()
        self.model.fc = nn.Identity()
        result = self.model.load_state_dict(state, strict=False)
        if result.missing_keys:
            raise ValueError(f"{path}: no MoCo ResNet-50 query encoder "
                             f"(missing {PREFIX}{result.missing_keys[0]})")
        self.requires_grad_(False)
        self.eval()

    def train(self, mode=True):
        return super().train(False)

    def extract_feats(self, x):
        """[B, 3, H, W] in [-1, 1] -> unit-length embeddings [B, 2048]."""
        return F.normalize(self.model(F.interpolate(x, size=224)), dim=1)

    def forward(self, y_hat, y, x):
        with torch.no_grad():
            x_feats, y_feats = self.extract_feats(x), self.extract_feats(y)
        y_hat_feats = self.extract_feats(y_hat)
        diff_target = (y_hat_feats * y_feats).sum(1)
        diff_input = (y_hat_feats * x_feats).sum(1).tolist()
        diff_views = (y_feats * x_feats).sum(1).tolist()
        target = diff_target.tolist()
        sim_logs = [{"diff_target": t, "diff_input": i, "diff_views": v}
                    for t, i, v in zip(target, diff_input, diff_views)]
        sim_improvement = sum(t - v for t, v in zip(target, diff_views)) / len(target)
        return (1 - diff_target).mean(), sim_improvement, sim_logs
