"""VGG16 feature (perceptual) loss: IDInvert (conv4_3); Image2StyleGAN (conv1_1, 1_2, 3_2, 4_2)."""
import torch
from torch import nn
from torchvision.models import VGG16_Weights
from torchvision.models.vgg import cfgs, make_layers

from ..checkpoints.safe import load_torch
from .weights import require_file, torchvision_weights_file

# conv layer name -> index in torchvision's vgg16().features (IDInvert's `layer{i}` uses the same indices)
VGG16_LAYERS = {
    "conv1_1": 0, "conv1_2": 2,
    "conv2_1": 5, "conv2_2": 7,
    "conv3_1": 10, "conv3_2": 12, "conv3_3": 14,
    "conv4_1": 17, "conv4_2": 19, "conv4_3": 21,
    "conv5_1": 24, "conv5_2": 26, "conv5_3": 28,
}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


class VGG16Features(nn.Module):
    """VGG16 conv features, each taken after its ReLU, for images [B, 3, H, W] in [-1, 1].

    forward(x) -> {name: [B, C, H / 2^k, W / 2^k]} for the requested ``layers`` (names in
    ``VGG16_LAYERS``; C = 64, 128, 256, 512, 512 and k = 0 … 4 for blocks 1 … 5).

    Weights and the input preprocessing they were trained with:
    - ``weights_path`` given: IDInvert's ``vgg16.pth`` (Keras ImageNet weights, keys
      ``layer{i}.weight``); caffe preprocessing as IDInvert ``perceptual_model.py``:
      [-1, 1] -> [0, 255], RGB -> BGR, minus the BGR mean (103.939, 116.779, 123.68).
      IDInvert's feature-loss weight 5e-5 is calibrated to these features.
    - else ``pretrained=True``: torchvision ImageNet ``vgg16-397923af.pth`` from the torch hub
      cache (never downloaded; FileNotFoundError names it); input (x + 1) / 2 normalised by
      the ImageNet mean/std.
    - else: random init (tests), torchvision preprocessing.
    Frozen (no parameter gradients, always eval); gradients reach the input.
    """

    def __init__(self, layers=("conv4_3",), pretrained=True, weights_path=None):
        super().__init__()
        unknown = [name for name in layers if name not in VGG16_LAYERS]
        if not layers or unknown:
            raise ValueError(f"VGG16Features: layers must be names from {list(VGG16_LAYERS)}, got {layers!r}")
        self.layers = tuple(layers)
        self.taps = {VGG16_LAYERS[name] + 1: name for name in self.layers}  # index of the ReLU
        cut = max(self.taps) + 1
        self.features = make_layers(cfgs["D"])[:cut]
        self.caffe = weights_path is not None
        if self.caffe:
            path = require_file(weights_path, "IDInvert VGG16", "IDInvert's models/pretrain/vgg16.pth")
            self._load(path, "layer", cut)
            mean, std = torch.tensor(CAFFE_BGR_MEAN), torch.ones(3)
        else:
            if pretrained:
                self._load(torchvision_weights_file(VGG16_Weights.IMAGENET1K_V1), "features.", cut)
            mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.register_buffer("mean", mean.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def _load(self, path, prefix, cut):
        state = load_torch(path, "VGG16 weights")
        ours = {}
        for key, value in state.items():
            index, _, param = key.removeprefix(prefix).partition(".")
            if key.startswith(prefix) and index.isdigit() and int(index) < cut:
                ours[f"{index}.{param}"] = value
        missing = self.features.load_state_dict(ours, strict=False).missing_keys
        if missing:
            raise ValueError(f"{path}: not a VGG16 state dict with '{prefix}<i>.weight' keys "
                             f"(missing {prefix}{missing[0]})")

    def train(self, mode=True):
        return super().train(False)

    def preprocess(self, x):
        """[-1, 1] RGB -> the input range and channel order the weights expect."""
        if self.caffe:
            return (x + 1).mul(127.5).flip(1) - self.mean
        return ((x + 1) / 2 - self.mean) / self.std

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"VGG16Features: expected images [B, 3, H, W], got {tuple(x.shape)}")
        x = self.preprocess(x)
        out = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out[self.taps[i]] = x
        return {name: out[name] for name in self.layers}


def vgg_feature_loss(vgg, x, y, per_image=False):
    """Σ_l mean((F_l(x) − F_l(y))²) over ``vgg``'s layers (IDInvert / Image2StyleGAN feature
    MSE); scalar, or [B] with ``per_image``. x, y [B, 3, H, W] in [-1, 1]."""
    fx, fy = vgg(x), vgg(y)
    dims = (1, 2, 3) if per_image else None
    return sum((fx[name] - fy[name]).pow(2).mean(dims) for name in fx)
