"""StyleGAN2 generator and discriminator (Karras et al. 2020) in pure PyTorch.

Parameter and buffer names match rosinality/stylegan2-pytorch ``model.py`` exactly, so
``Generator(...).load_state_dict(ckpt["g_ema"], strict=True)`` loads official checkpoints
(and pSp/e4e decoders) as they are. Images are [B, 3, H, W] with nominal range [-1, 1],
returned unclamped; latents are w [B, style_dim] and W+ ``ws`` [B, n_latent, style_dim].
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .ops import Blur, EqualConv2d, EqualLinear, FusedLeakyReLU, PixelNorm, Upsample

BLUR_KERNEL = (1, 3, 3, 1)


def channels_at(res, channel_multiplier=2, channel_max=512):
    """Feature channels at resolution ``res``: rosinality's table (512 up to 32 px, then
    256·cm at 64, halving per octave), capped at ``channel_max`` for small models."""
    ch = 512 if res <= 32 else int(16384 * channel_multiplier / res)
    return min(ch, channel_max)


class ModulatedConv2d(nn.Module):
    """Style-modulated conv with optional demodulation and 2x up/down sampling.

    x: [B, in, H, W], style: [B, style_dim] -> [B, out, H', W']. Computed as
    modulate-input -> shared conv -> demodulate-output, which is the same arithmetic as
    the official per-sample grouped conv (to float32 rounding) and much faster on CPU; 1x1
    convs (ToRGB) modulate the weight per sample instead, in one batched matmul.
    """

    def __init__(self, in_channel, out_channel, kernel_size, style_dim, demodulate=True,
                 upsample=False, downsample=False, blur_kernel=BLUR_KERNEL):
        super().__init__()
        self.in_channel, self.out_channel, self.kernel_size = in_channel, out_channel, kernel_size
        self.upsample, self.downsample, self.demodulate = upsample, downsample, demodulate
        factor = 2
        if upsample:
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)
        if downsample:
            p = (len(blur_kernel) - factor) + (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2, p // 2))
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)

    def forward(self, x, style):
        out, demod = self.conv_and_demod(x, style)
        return out if demod is None else out * demod[:, :, None, None].to(out.dtype)

    def conv_and_demod(self, x, style):
        """The conv of the modulated input [B, out, H', W'] and the demodulation factors [B, out]
        (None without demodulation), kept apart so that StyledConv can fold them into its
        epilogue: at 256 px every full-tensor pass costs as much as a small conv on CPU."""
        s = self.modulation(style)  # [B, in]
        weight = self.weight[0] * self.scale  # [out, in, k, k]
        if self.kernel_size == 1 and not (self.upsample or self.downsample):
            out = self._pointwise(x, weight[:, :, 0, 0][None] * s[:, None, :])
        else:
            out = self._conv(x * s[:, :, None, None].to(x.dtype), weight)
        if not self.demodulate:
            return out, None
        # sum_{in,k,k} (w * s)^2 = s^2 @ (sum_k w^2)^T  -> [B, out]
        return out, torch.rsqrt(s.pow(2) @ weight.pow(2).sum([2, 3]).t() + 1e-8)

    @staticmethod
    def _pointwise(x, w):
        """1x1 conv with per-sample weights w [B, out, in] as one batched matmul over the pixels
        (ToRGB): modulating the small weight, not the activations, saves a full pass over x."""
        b, c, h, wd = x.shape
        w = w.to(x.dtype)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            out = torch.bmm(x.permute(0, 2, 3, 1).reshape(b, h * wd, c), w.transpose(1, 2))  # [B, HW, out]
            return out.view(b, h, wd, -1).permute(0, 3, 1, 2)  # channels_last, no copy
        return torch.bmm(w, x.reshape(b, c, h * wd)).view(b, -1, h, wd)

    def _conv(self, x, weight):
        if self.upsample:
            return self.blur(F.conv_transpose2d(x, weight.transpose(0, 1).to(x.dtype), stride=2))
        if self.downsample:
            return F.conv2d(self.blur(x), weight.to(x.dtype), stride=2)
        return F.conv2d(x, weight.to(x.dtype), padding=self.padding)


class NoiseInjection(nn.Module):
    """x + weight * noise; noise [B or 1, 1, H, W]."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x, noise):
        if noise is None:
            return x
        return x + self.weight * noise.to(x.dtype)


class ConstantInput(nn.Module):
    """The learned 4x4 input, ``input`` [1, C, 4, 4], repeated over the batch."""

    def __init__(self, channel, size=4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, batch):
        return self.input.expand(batch, -1, -1, -1)


class StyledConv(nn.Module):
    """ModulatedConv2d -> noise -> bias + leaky ReLU."""

    def __init__(self, in_channel, out_channel, kernel_size, style_dim, upsample=False,
                 blur_kernel=BLUR_KERNEL, demodulate=True):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim,
                                    demodulate=demodulate, upsample=upsample, blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def forward(self, x, style, noise=None):
        """leaky_relu(conv·demod + noise_weight·noise + bias)·√2, computed as
        leaky_relu(√2·demod·conv + √2·bias + √2·noise_weight·noise) (leaky ReLU is positively
        homogeneous): two full-size passes and an in-place activation instead of five passes."""
        out, demod = self.conv.conv_and_demod(x, style)
        gain = self.activate.scale
        bias = (self.activate.bias * gain).view(1, -1, 1, 1).to(out.dtype)
        if demod is None:
            y = torch.add(bias, out, alpha=gain)
        else:
            y = torch.addcmul(bias, out, (demod * gain)[:, :, None, None].to(out.dtype))
        if noise is not None:
            y = y.add_(self.noise.weight.to(out.dtype) * gain * noise.to(out.dtype))
        return F.leaky_relu_(y, self.activate.negative_slope)


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB (no demodulation) + bias, added to the upsampled skip."""

    def __init__(self, in_channel, style_dim, upsample=True, blur_kernel=BLUR_KERNEL):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x, style, skip=None):
        out = self.conv(x, style) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


class Generator(nn.Module):
    """StyleGAN2 generator, rosinality state-dict layout.

    size: output resolution (power of two >= 8); n_latent = 2*log2(size) - 2 style inputs.
    ``latent_avg`` ([style_dim] or None) is a non-persistent buffer set by the checkpoint
    loaders (or ``mean_latent``); it is the default truncation centre.
    """

    def __init__(self, size, style_dim=512, n_mlp=8, channel_multiplier=2, blur_kernel=BLUR_KERNEL,
                 lr_mlp=0.01, channel_max=512):
        super().__init__()
        if size < 8 or size & (size - 1):
            raise ValueError(f"Generator size must be a power of two >= 8, got {size}")
        self.size, self.style_dim, self.n_mlp = size, style_dim, n_mlp
        self.channel_multiplier, self.channel_max = channel_multiplier, channel_max
        self.log_size = int(math.log2(size))
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.n_latent = self.log_size * 2 - 2

        self.style = nn.Sequential(PixelNorm(), *[
            EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation="fused_lrelu") for _ in range(n_mlp)
        ])

        ch = lambda res: channels_at(res, channel_multiplier, channel_max)  # noqa: E731
        self.input = ConstantInput(ch(4))
        self.conv1 = StyledConv(ch(4), ch(4), 3, style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(ch(4), style_dim, upsample=False)

        self.convs, self.to_rgbs = nn.ModuleList(), nn.ModuleList()
        self.noises = nn.Module()
        for i in range(self.num_layers):
            res = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, res, res))
        in_ch = ch(4)
        for log_res in range(3, self.log_size + 1):
            out_ch = ch(2**log_res)
            self.convs.append(StyledConv(in_ch, out_ch, 3, style_dim, upsample=True, blur_kernel=blur_kernel))
            self.convs.append(StyledConv(out_ch, out_ch, 3, style_dim, blur_kernel=blur_kernel))
            self.to_rgbs.append(ToRGB(out_ch, style_dim, blur_kernel=blur_kernel))
            in_ch = out_ch
        self.register_buffer("latent_avg", None, persistent=False)

    # -- latent space -------------------------------------------------------------------
    def mapping(self, z, truncation=1.0, truncation_latent=None):
        """z [B, style_dim] -> w [B, style_dim]; truncation pulls w toward ``truncation_latent``
        (default ``latent_avg``): w' = c + psi * (w - c). Always fp32, also under a bf16 autocast:
        the mapping is a small share of the FLOPs, and w's small per-channel offsets (lr_mul 0.01
        weights) would lose their low bits in bf16 (8-bit mantissa)."""
        with torch.autocast(z.device.type, enabled=False):
            w = self.style(z.float())
        return w if truncation == 1 else self.truncate(w, truncation, truncation_latent)

    def truncate(self, w, psi, center=None):
        """c + psi * (w - c) for w [B, D] or [B, n_latent, D]; c defaults to ``latent_avg``."""
        center = self.latent_avg if center is None else center
        if center is None:
            raise ValueError("truncation needs a centre: pass truncation_latent or set latent_avg (mean_latent)")
        return center + psi * (w - center)

    @torch.no_grad()
    def mean_latent(self, n=4096, seed=None):
        """Mean of mapping(z) over n samples of z ~ N(0, I): [1, style_dim]."""
        device = self.input.input.device
        gen = None if seed is None else torch.Generator(device).manual_seed(seed)
        z = torch.randn(n, self.style_dim, device=device, generator=gen)
        return self.style(z).mean(0, keepdim=True)

    def broadcast(self, w):
        """w [B, D] -> ws [B, n_latent, D] (the same w for every layer)."""
        return w.unsqueeze(1).expand(-1, self.n_latent, -1)

    def mix(self, w1, w2, inject_index):
        """Style mixing: layers [0, inject_index) from w1, the rest from w2 -> [B, n_latent, D]."""
        ws = self.broadcast(w1).clone()
        ws[:, inject_index:] = w2.unsqueeze(1)
        return ws

    def make_noise(self, batch=1, device=None):
        """Fresh N(0, 1) noise maps, one per layer: list of [batch, 1, res, res]."""
        device = device or self.input.input.device
        return [torch.randn(batch, 1, *getattr(self.noises, f"noise_{i}").shape[2:], device=device)
                for i in range(self.num_layers)]

    def _noise(self, noise_mode, batch):
        if isinstance(noise_mode, (list, tuple)):
            if len(noise_mode) != self.num_layers:
                raise ValueError(f"explicit noise needs {self.num_layers} maps, got {len(noise_mode)}")
            return list(noise_mode)
        if noise_mode == "const":
            return [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]
        if noise_mode == "random":
            return self.make_noise(batch)
        if noise_mode == "none":
            return [None] * self.num_layers
        raise ValueError(f"noise_mode must be 'const', 'random', 'none' or a list of maps, got {noise_mode!r}")

    # -- image synthesis ----------------------------------------------------------------
    def synthesis(self, ws, noise_mode="const"):
        """ws [B, n_latent, style_dim] -> image [B, 3, size, size] (unclamped, ~[-1, 1]).

        noise_mode: 'const' (the stored ``noises.noise_i`` buffers), 'random', 'none', or an
        explicit list of ``num_layers`` maps [B or 1, 1, res, res].
        """
        if ws.ndim != 3 or ws.shape[1] != self.n_latent:
            raise ValueError(f"synthesis expects ws [B, {self.n_latent}, {self.style_dim}], got {tuple(ws.shape)}")
        noise = self._noise(noise_mode, ws.shape[0])
        out = self.conv1(self.input(ws.shape[0]), ws[:, 0], noise[0])
        skip = self.to_rgb1(out, ws[:, 1])
        i = 1
        for conv_up, conv, to_rgb, n1, n2 in zip(self.convs[::2], self.convs[1::2], self.to_rgbs,
                                                  noise[1::2], noise[2::2]):
            out = conv(conv_up(out, ws[:, i], n1), ws[:, i + 1], n2)
            skip = to_rgb(out, ws[:, i + 2], skip)
            i += 2
        return skip

    def forward(self, z, truncation=1.0, truncation_latent=None, noise_mode="random"):
        """z [B, style_dim] -> image [B, 3, size, size]; the GAN sampling path."""
        return self.synthesis(self.broadcast(self.mapping(z, truncation, truncation_latent)), noise_mode)


class ConvLayer(nn.Sequential):
    """[Blur] -> EqualConv2d -> [FusedLeakyReLU]; the discriminator's conv unit."""

    def __init__(self, in_channel, out_channel, kernel_size, downsample=False, blur_kernel=BLUR_KERNEL,
                 bias=True, activate=True):
        layers = []
        if downsample:
            p = (len(blur_kernel) - 2) + (kernel_size - 1)
            layers.append(Blur(blur_kernel, pad=((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(EqualConv2d(in_channel, out_channel, kernel_size, stride=stride, padding=padding,
                                  bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_channel, bias=bias))
        super().__init__(*layers)


class ResBlock(nn.Module):
    """Residual downsampling block: (conv2(conv1(x)) + skip(x)) / sqrt(2)."""

    def __init__(self, in_channel, out_channel, blur_kernel=BLUR_KERNEL):
        super().__init__()
        self.conv1 = ConvLayer(in_channel, in_channel, 3)
        self.conv2 = ConvLayer(in_channel, out_channel, 3, downsample=True, blur_kernel=blur_kernel)
        self.skip = ConvLayer(in_channel, out_channel, 1, downsample=True, activate=False, bias=False,
                              blur_kernel=blur_kernel)

    def forward(self, x):
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)


class Discriminator(nn.Module):
    """StyleGAN2 residual discriminator, rosinality layout. image [B, 3, size, size] -> logits [B, 1]."""

    def __init__(self, size, channel_multiplier=2, blur_kernel=BLUR_KERNEL, channel_max=512):
        super().__init__()
        if size < 8 or size & (size - 1):
            raise ValueError(f"Discriminator size must be a power of two >= 8, got {size}")
        self.size = size
        ch = lambda res: channels_at(res, channel_multiplier, channel_max)  # noqa: E731
        convs = [ConvLayer(3, ch(size), 1)]
        in_ch = ch(size)
        for log_res in range(int(math.log2(size)), 2, -1):
            out_ch = ch(2 ** (log_res - 1))
            convs.append(ResBlock(in_ch, out_ch, blur_kernel))
            in_ch = out_ch
        self.convs = nn.Sequential(*convs)
        self.stddev_group, self.stddev_feat = 4, 1
        self.final_conv = ConvLayer(in_ch + 1, ch(4), 3)
        self.final_linear = nn.Sequential(
            EqualLinear(ch(4) * 4 * 4, ch(4), activation="fused_lrelu"),
            EqualLinear(ch(4), 1),
        )

    def minibatch_stddev(self, x):
        """Append the mean per-group feature std as one channel. Sample b is grouped with
        b + k*(B/G) (official ``view(G, -1, ...)``); G = the largest divisor of B that is <= 4,
        which equals the official min(B, 4) wherever the official code runs."""
        b, c, h, w = x.shape
        group = next(g for g in range(min(b, self.stddev_group), 0, -1) if b % g == 0)
        y = x.view(group, -1, self.stddev_feat, c // self.stddev_feat, h, w)
        y = torch.sqrt(y.var(0, unbiased=False) + 1e-8).mean([2, 3, 4], keepdim=True).squeeze(2)
        return torch.cat([x, y.repeat(group, 1, h, w)], 1)

    def forward(self, x):
        out = self.final_conv(self.minibatch_stddev(self.convs(x)))
        return self.final_linear(out.flatten(1))
