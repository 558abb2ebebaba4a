"""Latent-regression encoder (pbaylies/stylegan-encoder ``train_resnet.py``, after @SimJeg's
Puzer/stylegan-encoder#1): a ResNet trunk and a "TreeConnect" head that regress the W+ codes
(official: dlatents [18, 512]) of an image, trained on generator samples G(w) -> w.

Official ``get_resnet_model`` (size 0: keras ResNet50, ``include_top=False``, 256 px input, so an
8x8x2048 map) with ``depth`` TreeConnect blocks, ``activation='elu'``:

    Conv2D(n_styles*8, 1, elu)                     -> [8, 8, n_styles*8]
    Reshape((layer_r, layer_l))                    (layer_r*layer_l = n_styles*512)
    per block: LocallyConnected1D(layer_r, 1, elu), Permute, LocallyConnected1D(layer_l, 1, elu),
               Permute (+ the previous block's output from the second block on)
    Reshape((n_styles, 512))

``layer_l = layer_r = sqrt(n_styles*512)`` when that is a square, else ``layer_l`` the next power of
two above it and ``layer_r = n_styles*512 // layer_l``. A kernel-1 LocallyConnected1D is a separate
linear map per position (:class:`LocallyConnected`).

Deviations (deliberate):
- torchvision ResNet-50 (v1, RGB input normalised with the ImageNet mean/std of its weights)
  instead of keras' (BGR, caffe mean subtraction, ``preprocess_input``); the official CLI default
  ``--model_size 1`` is ResNet50V2 with a wider 4x head, not offered.
- inputs below 256 px: the trunk map is s x s with s = input_size / 32 < 8, and the 1x1 conv widens to
  n_styles*512 / s^2 channels so the head keeps its size; maps above 8x8 are average-pooled to 8x8.
- the last LocallyConnected layer is linear and zero-initialised (official: elu, glorot), so the
  output is an offset that starts at 0: with ``start_from_latent_avg`` (the method's default) the
  untrained encoder is exactly the predict-the-mean baseline, and offsets below -1 stay reachable.
- ``learn_in_w``: regress one w [B, 512] (n_styles = 1 in the formulas above).
- ``trunk='resnet18' | 'resnet10'``: smaller torchvision-style trunks (tests, small generators).

Images [B, 3, H, W] in [-1, 1] -> W+ [B, n_styles, style_dim] (``learn_in_w``: w [B, style_dim]).
State-dict names: torchvision's for the trunk (``conv1``, ``bn1``, ``layer1..4``: an ImageNet
``resnet50`` state dict loads with :meth:`RegressionEncoder.load_trunk`), ``head.*`` for the rest.
"""
import math
import re

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet50
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet normalisation
IMAGENET_STD = (0.229, 0.224, 0.225)
OFFICIAL_GRID = 8  # 256 px input / ResNet stride 32: the official head's 8x8 map
TRUNKS = {  # name -> (block, blocks per stage); resnet50 is torchvision's resnet50
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet10": (BasicBlock, (1, 1, 1, 1)),
}


def tree_shape(size):
    """(layer_r, layer_l) of the official head for ``size`` = n_styles * 512 outputs."""
    root = math.isqrt(size)
    if root * root == size:
        return root, root
    layer_l = 2 ** math.ceil(math.log2(math.sqrt(size)))
    return size // layer_l, layer_l


class LocallyConnected(nn.Module):
    """Keras ``LocallyConnected1D(out_features, 1)``: x [B, steps, in] -> [B, steps, out], an
    unshared linear map per step. Glorot-uniform per step (keras counts the steps in its fans) or
    zeros; bias zeros as keras."""

    def __init__(self, steps, in_features, out_features, zero=False):
        super().__init__()
        bound = 0.0 if zero else math.sqrt(6.0 / (in_features + out_features))
        self.weight = nn.Parameter(torch.empty(steps, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(steps, out_features))

    def forward(self, x):
        return torch.einsum("bsi,sio->bso", x, self.weight) + self.bias


class TreeConnectHead(nn.Module):
    """Trunk map [B, C, s, s] -> [B, n_out * style_dim]: the official 1x1 conv + TreeConnect blocks."""

    def __init__(self, in_channels, grid, n_out, style_dim=512, depth=1):
        super().__init__()
        if depth < 1:
            raise ValueError(f"regression encoder depth must be >= 1, got {depth}")
        size = n_out * style_dim
        if size % (grid * grid):
            raise ValueError(f"{n_out} x {style_dim} outputs do not split over a {grid}x{grid} map")
        self.grid = grid
        self.layer_r, self.layer_l = tree_shape(size)
        self.conv = nn.Conv2d(in_channels, size // (grid * grid), 1)
        blocks, steps, width = [], self.layer_r, self.layer_l
        for i in range(depth):
            last = i == depth - 1
            blocks.append(nn.ModuleList([LocallyConnected(steps, width, self.layer_r),
                                         LocallyConnected(self.layer_r, steps, self.layer_l, zero=last)]))
            steps, width = self.layer_l, self.layer_r
        self.blocks = nn.ModuleList(blocks)

    def forward(self, feat):
        if feat.shape[-1] > self.grid:
            feat = F.adaptive_avg_pool2d(feat, self.grid)
        x = F.elu(self.conv(feat))
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], self.layer_r, self.layer_l)  # keras NHWC reshape
        skip = None
        for i, (rows, cols) in enumerate(self.blocks):
            x = F.elu(rows(x)).transpose(1, 2)
            x = cols(x)
            if i < len(self.blocks) - 1:
                x = F.elu(x)
            x = x.transpose(1, 2)
            if skip is not None:
                x = x + skip
            skip = x
        return x.flatten(1)


class RegressionEncoder(nn.Module):
    """Images [B, 3, H, W] in [-1, 1] -> W+ offsets [B, n_styles, style_dim] ([B, style_dim] with
    ``learn_in_w``). ``input_size``: the side it is trained at (grid = min(8, input_size / 32));
    ``trunk``: a key of :data:`TRUNKS`; ``depth``: TreeConnect blocks (official --model_depth 1)."""

    def __init__(self, n_styles, style_dim=512, trunk="resnet50", input_size=256, depth=1, learn_in_w=False):
        super().__init__()
        if trunk not in TRUNKS:
            raise ValueError(f"regression encoder trunk must be one of {', '.join(TRUNKS)}, got {trunk!r}")
        if input_size < 32 or input_size & (input_size - 1):
            raise ValueError(f"regression encoder input_size must be a power of two >= 32, got {input_size}")
        self.n_styles, self.style_dim, self.trunk = n_styles, style_dim, trunk
        self.input_size, self.depth, self.learn_in_w = input_size, depth, learn_in_w
        self.input_nc = 3
        block, layers = TRUNKS[trunk]
        net = resnet50(weights=None) if trunk == "resnet50" else ResNet(block, list(layers))
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        grid = min(OFFICIAL_GRID, input_size // 32)
        self.head = TreeConnectHead(512 * block.expansion, grid, 1 if learn_in_w else n_styles, style_dim, depth)

    def load_trunk(self, state, name="ImageNet weights"):
        """Copy a torchvision ResNet state dict (``fc.*`` ignored) into the trunk; ValueError naming
        ``name`` when its trunk entries do not match. Returns the head entries left at init."""
        own = {k: v for k, v in self.state_dict().items() if not k.startswith("head.")}
        wrong = [k for k in own if k not in state or tuple(state[k].shape) != tuple(own[k].shape)]
        if wrong:
            raise ValueError(f"{name}: not a torchvision {self.trunk} state dict (entry {wrong[0]!r} missing or "
                             "of another shape)")
        return self.load_state_dict({k: state[k] for k in own}, strict=False).missing_keys

    def forward(self, x):
        mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        x = ((x + 1) / 2 - mean) / std
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        out = self.head(x)
        return out if self.learn_in_w else out.view(-1, self.n_styles, self.style_dim)


def regression_encoder_kwargs(sd, style_dim=512):
    """:class:`RegressionEncoder` kwargs that rebuild the encoder of state dict ``sd`` (what a
    checkpoint loader needs): trunk from the block counts, n_styles / learn_in_w from the head size,
    input_size from the head's grid (256 for the official 8x8), depth from the TreeConnect blocks."""
    counts = tuple(len({m[1] for k in sd if (m := re.fullmatch(rf"layer{i}\.(\d+)\..*", k))}) for i in range(1, 5))
    bottleneck = "layer1.0.conv3.weight" in sd
    trunk = next((n for n, (b, layers) in TRUNKS.items() if layers == counts and (b is Bottleneck) == bottleneck),
                 None)
    if trunk is None:
        raise ValueError(f"regression encoder: no trunk with {counts} {'bottleneck' if bottleneck else 'basic'} "
                         "blocks per stage")
    conv = sd["head.conv.weight"]
    depth = len({m[1] for k in sd if (m := re.fullmatch(r"head\.blocks\.(\d+)\..*", k))})
    last = sd[f"head.blocks.{depth - 1}.1.weight"]
    size = last.shape[0] * last.shape[2]  # layer_r positions x layer_l outputs
    n_out = size // style_dim
    grid = math.isqrt(size // conv.shape[0])
    input_size = 32 * grid if grid < OFFICIAL_GRID else 256
    return dict(n_styles=n_out, style_dim=style_dim, trunk=trunk, input_size=input_size, depth=depth,
                learn_in_w=n_out == 1)
