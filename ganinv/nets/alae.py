"""StyleALAE networks (Pidhorskyi et al. 2020), module and parameter names as in podgorskiy/ALAE.

Official recipe: podgorskiy/ALAE ``net.py`` (``EncoderDefault``, ``GeneratorDefault`` = ``Generator``,
``MappingF``, ``MappingD``, ``EncodeBlock``, ``DecodeBlock``), ``lreq.py`` (equalised layers),
``model.py`` (``Model``: ``mapping_d``, ``mapping_f``, ``decoder``, ``encoder``, ``dlatent_avg``).
State dicts of these modules are the ones the official ``Checkpointer`` stores, so an official
``.pth`` loads into them strictly (see :mod:`ganinv.checkpoints.alae`).

Shapes and ranges: images [B, C, R, R] in [-1, 1] with R = 2**(layer_count + 1) at full resolution
(2**(lod + 2) at level of detail ``lod``); W [B, D]; per-layer styles [B, 2 * layer_count, D].

Equalised learning rate is "implicit" as the official default (``lreq.use_implicit_lreq``): weights
are stored already scaled (initialised N(0, std²), std = gain / sqrt(fan_in) · lrmul) and the
optimiser scales each parameter's step by its coefficient (:func:`lr_equalization_groups`, the
official ``lr_equalization_coef``). Deliberate deviations: ``EncodeBlock(last=True)`` (used only by
the ``EncoderWithFC``/``EncoderWithStatistics`` variants, not by the official configs) is not
built; tensors are made on the input's device (the official code relies on a CUDA default type).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

SQRT2 = math.sqrt(2.0)  # the default gain of lreq layers (He)


class LREQLinear(nn.Module):
    """``lreq.Linear`` with implicit equalisation: weight [out, in], bias [out]."""

    def __init__(self, in_features, out_features, bias=True, gain=SQRT2, lrmul=1.0):
        super().__init__()
        self.std = gain / math.sqrt(in_features) * lrmul
        self.lrmul = lrmul
        self.weight = nn.Parameter(torch.randn(out_features, in_features) * (self.std / lrmul))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def lr_coefs(self):
        return {"weight": self.std, "bias": self.lrmul}

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class LREQConv2d(nn.Module):
    """``lreq.Conv2d`` / ``ConvTranspose2d`` (implicit equalisation). ``transform_kernel`` pads the
    3x3 kernel to 4x4 and sums 2x2 neighbours (×0.25 for the strided conv): the fused up/down-scale."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 gain=SQRT2, transpose=False, transform_kernel=False):
        super().__init__()
        self.std = gain / math.sqrt(kernel_size * kernel_size * in_channels)
        self.stride, self.padding = stride, padding
        self.transpose, self.transform_kernel = transpose, transform_kernel
        shape = (in_channels, out_channels) if transpose else (out_channels, in_channels)
        self.weight = nn.Parameter(torch.randn(*shape, kernel_size, kernel_size) * self.std)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def lr_coefs(self):
        return {"weight": self.std, "bias": 1.0}

    def forward(self, x):
        w = self.weight
        if self.transform_kernel:
            w = F.pad(w, (1, 1, 1, 1))
            w = w[:, :, 1:, 1:] + w[:, :, :-1, 1:] + w[:, :, 1:, :-1] + w[:, :, :-1, :-1]
        if self.transpose:
            return F.conv_transpose2d(x, w, self.bias, stride=self.stride, padding=self.padding)
        if self.transform_kernel:
            w = w * 0.25
        return F.conv2d(x, w, self.bias, stride=self.stride, padding=self.padding)


def lr_equalization_groups(module, lr):
    """Adam parameter groups [{'params', 'lr', 'lr_coef'}]: lr × the official ``lr_equalization_coef``
    (weight std / bias lrmul of equalised layers; 1 for the other parameters)."""
    coef = {}
    for layer in module.modules():
        if isinstance(layer, (LREQLinear, LREQConv2d)):
            for name, c in layer.lr_coefs().items():
                p = getattr(layer, name)
                if p is not None:
                    coef[p] = c
    groups = {}
    for p in module.parameters():
        groups.setdefault(coef.get(p, 1.0), []).append(p)
    return [{"params": ps, "lr": lr * c, "lr_coef": c} for c, ps in groups.items()]


def pixel_norm(x, eps=1e-8):
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)


def style_mod(x, style):
    """AdaIN affine: style [B, 2C] -> x · (1 + scale) + shift."""
    style = style.view(style.shape[0], 2, x.shape[1], 1, 1)
    return torch.addcmul(style[:, 1], x, style[:, 0] + 1)


def mean_std(x):
    """Instance statistics [B, 2C]: per-channel mean and (biased) std, the encoder's style input."""
    m = x.mean(dim=[2, 3], keepdim=True)
    std = (x - m).pow(2).mean(dim=[2, 3], keepdim=True).sqrt()
    return torch.cat((m, std), dim=1).flatten(1)


class Blur(nn.Module):
    """Depthwise [1, 2, 1]ᵀ[1, 2, 1] / 16 filter; the kernel is a buffer (``weight``) as official."""

    def __init__(self, channels):
        super().__init__()
        f = torch.tensor([1.0, 2.0, 1.0])
        k = f[:, None] * f[None, :]
        self.register_buffer("weight", (k / k.sum()).view(1, 1, 3, 3).repeat(channels, 1, 1, 1))
        self.groups = channels

    def forward(self, x):
        return F.conv2d(x, self.weight, groups=self.groups, padding=1)


class FromRGB(nn.Module):
    def __init__(self, channels, outputs):
        super().__init__()
        self.from_rgb = LREQConv2d(channels, outputs, 1)

    def forward(self, x):
        return F.leaky_relu(self.from_rgb(x), 0.2)


class ToRGB(nn.Module):
    def __init__(self, inputs, channels):
        super().__init__()
        self.to_rgb = LREQConv2d(inputs, channels, 1, gain=0.03)

    def forward(self, x):
        return self.to_rgb(x)


class EncodeBlock(nn.Module):
    """Official ``EncodeBlock(last=False)``: conv -> instance statistics (style_1) -> IN -> blur,
    downscaling conv -> statistics (style_2) -> IN. Returns (x at half resolution, w1, w2 [B, D])."""

    def __init__(self, inputs, outputs, latent_size, fused_scale=True):
        super().__init__()
        self.fused_scale = fused_scale
        self.conv_1 = LREQConv2d(inputs, inputs, 3, 1, 1, bias=False)
        self.bias_1 = nn.Parameter(torch.zeros(1, inputs, 1, 1))
        self.instance_norm_1 = nn.InstanceNorm2d(inputs, affine=False)
        self.blur = Blur(inputs)
        stride = 2 if fused_scale else 1
        self.conv_2 = LREQConv2d(inputs, outputs, 3, stride, 1, bias=False, transform_kernel=fused_scale)
        self.bias_2 = nn.Parameter(torch.zeros(1, outputs, 1, 1))
        self.instance_norm_2 = nn.InstanceNorm2d(outputs, affine=False)
        self.style_1 = LREQLinear(2 * inputs, latent_size)
        self.style_2 = LREQLinear(2 * outputs, latent_size)

    def forward(self, x):
        x = F.leaky_relu(self.conv_1(x) + self.bias_1, 0.2)
        w1 = self.style_1(mean_std(x))
        x = self.conv_2(self.blur(self.instance_norm_1(x)))
        if not self.fused_scale:
            x = F.avg_pool2d(x, 2, 2)
        x = F.leaky_relu(x + self.bias_2, 0.2)
        w2 = self.style_2(mean_std(x))
        return self.instance_norm_2(x), w1, w2


class DecodeBlock(nn.Module):
    """Official ``DecodeBlock``: [upscale conv, blur] -> noise -> bias, lrelu, IN, style -> conv ->
    noise -> bias, lrelu, IN, style. ``noise``: True (per-sample N(0,1) maps), 'batch_constant', or
    False (the official deterministic substitute, a Gaussian bump of x)."""

    def __init__(self, inputs, outputs, latent_size, has_first_conv=True, fused_scale=True, layer=0):
        super().__init__()
        self.has_first_conv, self.fused_scale, self.layer = has_first_conv, fused_scale, layer
        if has_first_conv:
            if fused_scale:
                self.conv_1 = LREQConv2d(inputs, outputs, 3, 2, 1, bias=False, transpose=True, transform_kernel=True)
            else:
                self.conv_1 = LREQConv2d(inputs, outputs, 3, 1, 1, bias=False)
        self.blur = Blur(outputs)
        self.noise_weight_1 = nn.Parameter(torch.zeros(1, outputs, 1, 1))
        self.bias_1 = nn.Parameter(torch.zeros(1, outputs, 1, 1))
        self.instance_norm_1 = nn.InstanceNorm2d(outputs, affine=False, eps=1e-8)
        self.style_1 = LREQLinear(latent_size, 2 * outputs, gain=1)
        self.conv_2 = LREQConv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.noise_weight_2 = nn.Parameter(torch.zeros(1, outputs, 1, 1))
        self.bias_2 = nn.Parameter(torch.zeros(1, outputs, 1, 1))
        self.instance_norm_2 = nn.InstanceNorm2d(outputs, affine=False, eps=1e-8)
        self.style_2 = LREQLinear(latent_size, 2 * outputs, gain=1)

    def _noise(self, x, weight, noise):
        if not noise:
            s = math.sqrt(self.layer + 1)
            return x + s * torch.exp(-x * x / (2.0 * s * s)) / math.sqrt(2 * math.pi) * 0.8
        n = 1 if noise == "batch_constant" else x.shape[0]
        return torch.addcmul(x, weight, torch.randn(n, 1, x.shape[2], x.shape[3], device=x.device, dtype=x.dtype))

    def forward(self, x, s1, s2, noise):
        if self.has_first_conv:
            if not self.fused_scale:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = self.blur(self.conv_1(x))
        x = F.leaky_relu(self._noise(x, self.noise_weight_1, noise) + self.bias_1, 0.2)
        x = style_mod(self.instance_norm_1(x), self.style_1(s1))
        x = self.conv_2(x)
        x = F.leaky_relu(self._noise(x, self.noise_weight_2, noise) + self.bias_2, 0.2)
        return style_mod(self.instance_norm_2(x), self.style_2(s2))


def encoder_widths(startf, maxf, layer_count):
    """(inputs, outputs) channels of encoder block i (official ``EncoderDefault.__init__``)."""
    return [(startf if i == 0 else min(maxf, startf * 2**i), min(maxf, startf * 2 ** (i + 1)))
            for i in range(layer_count)]


class Encoder(nn.Module):
    """Official ``EncoderDefault``: image [B, C, 2**(lod+2)]² -> W [B, D], the sum of every block's two
    style vectors (read from instance-norm statistics). Block i runs at 2**(layer_count+1-i) px."""

    def __init__(self, startf=32, maxf=256, layer_count=3, latent_size=128, channels=3):
        super().__init__()
        self.layer_count, self.latent_size = layer_count, latent_size
        self.from_rgb = nn.ModuleList()
        self.encode_block = nn.ModuleList()
        resolution = 2 ** (layer_count + 1)
        for inputs, outputs in encoder_widths(startf, maxf, layer_count):
            self.from_rgb.append(FromRGB(channels, inputs))
            self.encode_block.append(EncodeBlock(inputs, outputs, latent_size, fused_scale=resolution >= 128))
            resolution //= 2

    def forward(self, x, lod=None, blend=1.0):
        lod = self.layer_count - 1 if lod is None else lod
        first = self.layer_count - lod - 1
        styles = x.new_zeros(x.shape[0], self.latent_size)
        h = F.leaky_relu(self.from_rgb[first](x), 0.2)  # official: a second lrelu after FromRGB's
        if blend != 1:  # fade-in: the new block's styles weighted by blend, its output lerped with
            h, s1, s2 = self.encode_block[first](h)  # the previous level's FromRGB of the half image
            styles = styles + (s1 + s2) * blend
            prev = F.leaky_relu(self.from_rgb[first + 1](F.avg_pool2d(x, 2, 2)), 0.2)
            h = torch.lerp(prev, h, blend)
            first += 1
        for i in range(first, self.layer_count):
            h, s1, s2 = self.encode_block[i](h)
            styles = styles + s1 + s2
        return styles


class Generator(nn.Module):
    """Official ``GeneratorDefault``: styles [B, 2·layer_count, D] (or W [B, D], broadcast) -> image
    [B, C, 2**(lod+2)]² (no tanh; [-1, 1] by training). Block i outputs 2**(i+2) px."""

    def __init__(self, startf=32, maxf=256, layer_count=3, latent_size=128, channels=3):
        super().__init__()
        self.layer_count, self.latent_size = layer_count, latent_size
        widths = [min(maxf, startf * 2 ** (layer_count - 1 - i)) for i in range(layer_count)]
        self.const = nn.Parameter(torch.ones(1, widths[0], 4, 4))
        self.layer_to_resolution = [2 ** (i + 2) for i in range(layer_count)]
        self.decode_block = nn.ModuleList()
        self.to_rgb = nn.ModuleList()
        inputs = widths[0]
        for i, outputs in enumerate(widths):
            fused = self.layer_to_resolution[i] >= 128
            self.decode_block.append(DecodeBlock(inputs, outputs, latent_size, i != 0, fused_scale=fused, layer=i))
            self.to_rgb.append(ToRGB(outputs, channels))
            inputs = outputs

    def forward(self, styles, lod=None, blend=1.0, noise=True):
        lod = self.layer_count - 1 if lod is None else lod
        if styles.ndim == 2:
            styles = styles[:, None].expand(-1, 2 * self.layer_count, -1)
        x = self.const
        for i in range(lod):
            x = self.decode_block[i](x, styles[:, 2 * i], styles[:, 2 * i + 1], noise)
        prev = self.to_rgb[lod - 1](x) if blend != 1 else None
        x = self.to_rgb[lod](self.decode_block[lod](x, styles[:, 2 * lod], styles[:, 2 * lod + 1], noise))
        if prev is None:
            return x
        return torch.lerp(F.interpolate(prev, size=self.layer_to_resolution[lod]), x, blend)


class MappingBlock(nn.Module):
    def __init__(self, inputs, output, lrmul):
        super().__init__()
        self.fc = LREQLinear(inputs, output, lrmul=lrmul)

    def forward(self, x):
        return F.leaky_relu(self.fc(x), 0.2)


class MappingF(nn.Module):
    """Official ``MappingF`` (F): z [B, D] -> pixel norm -> ``mapping_layers`` lrelu FCs (lrmul 0.1)
    -> w repeated to [B, num_layers, D]."""

    def __init__(self, num_layers, mapping_layers=5, latent_size=256, dlatent_size=256, mapping_fmaps=256):
        super().__init__()
        self.num_layers = num_layers
        sizes = [dlatent_size] + [mapping_fmaps] * (mapping_layers - 1) + [latent_size]
        self.map_blocks = nn.ModuleList(MappingBlock(a, b, 0.1) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, z):
        x = pixel_norm(z)
        for block in self.map_blocks:
            x = block(x)
        return x[:, None].repeat(1, self.num_layers, 1)


class MappingD(nn.Module):
    """Official ``MappingD`` (D): W [B, D] (or [B, 1, D]) -> linear FCs, no activations (lrmul 0.1),
    last of width 2·D -> logit [B], output unit D (official: for compatibility with older models)."""

    def __init__(self, mapping_layers=3, latent_size=256, dlatent_size=256, mapping_fmaps=256):
        super().__init__()
        sizes = [latent_size] + [mapping_fmaps] * (mapping_layers - 1) + [2 * dlatent_size]
        self.map_blocks = nn.ModuleList(LREQLinear(a, b, lrmul=0.1) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, w):
        x = w[:, 0] if w.ndim == 3 else w
        for block in self.map_blocks:
            x = block(x)
        return x[:, x.shape[1] // 2]


class DLatent(nn.Module):
    """Running mean of mapped styles (``buff`` [num_layers, D]), the truncation centre."""

    def __init__(self, dlatent_size, layer_count):
        super().__init__()
        self.register_buffer("buff", torch.zeros(layer_count, dlatent_size))


class ALAEModel(nn.Module):
    """Official ``Model``'s networks: ``mapping_d`` (D, 3 layers), ``mapping_f`` (F, 2·layer_count
    styles), ``decoder`` (G), ``encoder`` (E), ``dlatent_avg``. Arguments are the official
    MODEL config values (START_CHANNEL_COUNT, MAX_CHANNEL_COUNT, LAYER_COUNT, LATENT_SPACE_SIZE,
    MAPPING_LAYERS, CHANNELS)."""

    def __init__(self, startf=32, maxf=256, layer_count=3, latent_size=128, mapping_layers=5, channels=3):
        super().__init__()
        self.layer_count, self.latent_size = layer_count, latent_size
        self.mapping_d = MappingD(3, latent_size, latent_size, latent_size)
        self.mapping_f = MappingF(2 * layer_count, mapping_layers, latent_size, latent_size, latent_size)
        self.decoder = Generator(startf, maxf, layer_count, latent_size, channels)
        self.encoder = Encoder(startf, maxf, layer_count, latent_size, channels)
        self.dlatent_avg = DLatent(latent_size, 2 * layer_count)
