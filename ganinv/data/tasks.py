"""Paired-input tasks for pSp-style image-to-image training.

A task maps a target image y ([3, H, W] or [B, 3, H, W] in [-1, 1]) to the encoder input x and says how
many channels x has (``input_nc``, the pSp encoder's ``input_nc``). Random tasks take an optional
``torch.Generator`` so a dataset can make every item's input reproducible. ``OneHotLabels`` is the
exception: segmentation-to-image inputs are label maps that cannot be derived from the target, so it
converts a label map instead (``from_target = False``).
"""

from __future__ import annotations

import kornia
import torch
import torch.nn.functional as F


def _batched(y, channels=3):
    """(batch [B, C, H, W], single): a lone image [C, H, W] gets a batch dim and ``single=True``."""
    if y.dim() == 3:
        y = y[None]
        single = True
    elif y.dim() == 4:
        single = False
    else:
        raise ValueError(f"expected an image [C, H, W] or batch [B, C, H, W], got shape {list(y.shape)}")
    if y.shape[1] != channels:
        raise ValueError(f"expected {channels} channels, got shape {list(y.shape)}")
    return y, single


def _bicubic_kernel(factor, a=-0.5):
    """pSp's BicubicDownSample taps: 4 * factor samples of the Keys cubic, normalised to sum 1."""
    size = 4 * factor
    x = ((torch.arange(size, dtype=torch.float64) - size // 2 + 0.5) / factor).abs()
    near = (a + 2) * x**3 - (a + 3) * x**2 + 1
    far = a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    k = torch.where(x <= 1, near, torch.where(x < 2, far, torch.zeros_like(x)))
    return (k / k.sum()).float()


def bicubic_downsample(x, factor):
    """Downsample [B, C, H, W] by an integer factor as pSp's BicubicDownSample does -> [B, C, H//f, W//f].

    Separable 4f-tap cubic (Keys, a = -0.5) filter with stride f after reflect-padding 3f rows and columns,
    the odd one at the bottom/right. As in pSp, factor 1 is not the identity: its 4-tap kernel
    [-1/16, 9/16, 9/16, -1/16] shifts the image by half a pixel.
    """
    if factor < 1:
        raise ValueError(f"downsampling factor must be a positive integer, got {factor}")
    b, c, h, w = x.shape
    pad = 3 * factor  # filter size 4f minus stride f
    if pad // 2 + pad % 2 >= min(h, w):
        raise ValueError(f"downsampling factor {factor} is too large for {h}x{w} images")
    k = _bicubic_kernel(factor).to(x)
    x = F.pad(x, (0, 0, pad // 2, pad - pad // 2), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), stride=(factor, 1), groups=c)
    x = F.pad(x, (pad // 2, pad - pad // 2, 0, 0), mode="reflect")
    return F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), stride=(1, factor), groups=c)


def _quantize(x01):
    """torchvision's ToPILImage on a float image truncates x * 255 to uint8."""
    return (x01 * 255).floor().clamp(0, 255) / 255


def _choice(n, generator):
    return int(torch.randint(n, (1,), generator=generator))


class SuperResolution:
    """Low-resolution input at the target size (pSp super-resolution, ``BilinearResize`` + ``Resize``).

    Per image: pick a factor uniformly from ``factors``, downsample with pSp's bicubic filter, clamp and
    truncate to 8 bits (their round trip through PIL), then upsample bilinearly back to H x W.
    Input: 3 channels in [-1, 1]. Matches pSp to within one 8-bit level (PIL's fixed-point bilinear).
    """

    from_target = True
    input_nc = 3

    def __init__(self, factors: tuple[int, ...] = (1, 2, 4, 8, 16, 32)):
        if not factors or any(int(f) != f or f < 1 for f in factors):
            raise ValueError(f"factors must be positive integers, got {factors}")
        self.factors = tuple(int(f) for f in factors)

    def degrade(self, y, factor):
        """[B, 3, H, W] in [-1, 1] -> [B, 3, H, W] in [-1, 1] at one fixed factor."""
        low = _quantize(bicubic_downsample((y + 1) / 2, factor).clamp(0, 1))
        up = F.interpolate(low, size=y.shape[-2:], mode="bilinear", align_corners=False)
        return _quantize(up.clamp(0, 1)) * 2 - 1

    def __call__(self, y, generator=None):
        y, single = _batched(y)
        picks = [self.factors[_choice(len(self.factors), generator)] for _ in range(len(y))]
        x = torch.cat([self.degrade(yi[None], f) for yi, f in zip(y, picks)])
        return x[0] if single else x


class Inpainting:
    """Masked input for inpainting: one random axis-aligned hole per image.

    Hole sides are uniform in [min_size, max_size] (fractions of H and W), its position uniform inside the
    image. Input: 4 channels, the image with the hole set to 0 (mid grey) followed by the mask (1 in the
    hole, 0 elsewhere), so the encoder knows which pixels are missing.
    """

    from_target = True
    input_nc = 4

    def __init__(self, min_size: float = 0.25, max_size: float = 0.5):
        if not 0 < min_size <= max_size <= 1:
            raise ValueError(f"need 0 < min_size <= max_size <= 1, got {min_size}, {max_size}")
        self.min_size, self.max_size = min_size, max_size

    def mask(self, h, w, generator=None):
        """One hole mask [1, h, w] with 1 inside the hole."""
        frac = self.min_size + (self.max_size - self.min_size) * torch.rand(2, generator=generator)
        mh, mw = max(1, round(float(frac[0]) * h)), max(1, round(float(frac[1]) * w))
        top, left = _choice(h - mh + 1, generator), _choice(w - mw + 1, generator)
        m = torch.zeros(1, h, w)
        m[:, top : top + mh, left : left + mw] = 1
        return m

    def __call__(self, y, generator=None):
        y, single = _batched(y)
        m = torch.stack([self.mask(*y.shape[-2:], generator=generator) for _ in range(len(y))]).to(y)
        x = torch.cat([y * (1 - m), m], 1)
        return x[0] if single else x


class Grayscale:
    """Colourisation input: ITU-R 601 luma of the target, 1 channel in [-1, 1]."""

    from_target = True
    input_nc = 1

    def __call__(self, y, generator=None):
        y, single = _batched(y)
        # Luma is linear, so it commutes with the [0, 1] -> [-1, 1] map.
        x = kornia.color.rgb_to_grayscale(y)
        return x[0] if single else x


class EdgeSketch:
    """Sketch input: dark edge lines on white, 1 channel in [0, 1] like pSp's sketch inputs (ToTensor,
    not normalised).

    ``method='sobel'``: 1 - clamp(gain * |Sobel(luma)|), soft pencil-like lines; ``method='canny'``:
    1 - Canny edges (binary lines, thresholds on luma in [0, 1]).
    """

    from_target = True
    input_nc = 1

    def __init__(self, method: str = "sobel", gain: float = 4.0, low: float = 0.1, high: float = 0.2):
        if method not in ("sobel", "canny"):
            raise ValueError(f"EdgeSketch method must be 'sobel' or 'canny', got {method!r}")
        self.method, self.gain, self.low, self.high = method, gain, low, high

    def __call__(self, y, generator=None):
        y, single = _batched(y)
        luma = kornia.color.rgb_to_grayscale((y + 1) / 2)
        if self.method == "sobel":
            edges = (self.gain * kornia.filters.sobel(luma, eps=1e-12)).clamp(0, 1)
        else:
            edges = kornia.filters.canny(luma, self.low, self.high)[1]
        x = 1 - edges
        return x[0] if single else x


class OneHotLabels:
    """Segmentation-map input (pSp ``ToOneHot``): integer labels -> one-hot float channels.

    Takes a label map [H, W], [1, H, W], [B, H, W] or [B, 1, H, W] with integer values in [0, label_nc)
    (long, or float holding integers) and returns [label_nc, H, W] or [B, label_nc, H, W] of 0/1.
    """

    from_target = False

    def __init__(self, label_nc: int):
        if label_nc < 1:
            raise ValueError(f"label_nc must be positive, got {label_nc}")
        self.label_nc = label_nc

    @property
    def input_nc(self):
        return self.label_nc

    def __call__(self, labels, generator=None):
        single = labels.dim() == 2 or (labels.dim() == 3 and labels.shape[0] == 1)
        if labels.dim() == 4:
            if labels.shape[1] != 1:
                raise ValueError(f"label batch must be [B, 1, H, W], got {list(labels.shape)}")
            labels = labels[:, 0]
        elif labels.dim() == 2:
            labels = labels[None]
        elif labels.dim() != 3:
            raise ValueError(f"expected a label map [H, W] or batch, got shape {list(labels.shape)}")
        if labels.is_floating_point():
            if not torch.equal(labels, labels.round()):
                raise ValueError("label map holds non-integer values; pass class indices, not an image")
            labels = labels.long()
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.label_nc):
            raise ValueError(
                f"labels must lie in [0, {self.label_nc}), got [{int(labels.min())}, {int(labels.max())}]"
            )
        x = F.one_hot(labels, self.label_nc).permute(0, 3, 1, 2).float()
        return x[0] if single else x


class HorizontalFlip:
    """Frontalization input (pSp ``FrontalizationTransforms``): the target flipped with probability p.

    The official flips source and target independently (a ``RandomHorizontalFlip(0.5)`` in each
    transform). With the data module's own flip of y (``data.flip``), x = flip_p(y) has the same joint
    law: x's flip state is y's XOR an independent fair coin, so x and y are flipped independently.
    """

    from_target = True
    input_nc = 3

    def __init__(self, p: float = 0.5):
        if not 0 <= p <= 1:
            raise ValueError(f"flip probability p must lie in [0, 1], got {p}")
        self.p = p

    def __call__(self, y, generator=None):
        y, single = _batched(y)
        flip = torch.rand(len(y), generator=generator) < self.p
        x = torch.where(flip.view(-1, 1, 1, 1).to(y.device), y.flip(-1), y)
        return x[0] if single else x


class LuminanceLabels(OneHotLabels):
    """A stand-in label map derived from the target (not an official input): luma in [0, 1] cut into
    ``label_nc`` equal bins, one-hot like :class:`OneHotLabels`. It lets the segmentation-to-face recipe
    train on data without label maps (the embedded procedural faces, tests); real runs use label maps.
    """

    from_target = True

    def __call__(self, y, generator=None):
        y, single = _batched(y)
        luma = kornia.color.rgb_to_grayscale((y + 1) / 2).clamp(0, 1)
        labels = (luma * self.label_nc).long().clamp(max=self.label_nc - 1)
        x = super().__call__(labels)
        return x[0] if single else x
