"""StyleGAN2's low-level ops in plain PyTorch (no CUDA extensions).

They run on CPU, under autocast and under ``torch.compile``. Semantics follow the
reference ops of NVlabs/rosinality (``upfirdn2d``, ``fused_leaky_relu``).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

SQRT2 = math.sqrt(2)


def make_kernel(k):
    """FIR taps -> normalised 2-D kernel [kh, kw] (1-D taps become their outer product)."""
    k = torch.as_tensor(k, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


def upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0)):
    """Upsample by zero insertion, pad, FIR filter, downsample.

    x: [B, C, H, W]; kernel: [kh, kw]; pad: (before, after), applied to both axes,
    negative values crop. Returns [B, C, (H*up + p0 + p1 - kh) // down + 1, ...].
    The filter is applied as a true convolution (kernel flipped), like the reference op.
    """
    b, c, h, w = x.shape
    if up > 1:
        x = x.reshape(b, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(b, c, h * up, w * up)
    p0, p1 = pad
    padding = 0
    if p0 == p1 >= 0:  # the conv pads itself: no padded copy of x (the blurs after upsampling)
        padding = p0
    else:
        x = F.pad(x, [p0, p1, p0, p1])
    kh, kw = kernel.shape
    weight = torch.flip(kernel, [0, 1]).to(x.dtype).expand(c, 1, kh, kw)
    # Depthwise conv with stride == full-resolution filtering followed by [::down].
    return F.conv2d(x, weight, stride=down, padding=padding, groups=c)


def fused_leaky_relu(x, bias, negative_slope=0.2, scale=SQRT2):
    """leaky_relu(x + bias) * sqrt(2); bias [C] broadcast over dim 1 of x ([B, C, ...])."""
    shape = [1, -1] + [1] * (x.ndim - 2)
    return F.leaky_relu(x + bias.view(shape).to(x.dtype), negative_slope) * scale


class FusedLeakyReLU(nn.Module):
    """Bias + leaky ReLU(0.2) + sqrt(2) gain; the bias is this module's ``bias`` [C]."""

    negative_slope, scale = 0.2, SQRT2

    def __init__(self, channel, bias=True):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel)) if bias else None

    def forward(self, x):
        if self.bias is None:
            return F.leaky_relu(x, self.negative_slope) * self.scale
        return fused_leaky_relu(x, self.bias, self.negative_slope, self.scale)


class PixelNorm(nn.Module):
    """x / sqrt(mean(x^2 over dim 1) + 1e-8)."""

    def forward(self, x):
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


class Upsample(nn.Module):
    """2x FIR upsampling used on the RGB skip path. [B, C, H, W] -> [B, C, 2H, 2W]."""

    def __init__(self, kernel, factor=2):
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(kernel) * factor**2)
        p = self.kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x):
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class Blur(nn.Module):
    """FIR low-pass with the given padding (gain factor**2 when it follows an upsampling)."""

    def __init__(self, kernel, pad, upsample_factor=1):
        super().__init__()
        self.register_buffer("kernel", make_kernel(kernel) * upsample_factor**2)
        self.pad = tuple(pad)

    def forward(self, x):
        return upfirdn2d(x, self.kernel, pad=self.pad)


class EqualConv2d(nn.Module):
    """Conv2d with equalised learning rate: weight ~ N(0, 1) scaled by 1/sqrt(fan_in) at run time."""

    def __init__(self, in_channel, out_channel, kernel_size, stride=1, padding=0, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channel, in_channel, kernel_size, kernel_size))
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        self.stride, self.padding = stride, padding
        self.bias = nn.Parameter(torch.zeros(out_channel)) if bias else None

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)


class EqualLinear(nn.Module):
    """Linear with equalised learning rate and a learning-rate multiplier ``lr_mul``.

    Stored weight is N(0, 1/lr_mul^2); effective weight = weight / sqrt(in) * lr_mul,
    effective bias = bias * lr_mul. ``activation='fused_lrelu'`` applies fused_leaky_relu.
    """

    def __init__(self, in_dim, out_dim, bias=True, bias_init=0.0, lr_mul=1.0, activation=None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.activation = activation
        self.scale = 1 / math.sqrt(in_dim) * lr_mul
        self.lr_mul = lr_mul

    def forward(self, x):
        bias = None if self.bias is None else self.bias * self.lr_mul
        if self.activation:
            out = F.linear(x, self.weight * self.scale)
            return fused_leaky_relu(out, bias) if bias is not None else F.leaky_relu(out, 0.2) * math.sqrt(2)
        return F.linear(x, self.weight * self.scale, bias)
