"""LPIPS perceptual distance (Zhang et al. 2018) through the ``lpips`` package."""
import warnings

import lpips
import torch.nn.functional as F
from torch import nn
from torchvision.models import AlexNet_Weights, SqueezeNet1_1_Weights, VGG16_Weights

from .weights import torchvision_weights_file

TRUNK_WEIGHTS = {
    "alex": AlexNet_Weights.IMAGENET1K_V1,
    "vgg": VGG16_Weights.IMAGENET1K_V1,
    "squeeze": SqueezeNet1_1_Weights.IMAGENET1K_V1,
}


class LPIPSLoss(nn.Module):
    """LPIPS v0.1 between images x, y [B, 3, H, W] in [-1, 1]:

        d(x, y) = Σ_l mean_hw( w_lᵀ (φ̂_l(x) − φ̂_l(y))² ),

    φ̂_l the trunk's l-th ReLU features normalised to unit length over channels, w_l the
    learned linear heads shipped with ``lpips``. This is the same arithmetic as pSp/e4e's
    own LPIPS copy (criteria/lpips) and the ``lpips.LPIPS`` PTI and the projectors call.

    Inputs larger than ``resize`` (per side) are average-pooled to ``resize``×``resize``
    first, as pSp pools 1024 px outputs to 256 (``face_pool``) and rosinality's projector
    box-filters to 256 before LPIPS; ``resize=None`` keeps full resolution.

    The trunk's ImageNet weights are never downloaded: with ``pnet_rand=False`` the torchvision
    file must already be in the torch hub cache, else FileNotFoundError names it.
    ``pnet_rand=True`` gives a random trunk (tests). ``pretrained`` loads the linear heads.
    The module is frozen (no parameter gradients, always eval); gradients reach the inputs.
    """

    def __init__(self, net="alex", resize=256, pretrained=True, pnet_rand=False):
        super().__init__()
        if net not in TRUNK_WEIGHTS:
            raise ValueError(f"LPIPSLoss: net must be one of {sorted(TRUNK_WEIGHTS)}, got {net!r}")
        if not pnet_rand:
            torchvision_weights_file(TRUNK_WEIGHTS[net])
        self.resize = resize
        with warnings.catch_warnings():
            # lpips builds its trunk with torchvision's deprecated `pretrained=` argument
            warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*", category=UserWarning)
            self.model = lpips.LPIPS(pretrained=pretrained, net=net, pnet_rand=pnet_rand, verbose=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode=True):
        # lpips' linear heads carry Dropout; a frozen metric must never switch it on
        return super().train(False)

    def forward(self, x, y, per_image=False):
        """x, y [B, 3, H, W] in [-1, 1] -> mean distance (scalar), or [B] with ``per_image``
        (each entry independent of the rest of the batch)."""
        if x.ndim != 4 or x.shape[1] != 3 or x.shape != y.shape:
            raise ValueError(f"LPIPSLoss: expected two [B, 3, H, W] images of equal shape, "
                             f"got {tuple(x.shape)} and {tuple(y.shape)}")
        if self.resize is not None and max(x.shape[-2:]) > self.resize:
            x = F.adaptive_avg_pool2d(x, (self.resize, self.resize))
            y = F.adaptive_avg_pool2d(y, (self.resize, self.resize))
        d = self.model(x, y).flatten()
        return d if per_image else d.mean()
