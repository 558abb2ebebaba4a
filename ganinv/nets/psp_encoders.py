"""pSp encoders (Richardson et al. 2021) on an IR-SE trunk.

Names follow pSp's ``models/encoders/psp_encoders.py`` (``input_layer``, ``body``, ``styles.N``,
``latlayer1/2``, ``output_pool``/``output_layer_2``, ``linear``), so official checkpoints load with
``strict=True`` after stripping the ``encoder.`` prefix. Inputs are images [B, input_nc, H, W] in
[-1, 1]; pSp feeds 256x256, and any H, W in [16, 256] works (e.g. 192x256): the heads need the
16x-downsampled map to pool to 1x1.
Outputs are offsets from ``latent_avg``: W+ codes [B, n_styles, 512] (or w [B, 512]).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .irse import make_body, make_input_layer
from .ops import EqualLinear

# pSp's coarse/middle/fine split of the style heads: rows [0, 3) read c3 (16x16 at 256 px),
# [3, 7) the FPN map p2 (32x32), the rest p1 (64x64).
COARSE_IND = 3
MIDDLE_IND = 7


class GradualStyleBlock(nn.Module):
    """map2style: log2(spatial) stride-2 3x3 convs with LeakyReLU(0.01), then EqualLinear.

    [B, in_c, h, w] -> [B, out_c]; the convs must bring the map down to 1x1. The convs are
    ``hidden`` wide (official: hidden = out_c = 512).
    """

    def __init__(self, in_c, out_c, spatial, hidden=None):
        super().__init__()
        hidden = hidden or out_c
        self.out_c = out_c
        layers = []
        for i in range(int(math.log2(spatial))):
            layers += [nn.Conv2d(in_c if i == 0 else hidden, hidden, 3, stride=2, padding=1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(hidden, out_c, lr_mul=1)

    def forward(self, x):
        x = self.convs(x)
        if x.shape[-2:] != (1, 1):
            raise ValueError(
                f"GradualStyleBlock: features pooled to {tuple(x.shape[-2:])}, not 1x1; "
                "the encoder input is larger than its input_size (pSp resizes inputs to 256x256)"
            )
        return self.linear(x.flatten(1))


class ProgressiveStage:
    """Mixin for e4e-style encoders: ``progressive_stage`` is an int in [0, style_count - 1] (deltas
    1..stage are on) or ``'all'`` (official ``ProgressiveStage.Inference``); validated on set."""

    progressive = True

    @property
    def progressive_stage(self):
        return self._progressive_stage

    @progressive_stage.setter
    def progressive_stage(self, stage):
        valid = stage == "all" if isinstance(stage, str) else 0 <= stage < self.style_count
        if not (self.progressive and valid):
            raise ValueError(f"{type(self).__name__}.progressive_stage must be an int in [0, "
                             f"{self.style_count - 1}] or 'all' (progressive encoders only), got {stage!r}")
        self._progressive_stage = stage


def _upsample_add(x, y):
    # Bilinear (not nearest 2x) so odd lateral sizes still line up.
    return F.interpolate(x, size=y.shape[2:], mode="bilinear", align_corners=True) + y


def _check_n_styles(n_styles):
    if n_styles < 1:
        raise ValueError(f"n_styles must be >= 1 (2*log2(size)-2 for a generator), got {n_styles}")


class FPNStyleEncoderBase(nn.Module):
    """IR-SE trunk with FPN taps and one GradualStyleBlock per style (shared by pSp and e4e).

    ``input_size`` sizes the heads to the tap maps (input/16, /8, /4: 16, 32, 64 at pSp's 256)
    and ``head_channels`` sets their conv width; the defaults are the official architecture,
    smaller values make small encoders (e.g. 64 px input for the embedded 64 px generator).
    """

    def __init__(self, num_layers=50, mode="ir_se", n_styles=18, input_nc=3, input_size=256, head_channels=512):
        super().__init__()
        _check_n_styles(n_styles)
        if input_size < 16 or input_size & (input_size - 1):
            raise ValueError(f"encoder input_size must be a power of two >= 16, got {input_size}")
        self.input_nc, self.input_size = input_nc, input_size
        self.num_layers, self.mode = num_layers, mode
        self.input_layer = make_input_layer(input_nc)
        self.body, stage_ends = make_body(num_layers, mode)
        # Ends of stages 2-4 (128, 256, 512 ch). The official hard-codes units 6/20/23, which are
        # these ends for 50 layers but would tap 256-ch units for 100/152 layers.
        self.taps = stage_ends[1:]
        self.style_count = n_styles
        self.coarse_ind, self.middle_ind = COARSE_IND, MIDDLE_IND
        spatial = [max(1, input_size // d) for d in (16, 8, 4)]  # c3, p2, p1 sizes
        self.styles = nn.ModuleList(
            GradualStyleBlock(512, 512, spatial[0 if i < COARSE_IND else 1 if i < MIDDLE_IND else 2],
                              hidden=head_channels)
            for i in range(n_styles)
        )
        self.latlayer1 = nn.Conv2d(256, 512, kernel_size=1)
        self.latlayer2 = nn.Conv2d(128, 512, kernel_size=1)

    def trunk(self, x):
        """Images [B, input_nc, H, W] -> (c1, c2, c3) at strides 4, 8, 16 with 128, 256, 512 ch."""
        if x.ndim != 4 or x.shape[1] != self.input_nc:
            name = type(self).__name__
            raise ValueError(f"{name} expects [B, {self.input_nc}, H, W] input, got {tuple(x.shape)}")
        x = self.input_layer(x)
        feats = []
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in self.taps:
                feats.append(x)
        return feats

    def fpn_middle(self, c3, c2):
        return _upsample_add(c3, self.latlayer1(c2))

    def fpn_fine(self, p2, c1):
        return _upsample_add(p2, self.latlayer2(c1))


class GradualStyleEncoder(FPNStyleEncoderBase):
    """pSp's FPN encoder: style i = styles[i](c3 | p2 | p1) for coarse | middle | fine rows.

    [B, input_nc, H, W] -> [B, n_styles, 512] (latent_avg not added). ``input_nc`` is 3 for
    RGB, 6 for ReStyle (image + reconstruction), label_nc for sketches/segmentation maps.
    """

    def forward(self, x):
        c1, c2, c3 = self.trunk(x)
        p2 = self.fpn_middle(c3, c2)
        p1 = self.fpn_fine(p2, c1)
        feats = [c3 if i < self.coarse_ind else p2 if i < self.middle_ind else p1
                 for i in range(self.style_count)]
        return torch.stack([style(f) for style, f in zip(self.styles, feats)], dim=1)


class BackboneEncoderUsingLastLayerIntoW(nn.Module):
    """pSp's W encoder: IR-SE trunk, global average pool, EqualLinear. -> w [B, 512].

    The generator broadcasts w to all layers (pSp's ``learn_in_w``; pSp ``models/psp.py``
    builds it for ``--encoder_type BackboneEncoderUsingLastLayerIntoW``, e4e names it
    ``SingleStyleCodeEncoder``). ``n_styles``, ``input_size`` and ``head_channels`` are taken so
    that every pSp encoder is built from one config (``conf/method/psp.yaml``): the single w
    needs no style count, the global pool takes any input size, and there are no style heads.
    """

    learn_in_w = True

    def __init__(self, num_layers=50, mode="ir_se", input_nc=3, n_styles=None, input_size=None,
                 head_channels=None):
        super().__init__()
        self.num_layers, self.mode, self.input_nc = num_layers, mode, input_nc
        self.input_layer = make_input_layer(input_nc)
        self.output_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = EqualLinear(512, 512, lr_mul=1)
        self.body, _ = make_body(num_layers, mode)

    def forward(self, x):
        x = self.output_pool(self.body(self.input_layer(x)))
        return self.linear(x.flatten(1))


class BackboneEncoderUsingLastLayerIntoWPlus(nn.Module):
    """pSp's W+ baseline: IR-SE trunk, BN, pool to 7x7, Linear(25088, 512), EqualLinear to all styles.

    -> [B, n_styles, 512]. The official hard-codes 18 styles; ``n_styles=18`` loads its weights.
    ``input_size`` / ``head_channels`` are taken for the shared config and unused (the 7x7 pool
    takes any input size; no style heads).
    """

    learn_in_w = False

    def __init__(self, num_layers=50, mode="ir_se", n_styles=18, input_nc=3, input_size=None, head_channels=None):
        super().__init__()
        _check_n_styles(n_styles)
        self.num_layers, self.mode, self.input_nc = num_layers, mode, input_nc
        self.n_styles = n_styles
        self.input_layer = make_input_layer(input_nc)
        self.output_layer_2 = nn.Sequential(
            nn.BatchNorm2d(512), nn.AdaptiveAvgPool2d((7, 7)), nn.Flatten(), nn.Linear(512 * 7 * 7, 512)
        )
        self.linear = EqualLinear(512, 512 * n_styles, lr_mul=1)
        self.body, _ = make_body(num_layers, mode)

    def forward(self, x):
        x = self.output_layer_2(self.body(self.input_layer(x)))
        return self.linear(x).view(-1, self.n_styles, 512)


def load_irse50_into_encoder(encoder, ir_se50_state_dict, input_is_label=False, generator=None):
    """Initialise an encoder's IR-SE trunk from ArcFace IR-SE50 (``model_ir_se50.pth``) as pSp/ReStyle do.

    pSp's ``load_weights``: ``encoder.load_state_dict(ir_se50, strict=False)``, so every
    ``input_layer.*`` and ``body.*`` entry is copied, the file's ``output_layer.*`` (the
    face-embedding head) comes back as unexpected and the style heads keep their
    initialisation. With ``input_is_label=True`` (pSp's ``label_nc != 0``: segmentation maps,
    sketches) the keys containing ``input_layer`` are dropped first, so the whole input layer
    keeps its initialisation. Otherwise, when the encoder takes ``input_nc != 3`` channels
    (ReStyle's 6), the first conv gets the RGB filters in channels 0-2 and ``torch.randn`` in the
    others (drawn from ``generator``), BN and PReLU are copied. Unlike the official (which would
    start silently from random weights for a missing key), a file lacking trunk entries is
    refused. Returns ``load_state_dict``'s result.
    """
    sd = dict(ir_se50_state_dict)
    trunk_keys = [k for k in encoder.state_dict() if k.startswith(("input_layer.", "body."))]
    if input_is_label:
        sd = {k: v for k, v in sd.items() if "input_layer" not in k}
        trunk_keys = [k for k in trunk_keys if not k.startswith("input_layer.")]
    missing = [k for k in trunk_keys if k not in sd]
    if missing:
        raise ValueError(
            f"ir_se50 state dict lacks {len(missing)} trunk entries (e.g. {missing[0]!r}); "
            "expected pSp's model_ir_se50.pth (keys input_layer.*, body.*, output_layer.*)"
        )
    stem = encoder.input_layer[0].weight
    if not input_is_label and stem.shape[1] != 3:
        rgb = sd["input_layer.0.weight"]
        if stem.shape[1] < 3:
            raise ValueError(
                f"encoder has input_nc={stem.shape[1]} < 3: pass input_is_label=True to keep its input "
                "layer at initialisation (pSp does this for label_nc != 0)"
            )
        widened = torch.randn(rgb.shape[0], stem.shape[1], *rgb.shape[2:], generator=generator)
        widened[:, :3] = rgb
        sd = {**sd, "input_layer.0.weight": widened}
    return encoder.load_state_dict(sd, strict=False)
