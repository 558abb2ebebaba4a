"""IR / IR-SE ResNets (ArcFace backbones, Deng et al. 2019) as used by pSp and e4e.

Module and parameter names match pSp's ``models/encoders/model_irse.py`` and ``helpers.py``
(``input_layer.*``, ``body.N.res_layer.*``, ``body.N.shortcut_layer.*``, ``output_layer.*``), so
``model_ir_se50.pth`` loads into :class:`Backbone` with ``strict=True`` and its trunk into the
encoders of :mod:`ganinv.nets.psp_encoders`.
"""
import torch
from torch import nn

# Units per stage; the first unit of every stage has stride 2 (also the 64 -> 64 stage).
# 50/100/152 are pSp's; 18/34 (insightface's iresnet18/34 unit counts) are for small models
# such as the embedded default.
UNITS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}
_DEPTHS = (64, 128, 256, 512)
MODES = ("ir", "ir_se")


def get_blocks(num_layers):
    """Per stage, the list of units as ``(in_channel, depth, stride)``."""
    if num_layers not in UNITS:
        raise ValueError(f"IR-SE num_layers must be one of {sorted(UNITS)}, got {num_layers}")
    blocks, in_channel = [], 64
    for depth, n in zip(_DEPTHS, UNITS[num_layers]):
        blocks.append([(in_channel, depth, 2)] + [(depth, depth, 1)] * (n - 1))
        in_channel = depth
    return blocks


class SEModule(nn.Module):
    """Squeeze-and-excitation channel gate (Hu et al. 2018); bias-free 1x1 convs."""

    def __init__(self, channels, reduction=16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        return x * self.gate(x)

    def gate(self, x):
        """[B, C, H, W] -> channel gate [B, C, 1, 1] in (0, 1)."""
        return self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class Subsample(nn.Module):
    """x[:, :, ::stride, ::stride] — what pSp's ``MaxPool2d(1, stride)`` shortcut computes (a max over
    one element), as a view: no copy, no index tensor. No parameters, so state dicts are unchanged."""

    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return x if self.stride == 1 else x[:, :, :: self.stride, :: self.stride]


class BottleneckIR(nn.Module):
    """Improved residual unit: BN-Conv3x3-PReLU-Conv3x3(stride)-BN[-SE] plus shortcut.

    The shortcut is pSp's ``MaxPool2d(1, stride)`` (pure subsampling, here :class:`Subsample`) when
    the width does not change, otherwise a strided 1x1 conv + BN. ``use_se=True`` is pSp's
    ``bottleneck_IR_SE``; its gate and the residual sum are one ``addcmul`` pass.
    """

    def __init__(self, in_channel, depth, stride, use_se=False):
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer = Subsample(stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, 1, stride, bias=False), nn.BatchNorm2d(depth)
            )
        layers = [
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        ]
        if use_se:
            layers.append(SEModule(depth, 16))
        self.res_layer = nn.Sequential(*layers)
        self.use_se = use_se

    def forward(self, x):
        shortcut = self.shortcut_layer(x)
        if not self.use_se:
            return self.res_layer(x) + shortcut
        *body, se = self.res_layer
        h = x
        for layer in body:
            h = layer(h)
        return torch.addcmul(shortcut, h, se.gate(h))


def make_input_layer(input_nc=3):
    """Stem: Conv3x3(input_nc -> 64, no bias), BN, PReLU; keeps the resolution."""
    return nn.Sequential(nn.Conv2d(input_nc, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))


def make_body(num_layers=50, mode="ir_se"):
    """The residual trunk as one flat ``nn.Sequential`` plus the index of each stage's last unit.

    The stages end at strides 2, 4, 8, 16 with 64, 128, 256, 512 channels; for 50 layers the
    ends are units (2, 6, 20, 23), the taps pSp's FPN reads.
    """
    if mode not in MODES:
        raise ValueError(f"IR-SE mode must be one of {MODES}, got {mode!r}")
    units, stage_ends = [], []
    for block in get_blocks(num_layers):
        units += [BottleneckIR(i, d, s, use_se=mode == "ir_se") for i, d, s in block]
        stage_ends.append(len(units) - 1)
    return nn.Sequential(*units), tuple(stage_ends)


def l2_norm(x, axis=1):
    return torch.div(x, torch.norm(x, 2, axis, True))


class Backbone(nn.Module):
    """ArcFace face-recognition network (pSp's ``Backbone``; TreB1eN's InsightFace port).

    ``Backbone(112, 50, 'ir_se', drop_ratio=0.6, affine=True)`` is the network behind pSp/e4e's
    ID loss (weights ``model_ir_se50.pth``). Input: aligned faces [B, 3, S, S], S = input_size
    (112 or 224), in [-1, 1]. Output: unit-norm embeddings [B, 512].
    """

    def __init__(self, input_size=112, num_layers=50, mode="ir", drop_ratio=0.4, affine=True):
        super().__init__()
        if input_size not in (112, 224):
            raise ValueError(f"Backbone input_size must be 112 or 224, got {input_size}")
        self.input_layer = make_input_layer(3)
        spatial = input_size // 16
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512),
            nn.Dropout(drop_ratio),
            nn.Flatten(),
            nn.Linear(512 * spatial * spatial, 512),
            nn.BatchNorm1d(512, affine=affine),
        )
        self.body, _ = make_body(num_layers, mode)

    def forward(self, x):
        return l2_norm(self.output_layer(self.body(self.input_layer(x))))
