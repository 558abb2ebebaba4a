"""Identity loss of pSp/e4e (``criteria/id_loss.py``): 1 - cosine similarity of ArcFace embeddings."""
import torch
import torch.nn.functional as F
from torch import nn

from ganinv.checkpoints.safe import load_torch
from ganinv.nets.irse import Backbone

IR_SE50_HINT = (
    "download model_ir_se50.pth (ArcFace IR-SE50, linked from the pixel2style2pixel README) and put it "
    "there, or point the config at its location"
)


def load_ir_se50(weights_path):
    """``Backbone(112, 50, 'ir_se', drop_ratio=0.6, affine=True)`` with the weights at ``weights_path``."""
    state = load_torch(weights_path, "ID-loss weights", IR_SE50_HINT)
    net = Backbone(input_size=112, num_layers=50, mode="ir_se", drop_ratio=0.6, affine=True)
    net.load_state_dict(state, strict=True)
    return net


class IDLoss(nn.Module):
    """pSp's ID loss with a frozen ArcFace IR-SE50 kept in eval mode.

    Give either ``weights_path`` (pSp's ``model_ir_se50.pth``, a plain state dict) or an already
    built ``backbone`` (a :class:`~ganinv.nets.irse.Backbone` with input_size 112).
    Images are [B, 3, H, W] in [-1, 1], aligned like FFHQ.
    """

    def __init__(self, weights_path=None, backbone=None):
        super().__init__()
        if (weights_path is None) == (backbone is None):
            raise ValueError("IDLoss needs exactly one of weights_path or backbone")
        self.facenet = load_ir_se50(weights_path) if backbone is None else backbone
        self.facenet.requires_grad_(False)
        self.facenet.eval()
        self.face_pool = nn.AdaptiveAvgPool2d((112, 112))

    def train(self, mode=True):
        super().train(mode)
        self.facenet.eval()
        return self

    def extract_feats(self, x):
        """[B, 3, H, W] -> unit-norm embeddings [B, 512].

        Images not at 256x256 are first average-pooled to 256 (pSp's ``face_pool`` on generator
        outputs), then the face region [35:223, 32:220] is cropped and pooled to 112.
        """
        if x.shape[-2:] != (256, 256):
            x = F.adaptive_avg_pool2d(x, (256, 256))
        x = x[:, :, 35:223, 32:220]
        return self.facenet(self.face_pool(x))

    def forward(self, y_hat, y, x):
        """Reconstruction ``y_hat``, target ``y``, input ``x`` -> (loss, sim_improvement, id_logs).

        loss: mean over samples of 1 - <f(y_hat), f(y)> (float32 tensor, differentiable in y_hat).
        sim_improvement: mean of <f(y_hat), f(y)> - <f(y), f(x)> as a Python float.
        id_logs: per sample ``{'diff_target', 'diff_input', 'diff_views'}`` Python floats, i.e. the
        similarities y_hat-y, y_hat-x and y-x.
        """
        n = x.shape[0]
        with torch.no_grad():
            x_feats = self.extract_feats(x)
            y_feats = self.extract_feats(y)
        y_hat_feats = self.extract_feats(y_hat)
        diff_target = (y_hat_feats * y_feats).sum(1)
        diff_input = (y_hat_feats.detach() * x_feats).sum(1)
        diff_views = (y_feats * x_feats).sum(1)
        loss = (1 - diff_target).sum() / n
        targets, inputs, views = (d.tolist() for d in (diff_target.detach(), diff_input, diff_views))
        sim_improvement = sum(t - v for t, v in zip(targets, views)) / n
        id_logs = [
            {"diff_target": t, "diff_input": i, "diff_views": v} for t, i, v in zip(targets, inputs, views)
        ]
        return loss, sim_improvement, id_logs
