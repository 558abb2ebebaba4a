"""FID and KID through torchmetrics, never downloading anything.

The standard features are torch-fidelity's port of the TF Inception-v3
(``weights-inception-2015-12-05-6726825d.pth``); torch-fidelity would fetch that file into the torch
hub cache (``torch.hub.get_dir()/checkpoints``). Here it must already be there, or be given as
``weights_path``, else a one-line FileNotFoundError names the file and folder. Any other feature
extractor can be passed as ``feature=`` (an nn.Module mapping [N, 3, H, W] images in [0, 1] to
[N, F]), which needs neither torch-fidelity nor weights.
"""
import importlib.util
import warnings
from pathlib import Path

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3
from torchmetrics.image.kid import KernelInceptionDistance

INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS}"


def inception_weights_path(weights_path=None):
    """The Inception weights file to use: ``weights_path`` or torch-fidelity's place in the hub cache.
    Raises FileNotFoundError naming the file and folder when it is absent."""
    path = Path(weights_path) if weights_path is not None else (
        Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS)
    if not path.is_file():
        raise FileNotFoundError(f"FID/KID Inception weights not found: {path.name} in {path.parent}; "
                                f"download {INCEPTION_URL} there, or pass feature= a feature extractor")
    return path


def _torch_fidelity_available():
    return importlib.util.find_spec("torch_fidelity") is not None


class _QuantisedInception(nn.Module):
    """torch-fidelity's Inception fed as torchmetrics feeds it: [0, 1] floats -> uint8 -> [N, 2048]."""

    num_features = 2048

    def __init__(self, weights_path):
        super().__init__()
        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                      feature_extractor_weights_path=str(weights_path))

    def forward(self, x):
        return self.net((x * 255).byte())


class DistributionMetrics(nn.Module):
    """FID and KID between a real and a generated image set, fed batch by batch.

    ``update(images, real)`` takes images [B, 3, H, W] in [-1, 1] (clamped, mapped to [0, 1] for the
    feature extractor); ``compute()`` returns ``{'fid', 'kid_mean', 'kid_std'}`` as floats. KID is the
    unbiased polynomial-kernel MMD, kernel (x·y/F + 1)³, averaged over ``kid_subsets`` random subsets
    of ``kid_subset_size`` samples per set (all samples when fewer were seen), as torchmetrics and
    torch-fidelity compute it.
    """

    def __init__(self, feature=None, weights_path=None, kid_subsets=100, kid_subset_size=1000):
        super().__init__()
        if feature is None:
            path = inception_weights_path(weights_path)
            if not _torch_fidelity_available():
                raise ModuleNotFoundError("FID/KID with Inception features needs the torch-fidelity "
                                          "package (pip install torch-fidelity), or pass feature= a "
                                          "feature extractor")
            feature = _QuantisedInception(path)
        self.kid_subset_size = kid_subset_size
        # normalize=True only makes torchmetrics probe a feature module without num_features with a
        # float image in [0, 1], which is what update() feeds it too
        self.fid = FrechetInceptionDistance(feature=feature, normalize=True)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
            self.kid = KernelInceptionDistance(feature=feature, subsets=kid_subsets,
                                               subset_size=kid_subset_size)

    @torch.no_grad()
    def update(self, images, real):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"DistributionMetrics.update: expected images [B, 3, H, W], "
                             f"got {tuple(images.shape)}")
        x = (images.detach().float().clamp(-1, 1) + 1) / 2
        self.fid.update(x, real=real)
        self.kid.update(x, real=real)

    def compute(self):
        seen = min(sum(len(f) for f in self.kid.real_features), sum(len(f) for f in self.kid.fake_features))
        self.kid.subset_size = min(self.kid_subset_size, seen)
        kid_mean, kid_std = self.kid.compute()
        return {"fid": float(self.fid.compute()), "kid_mean": float(kid_mean), "kid_std": float(kid_std)}

    def reset(self):
        self.fid.reset()
        self.kid.reset()
