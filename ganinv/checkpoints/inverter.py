"""pSp, e4e and ReStyle encoder checkpoints (and ganinv's own exports) -> :class:`Inverter`.

The official files are ``torch.save`` dicts: ``state_dict`` (``encoder.*`` and ``decoder.*``,
the decoder a rosinality ``Generator``), ``opts`` (the training options as a dict) and, when
trained with ``start_from_latent_avg``, a top-level ``latent_avg`` ([n_styles, 512]; [1, 512]
for pSp's ``learn_in_w``). :meth:`ganinv.methods.encoder.EncoderMethod.export` writes the same
layout with extra ``opts`` (``generator``: the architecture; ``encoder_type`` may be
``'IDInvertEncoder'``).

Both networks are built from the tensor shapes (IR-SE depth and SE units, style count, input
channels, generator size and widths) and loaded with strict name and shape checks; ``opts``
must agree with them. They are built on the meta device and take the file's tensors, so no
random initialisation is spent on a 1024 px model.

How each family turns an image into W+ (official inference scripts, constant noise):
- pSp / e4e: ``codes = E(x) (+ latent_avg)``; a single-w encoder's output is broadcast.
- ReStyle (``n_iters_per_batch`` in opts, or a ReStyle-only encoder type): the encoder sees
  ``cat[x, y_hat]`` and predicts an offset; ``y_hat_0`` is ``G(latent_avg)`` pooled to the
  input size, ``codes_1 = E(cat[x, y_hat_0]) + latent_avg`` and
  ``codes_t = E(cat[x, y_hat_{t-1}]) + codes_{t-1}`` with ``y_hat_t = pool(G(codes_t))``.
"""
import math
import re
from argparse import Namespace
from itertools import chain
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..nets.e4e_encoder import Encoder4Editing
from ..nets.idinvert_encoder import IDInvertEncoder
from ..nets.irse import UNITS
from ..nets.psp_encoders import (
    BackboneEncoderUsingLastLayerIntoW,
    BackboneEncoderUsingLastLayerIntoWPlus,
    GradualStyleEncoder,
)
from ..nets.regression_encoder import RegressionEncoder, regression_encoder_kwargs
from ..nets.restyle_encoders import (
    BackboneEncoder,
    ProgressiveBackboneEncoder,
    ResNetBackboneEncoder,
    ResNetGradualStyleEncoder,
    ResNetProgressiveBackboneEncoder,
)
from ..nets.stylegan2 import Generator
from .safe import load_torch
from .stylegan import DEFAULT_LR_MLP, count_indices, generator_config

PSP_TYPES = ("GradualStyleEncoder", "BackboneEncoderUsingLastLayerIntoW",
             "BackboneEncoderUsingLastLayerIntoWPlus")
RESTYLE_TYPES = ("BackboneEncoder", "ResNetBackboneEncoder", "ResNetGradualStyleEncoder",
                 "ProgressiveBackboneEncoder", "ResNetProgressiveBackboneEncoder")
SUPPORTED_TYPES = (*PSP_TYPES, "Encoder4Editing", *RESTYLE_TYPES, "IDInvertEncoder", "RegressionEncoder")
OFFICIAL_INPUT_SIZE = (256, 256)  # pSp/e4e/ReStyle transforms: Resize((256, 256))
CARS_INPUT_SIZE = (192, 256)  # their 'cars_encode' transforms: Resize((192, 256))
RESTYLE_DEFAULT_ITERS = 5  # ReStyle's --n_iters_per_batch default
_STEMS = ("input_layer.0.weight", "conv1.weight", "block0.conv.weight")  # IR-SE, ResNet, IDInvert
_IRSE_DEPTH = {sum(units): n for n, units in UNITS.items()}  # residual units in body -> num_layers


class Inverter(nn.Module):
    """A trained encoder and its generator: images -> W+ codes -> images.

    Args:
        encoder: images [B, input_nc, H, W] -> offsets [B, n_styles, D] or w [B, D].
        generator: :class:`ganinv.nets.stylegan2.Generator` (``D = style_dim``).
        latent_avg: [n_styles, D] added to the encoder output (the first offset for ReStyle),
            or None when the model does not start from the average latent.
        input_size: (H, W) the encoder was trained on; inputs of another size are resized.
        restyle: iterative refinement on ``cat[image, reconstruction]`` (needs latent_avg).
        n_iters: default ReStyle iteration count.
        label_nc: > 1 for one-hot label-map inputs (resized with nearest neighbour).
        opts: the checkpoint's options, kept as a plain dict.

    Attributes: ``encoder``, ``generator``, ``latent_avg``, ``opts``, ``n_styles`` (=
    ``generator.n_latent``), ``input_nc`` (channels of the caller's input: the encoder's
    minus 3 for ReStyle), ``size`` (generator resolution), ``input_size``, ``avg_image``
    (ReStyle: ``G(latent_avg)`` at input size [1, 3, H, W], computed once).
    """

    def __init__(self, encoder, generator, latent_avg=None, input_size=OFFICIAL_INPUT_SIZE, restyle=False,
                 n_iters=RESTYLE_DEFAULT_ITERS, label_nc=0, opts=None):
        super().__init__()
        self.encoder, self.generator = encoder, generator
        self.opts = dict(opts or {})
        self.restyle, self.n_iters, self.label_nc = restyle, n_iters, label_nc
        self.n_styles, self.size = generator.n_latent, generator.size
        self.input_size = tuple(input_size)
        self.input_nc = _stem_channels(encoder) - (3 if restyle else 0)
        if latent_avg is not None and tuple(latent_avg.shape) != (self.n_styles, generator.style_dim):
            raise ValueError(f"latent_avg must be [{self.n_styles}, {generator.style_dim}], "
                             f"got {tuple(latent_avg.shape)}")
        if restyle and latent_avg is None:
            raise ValueError("ReStyle starts from latent_avg: it is required")
        # Non-persistent: the Inverter's state_dict is the two networks' weights only.
        self.register_buffer("latent_avg", latent_avg, persistent=False)
        avg_image = None
        if restyle:
            with torch.no_grad():
                avg_image = self.fit(generator.synthesis(latent_avg[None], noise_mode="const"))
        self.register_buffer("avg_image", avg_image, persistent=False)

    def prepare(self, x):
        """Encoder input at ``input_size``: images [B, input_nc, h, w] (RGB in [-1, 1], as the
        official transforms give) resized with antialiased bilinear interpolation (PIL's
        Resize), one-hot label maps with nearest neighbour."""
        if x.ndim != 4 or x.shape[1] != self.input_nc:
            raise ValueError(f"Inverter expects images [B, {self.input_nc}, H, W], got {tuple(x.shape)}")
        if tuple(x.shape[-2:]) == self.input_size:
            return x
        if self.label_nc > 1:
            return F.interpolate(x, size=self.input_size, mode="nearest")
        return F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=True)

    def fit(self, img):
        """Generator images [B, 3, S, S] -> [B, 3, *input_size]: centre-crop rows or columns to
        the input's aspect ratio, then average-pool (pSp's ``face_pool``; ReStyle's cars crop)."""
        h, w = img.shape[-2:]
        th, tw = self.input_size
        if h * tw > w * th:
            keep = round(w * th / tw)
            img = img[..., (h - keep) // 2:(h - keep) // 2 + keep, :]
        elif h * tw < w * th:
            keep = round(h * tw / th)
            img = img[..., (w - keep) // 2:(w - keep) // 2 + keep]
        if tuple(img.shape[-2:]) == self.input_size:
            return img
        return F.adaptive_avg_pool2d(img, self.input_size)

    def _codes(self, offsets, base):
        """Encoder output + base ([n_styles, D] latent_avg, [B, n_styles, D] codes, or None)."""
        if offsets.ndim == 2:  # single-w encoders (pSp learn_in_w): add row 0 of the base, broadcast
            w = offsets if base is None else offsets + base[..., 0, :]
            return self.generator.broadcast(w).contiguous()
        return offsets if base is None else offsets + base

    def encode(self, x, n_iters=None, return_steps=False):
        """Images [B, input_nc, h, w] -> W+ codes [B, n_styles, D].

        pSp/e4e: one pass. ReStyle: ``n_iters`` refinement steps (default: the checkpoint's
        ``n_iters_per_batch``, else 5), each decoding with constant noise. ``return_steps``
        returns the list of codes after every step (one entry for pSp/e4e).
        """
        x = self.prepare(x)
        if not self.restyle:
            if n_iters is not None:
                raise ValueError("n_iters applies to ReStyle checkpoints only")
            codes = self._codes(self.encoder(x), self.latent_avg)
            return [codes] if return_steps else codes
        n_iters = self.n_iters if n_iters is None else n_iters
        if n_iters < 1:
            raise ValueError(f"n_iters must be >= 1, got {n_iters}")
        y_hat, codes, steps = self.avg_image.expand(x.shape[0], -1, -1, -1), None, []
        for i in range(n_iters):
            codes = self._codes(self.encoder(torch.cat([x, y_hat], dim=1)),
                                self.latent_avg if codes is None else codes)
            steps.append(codes)
            if i + 1 < n_iters:
                y_hat = self.fit(self.generator.synthesis(codes, noise_mode="const"))
        return steps if return_steps else codes

    def decode(self, w, noise_mode="const", resize=False):
        """W+ codes [B, n_styles, D] (or w [B, D], broadcast) -> images [B, 3, size, size].

        ``noise_mode='const'`` uses the stored noise buffers (official inference:
        ``randomize_noise=False``). ``resize=True`` returns [B, 3, *input_size] through
        :meth:`fit`, which is pSp's ``resize=True`` (``face_pool`` to 256) for the official
        256 px square encoders; the default keeps the generator's full resolution, as the
        official inference scripts save it.
        """
        if w.ndim == 2:
            w = self.generator.broadcast(w)
        img = self.generator.synthesis(w, noise_mode=noise_mode)
        return self.fit(img) if resize else img

    def forward(self, x):
        """Images -> reconstructions [B, 3, size, size]."""
        return self.decode(self.encode(x))


def _stem_channels(encoder):
    sd = encoder.state_dict()
    for name in _STEMS:
        if name in sd:
            return sd[name].shape[1]
    raise ValueError(f"{type(encoder).__name__}: no known input convolution")


def _irse_arch(sd):
    units = count_indices(sd, r"body\.(\d+)\.res_layer\..*")
    se = any(re.fullmatch(r"body\.\d+\.res_layer\.5\.fc1\.weight", k) for k in sd)
    return _IRSE_DEPTH.get(units, 50), "ir_se" if se else "ir"


def _fpn_heads(sd):
    """(input_size, head_channels) of pSp/e4e FPN heads: the coarse head halves input/16 to 1
    with one stride-2 conv per octave, and its EqualLinear reads ``head_channels``."""
    n_convs = count_indices(sd, r"styles\.0\.convs\.(\d+)\.weight")
    linear = sd.get("styles.0.linear.weight")
    return 16 * 2**n_convs, 512 if linear is None else linear.shape[1]


def _idinvert_kwargs(sd, style_dim, name):
    first = sd.get("block0.conv.weight")
    if first is None:
        raise ValueError(f"{name}: encoder_type 'IDInvertEncoder', but no encoder.block0.conv.weight")
    n_blocks = count_indices(sd, r"block(\d+)\..*")
    widths = [sd[k].shape[0] for i in range(1, n_blocks - 1) if (k := f"block{i}.conv2.weight") in sd]
    # The width ladder is min(base * 2**i, max): its widest block gives a max that rebuilds it.
    base = first.shape[0]
    return dict(resolution=2**n_blocks, w_space_dim=style_dim, image_channels=first.shape[1],
                encoder_channels_base=base, encoder_channels_max=max(widths, default=base),
                use_bn="block0.bn.bn.weight" in sd)


def _encoder_n_styles(kind, sd, g):
    """Styles the encoder's weights produce (None for the single-w encoder)."""
    if kind == "BackboneEncoderUsingLastLayerIntoW":
        return None
    if kind == "BackboneEncoderUsingLastLayerIntoWPlus":
        w = sd.get("linear.weight")
        return g.n_latent if w is None else w.shape[0] // g.style_dim
    if kind == "RegressionEncoder":
        kwargs = regression_encoder_kwargs(sd, g.style_dim)
        return None if kwargs["learn_in_w"] else kwargs["n_styles"]
    if kind == "IDInvertEncoder":
        return 2 * count_indices(sd, r"block(\d+)\..*") - 2
    return count_indices(sd, r"styles\.(\d+)\..*")


def _encoder_factory(kind, sd, n_styles, input_nc, style_dim, name):
    """Zero-argument constructor of the encoder the state dict describes."""
    num_layers, mode = _irse_arch(sd)
    irse = dict(num_layers=num_layers, mode=mode, input_nc=input_nc)
    input_size, head_channels = _fpn_heads(sd)
    heads = dict(input_size=input_size, head_channels=head_channels)  # ReStyle's backbone heads read the same keys
    fpn = dict(n_styles=n_styles, **heads, **irse)
    factories = {
        "GradualStyleEncoder": lambda: GradualStyleEncoder(**fpn),
        "BackboneEncoderUsingLastLayerIntoW": lambda: BackboneEncoderUsingLastLayerIntoW(**irse),
        "BackboneEncoderUsingLastLayerIntoWPlus": lambda: BackboneEncoderUsingLastLayerIntoWPlus(
            n_styles=n_styles, **irse),
        "Encoder4Editing": lambda: Encoder4Editing(**fpn),
        "BackboneEncoder": lambda: BackboneEncoder(n_styles=n_styles, **irse, **heads),
        "ProgressiveBackboneEncoder": lambda: ProgressiveBackboneEncoder(n_styles=n_styles, **irse, **heads),
        "ResNetBackboneEncoder": lambda: ResNetBackboneEncoder(n_styles, input_nc, **heads),
        "ResNetProgressiveBackboneEncoder": lambda: ResNetProgressiveBackboneEncoder(n_styles, input_nc, **heads),
        "ResNetGradualStyleEncoder": lambda: ResNetGradualStyleEncoder(n_styles, input_nc),
        "IDInvertEncoder": lambda: IDInvertEncoder(**_idinvert_kwargs(sd, style_dim, name)),
        "RegressionEncoder": lambda: RegressionEncoder(**regression_encoder_kwargs(sd, style_dim)),
    }
    return factories[kind]


def _mismatch(module, sd):
    """Strict-load problems as text, or '' when names and shapes all match."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in sd and sd[k].shape != own[k].shape]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected),
                        ("with another shape (file vs model)", shapes)):
        if keys:
            more = ", ..." if len(keys) > 3 else ""
            parts.append(f"{len(keys)} {label} ({', '.join(keys[:3])}{more})")
    return "; ".join(parts)


def _build(factory, sd, name, what):
    """Build on the meta device, then adopt the file's tensors (float32) with strict checks."""
    with torch.device("meta"):
        module = factory()
    problems = _mismatch(module, sd)
    if problems:
        raise ValueError(f"{name}: {what} does not match its state dict: {problems}")
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    module.load_state_dict(sd, strict=True, assign=True)
    left = [n for n, t in chain(module.named_parameters(), module.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"{what}: tensors outside the state dict were left unset: {left[:3]}")
    return module


def _opts(ckpt, name):
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict) or "opts" not in ckpt:
        has = sorted(map(str, ckpt)) if isinstance(ckpt, dict) else type(ckpt).__name__
        gan = isinstance(ckpt, dict) and "g_ema" in ckpt
        hint = "; StyleGAN2 generators load with load_generator" if gan else ""
        raise ValueError(f"{name}: not a pSp/e4e/ReStyle checkpoint (needs 'state_dict' and 'opts'; "
                         f"has {has}){hint}")
    opts = ckpt["opts"]
    opts = vars(opts) if isinstance(opts, Namespace) else opts
    if not isinstance(opts, dict):
        raise ValueError(f"{name}: 'opts' is a {type(opts).__name__}, expected a dict of training options")
    return dict(opts)


def _check_sizes(opts, g, n_enc, name):
    for key in ("output_size", "stylegan_size"):
        if opts.get(key) is not None and opts[key] != g.size:
            n = 2 * int(math.log2(opts[key])) - 2
            raise ValueError(f"{name}: opts {key}={opts[key]} means {n} styles, but the decoder is a "
                             f"{g.size} px generator with {g.n_latent}")
    for label, n in (("opts n_styles", opts.get("n_styles")), ("the encoder's weights", n_enc)):
        if n is not None and n != g.n_latent:
            raise ValueError(f"{name}: {label} give {n} styles, but the decoder is a {g.size} px generator "
                             f"with {g.n_latent}")
    arch = opts.get("generator")
    if isinstance(arch, dict):
        # Widths are checked by the strict load; several (multiplier, max) pairs give the same ones.
        diff = {k: (arch[k], getattr(g, k)) for k in ("size", "style_dim", "n_mlp")
                if k in arch and arch[k] != getattr(g, k)}
        if diff:
            raise ValueError(f"{name}: opts generator {diff} (opts, weights) disagree with the decoder")


def _latent_avg(ckpt, opts, g, restyle, name):
    avg = ckpt.get("latent_avg")
    if avg is not None:
        ok = isinstance(avg, torch.Tensor) and tuple(avg.shape) in (
            (g.style_dim,), (1, g.style_dim), (g.n_latent, g.style_dim))
        if not ok:
            shape = tuple(avg.shape) if isinstance(avg, torch.Tensor) else type(avg).__name__
            raise ValueError(f"{name}: latent_avg is {shape}, expected [{g.n_latent}, {g.style_dim}], "
                             f"[1, {g.style_dim}] or [{g.style_dim}]")
        avg = avg.float().reshape(-1, g.style_dim).expand(g.n_latent, -1).clone()
    start = bool(opts.get("start_from_latent_avg", avg is not None))
    if (start or restyle) and avg is None:
        why = "ReStyle starts every inversion from it" if restyle else "opts start_from_latent_avg is True"
        raise ValueError(f"{name}: no latent_avg in the file, but {why}")
    return avg, start or restyle


def _input_size(opts, encoder, g, override, name):
    if isinstance(override, int):
        override = (override, override)
    if isinstance(encoder, IDInvertEncoder):
        fixed = (encoder.resolution,) * 2
        if override is not None and tuple(override) != fixed:
            raise ValueError(f"{name}: the IDInvert encoder only takes {fixed[0]}x{fixed[1]} inputs")
        return fixed
    if override is not None:
        return tuple(override)
    if isinstance(encoder, RegressionEncoder):  # trained at opts image_size (official --image_size 256)
        return (int(opts.get("image_size", encoder.input_size)),) * 2
    if opts.get("dataset_type") == "cars_encode":
        return CARS_INPUT_SIZE
    if isinstance(encoder, (GradualStyleEncoder, Encoder4Editing)):  # heads sized for it (256: official)
        return (encoder.input_size,) * 2
    if isinstance(opts.get("generator"), dict):  # ganinv export: trained at the data size, <= 256 by default
        return (min(g.size, 256),) * 2
    return OFFICIAL_INPUT_SIZE


def load_inverter(path, device="cpu", input_size=None):
    """An :class:`Inverter` (eval mode, on ``device``) from a pSp, e4e or ReStyle checkpoint,
    or a ganinv ``EncoderMethod.export`` file.

    ``encoder_type`` picks the encoder (:data:`SUPPORTED_TYPES`); a ``GradualStyleEncoder``
    file is ReStyle when its opts have ``n_iters_per_batch``. IR-SE depth and SE units, FPN
    head size and width, style count and input channels come from the weights.

    ``input_size`` (int or (H, W)) overrides the resolution inputs are resized to. Otherwise:
    192x256 for ``dataset_type='cars_encode'``, the size pSp/e4e FPN heads were built for
    (256x256 in official files), IDInvert's own resolution, min(generator size, 256) for other
    ganinv exports, else the official 256x256. Every error is one line naming the file.
    """
    name = Path(path)
    ckpt = load_torch(path, "encoder checkpoint")
    opts = _opts(ckpt, name)
    sd = ckpt["state_dict"]
    enc_sd = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    dec_sd = {k[len("decoder."):]: v for k, v in sd.items() if k.startswith("decoder.")}
    if not enc_sd or not dec_sd:
        raise ValueError(f"{name}: state_dict needs 'encoder.*' and 'decoder.*' entries "
                         f"(has {len(enc_sd)} encoder and {len(dec_sd)} decoder entries)")
    kind = opts.get("encoder_type")
    if kind not in SUPPORTED_TYPES:
        raise ValueError(f"{name}: unknown encoder_type {kind!r}; supported: {', '.join(SUPPORTED_TYPES)}")
    restyle = kind in RESTYLE_TYPES or "n_iters_per_batch" in opts

    gcfg = generator_config(dec_sd, name)
    # lr_mlp is not in the shapes: rosinality's 0.01, which every pSp/e4e/ReStyle decoder uses
    g = _build(lambda: Generator(**gcfg, lr_mlp=DEFAULT_LR_MLP), dec_sd, name, "decoder")
    n_enc = _encoder_n_styles(kind, enc_sd, g)
    _check_sizes(opts, g, n_enc, name)

    stem = next((enc_sd[k] for k in _STEMS if k in enc_sd), None)
    input_nc = stem.shape[1] if stem is not None else 3
    label_nc = int(opts.get("label_nc") or 0)
    expected_nc = int(opts.get("input_nc", 6 if restyle else 3))
    if input_nc not in (expected_nc, label_nc) or (restyle and input_nc < 4):
        note = " (ReStyle: image channels + 3)" if restyle else ""
        raise ValueError(f"{name}: the encoder's first conv takes {input_nc} channels, but opts give "
                         f"input_nc={expected_nc}, label_nc={label_nc}{note}")

    factory = _encoder_factory(kind, enc_sd, n_enc or g.n_latent, input_nc, g.style_dim, name)
    encoder = _build(factory, enc_sd, name, f"encoder {kind!r}")
    avg, start = _latent_avg(ckpt, opts, g, restyle, name)
    if avg is not None:
        g.latent_avg = avg[0].clone()  # the truncation centre
    inv = Inverter(encoder, g, avg if start else None, _input_size(opts, encoder, g, input_size, name),
                   restyle=restyle, n_iters=int(opts.get("n_iters_per_batch", RESTYLE_DEFAULT_ITERS)),
                   label_nc=label_nc, opts=opts)
    return inv.to(device).eval()
