"""ReStyle encoders (Alaluf et al. 2021, yuval-alaluf/restyle-encoder ``models/encoders``).

ReStyle feeds the encoder the target image and the current reconstruction stacked on channels
(``input_nc = 6``) and predicts a W+ offset from the previous iteration's codes. Its "backbone"
encoders read every style from the final 16x16 map (at 256 px input) instead of pSp's FPN.
Two trunks: IR-SE (``input_layer``, ``body``, as in pSp) and torchvision's ResNet-34 blocks
behind a 7x7/2 stem (``conv1``, ``bn1``, ``relu`` = PReLU, ``body`` = layer1..layer4
flattened, no max pool). Names follow the official modules, so ReStyle checkpoints load with
``strict=True`` after stripping ``encoder.``. The FPN encoder over IR-SE is pSp's
:class:`~ganinv.nets.psp_encoders.GradualStyleEncoder` with ``input_nc=6``.

All inputs are [B, input_nc, H, W] in [-1, 1] with H, W in [16, 256] (ReStyle feeds 256x256);
outputs are [B, n_styles, 512] offsets (latent_avg or previous codes not added).

The backbone encoders take ``input_size`` and ``head_channels`` as pSp's FPN encoders do: the
heads' log2(input_size/16) stride-2 convs bring the last map to 1x1 and are ``head_channels``
wide. The defaults (256, 512) are the official ``GradualStyleBlock(512, 512, 16)``; smaller
values make small trainable encoders (tests, the embedded 64 px default, see
``conf/method/restyle_psp.yaml``).
"""
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from .irse import make_body, make_input_layer
from .psp_encoders import COARSE_IND, MIDDLE_IND, GradualStyleBlock, ProgressiveStage, _check_n_styles, _upsample_add

# ResNet-34: (width, blocks, stride of the first block) per stage.
_RESNET34 = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))
# Ends of layer2, layer3, layer4 in the flattened body (ReStyle's FPN taps 6, 12, 15).
RESNET34_TAPS = (6, 12, 15)


def resnet34_blocks():
    """torchvision ResNet-34's 16 BasicBlocks in order (layer1..layer4), randomly initialised."""
    blocks, in_ch = [], 64
    for width, n, stride in _RESNET34:
        for i in range(n):
            s = stride if i == 0 else 1
            down = None
            if s != 1 or in_ch != width:
                down = nn.Sequential(nn.Conv2d(in_ch, width, 1, s, bias=False), nn.BatchNorm2d(width))
            blocks.append(BasicBlock(in_ch, width, s, down))
            in_ch = width
    return blocks


def _check_input(module, x):
    if x.ndim != 4 or x.shape[1] != module.input_nc:
        name = type(module).__name__
        raise ValueError(f"{name} expects [B, {module.input_nc}, H, W] input, got {tuple(x.shape)}")


class _SingleMapHeads(ProgressiveStage, nn.Module):
    """``n_styles`` GradualStyleBlocks on the trunk's last map (16x16 at 256 px input).

    Independent heads (ReStyle-pSp), or with ``progressive=True`` e4e's scheme: w0 = styles[0]
    fills every row, rows 1..stage add styles[i]. ``progressive_stage`` is an int in
    [0, n_styles-1] or ``'all'`` (official ``ProgressiveStage.Inference``, set after loading).
    """

    def _make_heads(self, n_styles, progressive, input_size=256, head_channels=512):
        _check_n_styles(n_styles)
        if input_size < 16 or input_size & (input_size - 1):
            raise ValueError(f"encoder input_size must be a power of two >= 16, got {input_size}")
        self.style_count = n_styles
        self.progressive = progressive
        self.input_size, self.head_channels = input_size, head_channels
        self.styles = nn.ModuleList(GradualStyleBlock(512, 512, input_size // 16, hidden=head_channels)
                                    for _ in range(n_styles))
        self._progressive_stage = "all"

    @property
    def n_deltas(self):
        """Rows after row 0 that receive a delta at the current stage (e4e's progressive scheme)."""
        return self.style_count - 1 if self._progressive_stage == "all" else self._progressive_stage

    def forward(self, x):
        _check_input(self, x)
        feat = self.trunk(x)  # the subclass's trunk: [B, 512, H/16, W/16]
        if not self.progressive:
            return torch.stack([style(feat) for style in self.styles], dim=1)
        w0 = self.styles[0](feat)
        rows = [w0] + [w0 + self.styles[i](feat) for i in range(1, self.n_deltas + 1)]
        rows += [w0] * (self.style_count - len(rows))
        return torch.stack(rows, dim=1)


class BackboneEncoder(_SingleMapHeads):
    """ReStyle-pSp ``BackboneEncoder``: IR-SE trunk, every style from the last map.
    [B, input_nc, H, W] -> [B, n_styles, 512]."""

    def __init__(self, num_layers=50, mode="ir_se", n_styles=18, input_nc=6, progressive=False,
                 input_size=256, head_channels=512):
        super().__init__()
        self.input_nc, self.num_layers, self.mode = input_nc, num_layers, mode
        self.input_layer = make_input_layer(input_nc)
        self.body, _ = make_body(num_layers, mode)
        self._make_heads(n_styles, progressive, input_size, head_channels)

    def trunk(self, x):
        return self.body(self.input_layer(x))


class ProgressiveBackboneEncoder(BackboneEncoder):
    """ReStyle-e4e ``ProgressiveBackboneEncoder``: BackboneEncoder with e4e's w0 + deltas."""

    def __init__(self, num_layers=50, mode="ir_se", n_styles=18, input_nc=6, input_size=256, head_channels=512):
        super().__init__(num_layers, mode, n_styles, input_nc, True, input_size, head_channels)


class _ResNet34Trunk(nn.Module):
    """7x7/2 conv + BN + PReLU stem (no max pool), then ResNet-34's blocks as ``body``."""

    def _make_trunk(self, input_nc):
        self.input_nc = input_nc
        self.conv1 = nn.Conv2d(input_nc, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.PReLU(64)
        self.body = nn.Sequential(*resnet34_blocks())

    def stem(self, x):
        return self.relu(self.bn1(self.conv1(x)))


class ResNetBackboneEncoder(_ResNet34Trunk, _SingleMapHeads):
    """ReStyle-pSp ``ResNetBackboneEncoder``: ResNet-34 trunk, every style from the last map.
    ``num_layers`` / ``mode`` are taken so that one config builds every ReStyle encoder
    (``conf/method/restyle_psp.yaml``) and unused (the trunk is always ResNet-34)."""

    def __init__(self, n_styles=18, input_nc=6, progressive=False, input_size=256, head_channels=512,
                 num_layers=None, mode=None):
        super().__init__()
        self._make_trunk(input_nc)
        self._make_heads(n_styles, progressive, input_size, head_channels)

    def trunk(self, x):
        return self.body(self.stem(x))


class ResNetProgressiveBackboneEncoder(ResNetBackboneEncoder):
    """ReStyle-e4e ``ResNetProgressiveBackboneEncoder``: ResNet-34 trunk with w0 + deltas."""

    def __init__(self, n_styles=18, input_nc=6, input_size=256, head_channels=512, num_layers=None, mode=None):
        super().__init__(n_styles, input_nc, True, input_size, head_channels)


class ResNetGradualStyleEncoder(_ResNet34Trunk):
    """ReStyle's ``ResNetGradualStyleEncoder``: pSp's FPN heads on ResNet-34 taps
    (layer2/3/4 ends: 128, 256, 512 ch at strides 4, 8, 16). -> [B, n_styles, 512]."""

    def __init__(self, n_styles=18, input_nc=6):
        super().__init__()
        _check_n_styles(n_styles)
        self._make_trunk(input_nc)
        self.style_count = n_styles
        self.styles = nn.ModuleList(
            GradualStyleBlock(512, 512, 16 if i < COARSE_IND else 32 if i < MIDDLE_IND else 64)
            for i in range(n_styles)
        )
        self.latlayer1 = nn.Conv2d(256, 512, kernel_size=1)
        self.latlayer2 = nn.Conv2d(128, 512, kernel_size=1)

    def forward(self, x):
        _check_input(self, x)
        x, feats = self.stem(x), []
        for i, block in enumerate(self.body):
            x = block(x)
            if i in RESNET34_TAPS:
                feats.append(x)
        c1, c2, c3 = feats
        p2 = _upsample_add(c3, self.latlayer1(c2))
        p1 = _upsample_add(p2, self.latlayer2(c1))
        rows = [c3 if i < COARSE_IND else p2 if i < MIDDLE_IND else p1 for i in range(self.style_count)]
        return torch.stack([style(f) for style, f in zip(self.styles, rows)], dim=1)
