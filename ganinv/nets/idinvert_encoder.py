"""IDInvert's domain-guided encoder (Zhu et al. 2020, genforce/idinvert_pytorch
``models/stylegan_encoder_network.py``: ``StyleGANEncoderNet``).

Module names follow the official (``block{i}.conv``, ``.bn.bn``, ``.conv1``, ``.wscale1``, ``.fc``),
so its encoder state dicts load with ``strict=True``.

Training follows the official TF training code (genforce/idinvert ``training/networks_encoder.py``),
not the inference-only port, in two places (deliberate, both invisible to a loaded checkpoint):
- every BN scale (gamma) is learnable, as TF ``sync_batch_norm(scale=True)``; the port freezes it
  (``gamma=False``), harmless for inference but, in training, the last BN then pins every W+
  coordinate's batch variance at 1 and the codes cannot shrink into W (measured: code radius
  3.5-3.8x W's at every point of a 1500-iteration run, experiments/results/curves.md);
- with BN, conv and fc weights start N(0, 0.02) (TF ``get_weight`` without wscale), biases 0, BN (1, 0).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


class BatchNormLayer(nn.Module):
    """BatchNorm2d, learnable scale and shift (TF training ``scale=True, center=True``), decay 0.9."""

    def __init__(self, channels):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, momentum=0.1, eps=1e-5)

    def forward(self, x):
        return self.bn(x)


def _norm(channels, use_bn):
    return BatchNormLayer(channels) if use_bn else nn.Identity()


def _lrelu(x):
    return F.leaky_relu(x, 0.2)


class FirstBlock(nn.Module):
    """Conv3x3 (no bias) -> BN -> LeakyReLU(0.2) at full resolution."""

    def __init__(self, in_channels, out_channels, use_wscale=False, use_bn=True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False)
        self.scale = math.sqrt(2) / math.sqrt(in_channels * 9) if use_wscale else 1.0
        self.bn = _norm(out_channels, use_bn)

    def forward(self, x):
        return _lrelu(self.bn(self.conv(x) * self.scale))


class WScaleLayer(nn.Module):
    """Holds the bias of the preceding bias-free conv (official layout: ``wscaleN.bias``)."""

    def __init__(self, channels):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x, scale):
        return x * scale + self.bias.view(1, -1, 1, 1)


class ResBlock(nn.Module):
    """Two Conv3x3 + bias -> BN -> LeakyReLU layers; shortcut 1x1 conv -> BN -> LeakyReLU if widening.

    With ``use_wscale`` the conv outputs are scaled by sqrt(2)/sqrt(fan_in) (equalised lr);
    without, the official divides by that scale and its WScaleLayer multiplies it back, i.e.
    conv(x) + bias, which is what is computed here.
    """

    def __init__(self, in_channels, out_channels, use_wscale=False, use_bn=True):
        super().__init__()
        gain = math.sqrt(2)
        self.add_shortcut = in_channels != out_channels
        if self.add_shortcut:
            self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
            self.scale = gain / math.sqrt(in_channels) if use_wscale else 1.0
            self.bn = _norm(out_channels, use_bn)
        hidden = min(in_channels, out_channels)
        self.conv1 = nn.Conv2d(in_channels, hidden, 3, 1, 1, bias=False)
        self.scale1 = gain / math.sqrt(in_channels * 9) if use_wscale else 1.0
        self.wscale1 = WScaleLayer(hidden)
        self.bn1 = _norm(hidden, use_bn)
        self.conv2 = nn.Conv2d(hidden, out_channels, 3, 1, 1, bias=False)
        self.scale2 = gain / math.sqrt(hidden * 9) if use_wscale else 1.0
        self.wscale2 = WScaleLayer(out_channels)
        self.bn2 = _norm(out_channels, use_bn)

    def forward(self, x):
        y = _lrelu(self.bn(self.conv(x) * self.scale)) if self.add_shortcut else x
        x = _lrelu(self.bn1(self.wscale1(self.conv1(x), self.scale1)))
        x = _lrelu(self.bn2(self.wscale2(self.conv2(x), self.scale2)))
        return x + y


class LastBlock(nn.Module):
    """Flatten the 4x4 map -> Linear (no bias, always equalised with gain 1) -> BN."""

    def __init__(self, in_channels, out_channels, use_bn=True):
        super().__init__()
        self.fc = nn.Linear(in_channels, out_channels, bias=False)
        self.scale = 1 / math.sqrt(in_channels)
        self.bn = _norm(out_channels, use_bn)

    def forward(self, x):
        x = self.fc(x.flatten(1)) * self.scale
        return self.bn(x[:, :, None, None]).flatten(1)


class IDInvertEncoder(nn.Module):
    """Images [B, image_channels, R, R] in [-1, 1] -> W+ [B, n_latent, w_space_dim].

    block0 (FirstBlock) at R, then ResBlocks each after a 2x2 average pool down to 4x4, then the
    LastBlock fc. Channels start at ``encoder_channels_base`` and double per block up to
    ``encoder_channels_max``. ``n_latent = 2*log2(R) - 2``: the official's ``num_layers``
    (``2*log2(R/4*2)``) is the same number, and it equals rosinality's ``Generator(R).n_latent``,
    so the output feeds ``Generator.synthesis`` directly. ``use_bn=True`` is the setting of every
    released IDInvert model (the class default in the official code is False).
    """

    def __init__(self, resolution, w_space_dim=512, image_channels=3, encoder_channels_base=64,
                 encoder_channels_max=1024, use_wscale=False, use_bn=True):
        super().__init__()
        log_res = int(math.log2(resolution)) if resolution > 0 else 0
        if resolution < 8 or 2**log_res != resolution:
            raise ValueError(f"IDInvertEncoder resolution must be a power of two >= 8, got {resolution}")
        self.resolution, self.image_channels = resolution, image_channels
        self.w_space_dim = w_space_dim
        self.n_latent = 2 * log_res - 2
        self.num_blocks = log_res
        in_ch, out_ch = image_channels, encoder_channels_base
        for i in range(self.num_blocks):
            if i == 0:
                block = FirstBlock(in_ch, out_ch, use_wscale, use_bn)
            elif i == self.num_blocks - 1:
                in_ch, out_ch = in_ch * 4 * 4, w_space_dim * self.n_latent
                block = LastBlock(in_ch, out_ch, use_bn)
            else:
                block = ResBlock(in_ch, out_ch, use_wscale, use_bn)
            self.add_module(f"block{i}", block)
            in_ch, out_ch = out_ch, min(out_ch * 2, encoder_channels_max)
        if use_bn:
            self.reset_parameters()

    def reset_parameters(self):
        """The official TF training initialisation: conv / fc weights N(0, 0.02), biases 0, BN (1, 0).
        Applied when ``use_bn`` (the official trains only with BN; without it PyTorch's default init
        is kept, as N(0, 0.02) would shrink the activations layer after layer)."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(module.weight, std=0.02)
            elif isinstance(module, WScaleLayer):
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()

    def forward(self, x):
        expected = (self.image_channels, self.resolution, self.resolution)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            shape = ", ".join(map(str, expected))
            raise ValueError(f"IDInvertEncoder expects [B, {shape}] input, got {tuple(x.shape)}")
        for i in range(self.num_blocks):
            if 0 < i < self.num_blocks - 1:
                x = F.avg_pool2d(x, 2)
            x = getattr(self, f"block{i}")(x)
        return x.view(x.shape[0], self.n_latent, self.w_space_dim)
