"""StyleALAE checkpoints: the official ``Checkpointer`` ``.pth`` (podgorskiy/ALAE ``checkpointer.py``)
and ganinv's export, which is the same layout plus the architecture.

Official file (``torch.save``): ``{"models": {name: state_dict}, "auxiliary": {...optimiser,
scheduler and tracker states}, ...}``. ``train_alae.py`` saves ``discriminator`` (the encoder E),
``generator`` (G), ``mapping_tl`` (D), ``mapping_fl`` (F), ``dlatent_avg`` and, from rank 0, the
EMA copies ``discriminator_s``, ``generator_s``, ``mapping_tl_s``, ``mapping_fl_s``; the inference
scripts (``interactive_demo.py``, ``make_figures/*``) read the ``_s`` ones and ``dlatent_avg``.
The file holds no architecture: it comes from the official config (:data:`OFFICIAL_CONFIGS`, the
``MODEL`` section of ``configs/<name>.yaml`` over ``defaults.py``), or from ``config`` in a ganinv
export (ignored by the official ``Checkpointer.load``, which returns unknown keys as extras).

Everything is read through :func:`ganinv.checkpoints.safe.load_torch` (allow-list, nothing executed)
and loaded strictly: names and shapes must match the networks the config describes.
"""
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..nets.alae import ALAEModel
from .safe import load_torch, save_atomic

# defaults.py MODEL values, then each configs/<name>.yaml MODEL section (all use EncoderDefault /
# GeneratorDefault and 3 channels).
OFFICIAL_DEFAULTS = {"LAYER_COUNT": 6, "START_CHANNEL_COUNT": 64, "MAX_CHANNEL_COUNT": 512,
                     "LATENT_SPACE_SIZE": 256, "MAPPING_LAYERS": 5, "CHANNELS": 3}
OFFICIAL_CONFIGS = {
    "ffhq": {"LATENT_SPACE_SIZE": 512, "LAYER_COUNT": 9, "MAX_CHANNEL_COUNT": 512, "START_CHANNEL_COUNT": 16,
             "MAPPING_LAYERS": 8},
    "celeba-hq256": {"LATENT_SPACE_SIZE": 512, "LAYER_COUNT": 7, "MAX_CHANNEL_COUNT": 512,
                     "START_CHANNEL_COUNT": 64, "MAPPING_LAYERS": 8},
    "bedroom": {"LATENT_SPACE_SIZE": 512, "LAYER_COUNT": 7, "MAX_CHANNEL_COUNT": 512, "START_CHANNEL_COUNT": 32,
                "MAPPING_LAYERS": 8},
    "celeba": {"LATENT_SPACE_SIZE": 256, "LAYER_COUNT": 6, "MAX_CHANNEL_COUNT": 256, "START_CHANNEL_COUNT": 64,
               "MAPPING_LAYERS": 8},
}
# official checkpoint model name -> ALAEModel attribute
MODEL_NAMES = {"discriminator": "encoder", "generator": "decoder", "mapping_tl": "mapping_d",
               "mapping_fl": "mapping_f"}


@dataclass
class ALAEConfig:
    """The official MODEL values that fix the architecture."""
    layer_count: int
    startf: int
    maxf: int
    latent_size: int
    mapping_layers: int
    channels: int = 3

    @classmethod
    def from_official(cls, values, name):
        if isinstance(values, str):
            if values not in OFFICIAL_CONFIGS:
                raise ValueError(f"{name}: unknown ALAE config {values!r}; known: {', '.join(OFFICIAL_CONFIGS)}")
            values = OFFICIAL_CONFIGS[values]
        if not isinstance(values, dict):
            kind = type(values).__name__
            raise ValueError(f"{name}: ALAE config must be a name or a dict of MODEL values, got a {kind}")
        unknown = sorted(set(values) - set(OFFICIAL_DEFAULTS))
        if unknown:
            raise ValueError(f"{name}: unknown ALAE MODEL keys {unknown}; expected {sorted(OFFICIAL_DEFAULTS)}")
        v = {**OFFICIAL_DEFAULTS, **values}
        bad = [k for k, x in v.items() if not isinstance(x, int) or isinstance(x, bool) or x < 1]
        if bad:
            raise ValueError(f"{name}: ALAE MODEL values {bad} must be positive integers")
        return cls(v["LAYER_COUNT"], v["START_CHANNEL_COUNT"], v["MAX_CHANNEL_COUNT"], v["LATENT_SPACE_SIZE"],
                   v["MAPPING_LAYERS"], v["CHANNELS"])

    def official(self):
        return {"LAYER_COUNT": self.layer_count, "START_CHANNEL_COUNT": self.startf, "MAX_CHANNEL_COUNT": self.maxf,
                "LATENT_SPACE_SIZE": self.latent_size, "MAPPING_LAYERS": self.mapping_layers,
                "CHANNELS": self.channels}

    def build(self):
        return ALAEModel(self.startf, self.maxf, self.layer_count, self.latent_size, self.mapping_layers,
                         self.channels)


def official_state(model, suffix=""):
    """{checkpoint name + suffix: state_dict} of an :class:`ALAEModel` (``dlatent_avg`` unsuffixed)."""
    out = {f"{name}{suffix}": getattr(model, attr).state_dict() for name, attr in MODEL_NAMES.items()}
    out["dlatent_avg"] = model.dlatent_avg.state_dict()
    return out


def save_alae(path, model, ema, config):
    """ganinv's export: the official layout (training nets, ``_s`` EMA nets, ``dlatent_avg``) plus
    ``config`` (official MODEL values); atomic write. Returns the Path."""
    models = {**official_state(model), **official_state(ema, "_s")}
    return save_atomic({"models": models, "auxiliary": {}, "config": config.official()}, path)


def _load_part(module, sd, name, what):
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{name}: models[{what!r}] is not a state dict of tensors")
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in sd and sd[k].shape != own[k].shape]
    problems = [f"{len(ks)} {label} ({', '.join(ks[:3])})" for label, ks in
                (("missing", missing), ("unexpected", unexpected), ("with another shape (file vs config)", shapes))
                if ks]
    if problems:
        raise ValueError(f"{name}: models[{what!r}] does not match the ALAE config: {'; '.join(problems)}")
    module.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True, assign=True)


class ALAEInverter(nn.Module):
    """Inversion with a loaded ALAE (official ``interactive_demo.py``): w = E(x) at full resolution,
    broadcast to every layer, image = G(w). Images [B, C, R, R] in [-1, 1], w [B, D]."""

    def __init__(self, model, config):
        super().__init__()
        self.encoder, self.decoder, self.mapping_f = model.encoder, model.decoder, model.mapping_f
        self.mapping_d, self.dlatent_avg = model.mapping_d, model.dlatent_avg
        self.config = config
        self.size = 2 ** (config.layer_count + 1)

    def encode(self, x):
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="area")
        return self.encoder(x)

    def decode(self, w, noise=True):
        """w [B, D] (broadcast) or styles [B, 2·layer_count, D]; ``noise`` as ``DecodeBlock``
        (official inference: True, per-sample random noise; False: deterministic)."""
        return self.decoder(w, noise=noise)

    def forward(self, x, noise=True):
        return self.decode(self.encode(x), noise=noise)


def load_alae(path, config=None, ema=True, device="cpu"):
    """An :class:`ALAEInverter` (eval mode, on ``device``) from an official ALAE ``.pth`` or a ganinv
    export. ``config``: an official config name (``ffhq``, ``celeba-hq256``, ``bedroom``, ``celeba``)
    or a dict of MODEL values; default the file's own ``config`` (ganinv exports). ``ema`` picks the
    ``_s`` nets (what the official inference uses) where the file has them. One-line errors naming
    the file; an unsafe pickle is refused (UnsafeCheckpointError) before anything runs."""
    name = Path(path)
    ckpt = load_torch(path, "ALAE checkpoint")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("models"), dict):
        raise ValueError(f"{name}: not an ALAE checkpoint (needs a 'models' dict, as the official Checkpointer writes)")
    if config is None:
        config = ckpt.get("config")
        if config is None:
            raise ValueError(f"{name}: the file holds no architecture; pass config= one of "
                             f"{', '.join(OFFICIAL_CONFIGS)} or a dict of the official MODEL values")
    cfg = ALAEConfig.from_official(config, name)
    models = ckpt["models"]
    with torch.device("meta"):
        model = cfg.build()
    for key, attr in [*MODEL_NAMES.items(), ("dlatent_avg", "dlatent_avg")]:
        suffixed = f"{key}_s" if ema and key != "dlatent_avg" and f"{key}_s" in models else key
        if suffixed not in models:
            raise ValueError(f"{name}: models has no {key!r} (has {sorted(map(str, models))})")
        _load_part(getattr(model, attr), models[suffixed], name, suffixed)
    return ALAEInverter(model, cfg).to(device).eval().requires_grad_(False)
