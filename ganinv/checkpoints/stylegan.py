"""StyleGAN2 checkpoints -> :class:`ganinv.nets.stylegan2.Generator` / ``Discriminator``.

Reads rosinality ``.pt`` files (``g_ema``, optional ``g``, ``d``, ``latent_avg``, ``args``),
bare generator/discriminator state dicts, and NVIDIA stylegan2-ada / stylegan3-repo
StyleGAN2 ``.pkl`` snapshots (``G_ema``, ``G``, ``D``). The architecture is inferred from
tensor shapes; the mapping lr multiplier cannot be, so it is read from the file where the
file says it (NVIDIA pickles, our converted ``.pt`` under ``arch``) and is otherwise
rosinality's 0.01.
"""
import math
import re

import torch

from ..nets.stylegan2 import Discriminator, Generator, channels_at
from .nvidia_pickle import PersistentRecord, discriminator_state, generator_state, load_pickle
from .safe import check_file, file_kind, load_torch, save_atomic

DEFAULT_LR_MLP = 0.01  # rosinality's default; real FFHQ/pSp/e4e generators use it
MEAN_LATENT_SAMPLES, MEAN_LATENT_SEED = 10000, 0
_NVIDIA_KEYS = {"g_ema": "G_ema", "g": "G", "d": "D"}


def _channel_config(chans, name, what):
    """{res: channels} -> (channel_multiplier, channel_max) reproducing it with
    ``channels_at``. channel_max is the widest layer (a larger cap builds the same network);
    channel_multiplier comes from the first resolution above 32 px below the cap. When all
    are capped any large enough multiplier builds the same network: report rosinality's 2,
    or the smallest consistent one if 2 is too small."""
    cmax = max(chans.values())
    size = max(chans)
    free = [(r, c) for r, c in sorted(chans.items()) if r > 32 and c < cmax]
    cm = free[0][1] * free[0][0] / 16384 if free else max(2, cmax * size / 16384)
    cm = int(cm) if float(cm).is_integer() else cm
    got = {r: channels_at(r, cm, cmax) for r in chans}
    if got != chans:
        raise ValueError(f"{name}: {what} channels per resolution {chans} do not follow the StyleGAN2 layout "
                         "(512 up to 32 px, then 16384*channel_multiplier/res, capped at channel_max)")
    return cm, cmax


def count_indices(sd, pattern):
    return len({m[1] for k in sd if (m := re.fullmatch(pattern, k))})


def generator_config(sd, name="state dict"):
    """Generator kwargs from a rosinality generator state dict's shapes: size, style_dim,
    n_mlp, channel_multiplier, channel_max (lr_mlp is not in the shapes)."""
    try:
        n_rgb = count_indices(sd, r"to_rgbs\.(\d+)\..*")
        chans = {4: sd["conv1.conv.weight"].shape[1]}
        chans.update({2 ** (i + 3): sd[f"convs.{2 * i}.conv.weight"].shape[1] for i in range(n_rgb)})
        style_dim = sd["conv1.conv.modulation.weight"].shape[1]
    except KeyError as e:
        raise ValueError(f"{name}: not a StyleGAN2 generator state dict (no {e.args[0]!r})") from None
    cm, cmax = _channel_config(chans, name, "generator")
    return dict(size=2 ** (n_rgb + 2), style_dim=style_dim, n_mlp=count_indices(sd, r"style\.(\d+)\.weight"),
                channel_multiplier=cm, channel_max=cmax)


def discriminator_config(sd, name="state dict"):
    """Discriminator kwargs from a rosinality discriminator state dict's shapes."""
    try:
        n_res = count_indices(sd, r"convs\.(\d+)\.conv1\..*")
        size = 2 ** (n_res + 2)
        chans = {size: sd["convs.0.0.weight"].shape[0]}
        chans.update({size >> i: sd[f"convs.{i}.conv2.1.weight"].shape[0] for i in range(1, n_res + 1)})
    except KeyError as e:
        raise ValueError(f"{name}: not a StyleGAN2 discriminator state dict (no {e.args[0]!r})") from None
    cm, cmax = _channel_config(chans, name, "discriminator")
    return dict(size=size, channel_multiplier=cm, channel_max=cmax)


class _Checkpoint:
    """A StyleGAN2 checkpoint file, read once: NVIDIA pickle, rosinality dict or bare state dict."""

    def __init__(self, path, hint=None):
        self.path = check_file(path, "StyleGAN2 checkpoint", hint)
        kind = file_kind(self.path)
        if kind == "pickle":
            self.source, data = "NVIDIA pickle", load_pickle(self.path)
            if not isinstance(data, dict):
                raise ValueError(f"{self.path}: expected a dict of networks, got {type(data).__name__}")
            self.data = {k: data[n] for k, n in _NVIDIA_KEYS.items()
                         if isinstance(data.get(n), PersistentRecord)}
            self.contents = sorted(map(str, data))
            return
        if kind != "torch":
            raise ValueError(f"{self.path} is neither a torch checkpoint nor an NVIDIA network pickle")
        ckpt = load_torch(self.path, "StyleGAN2 checkpoint")
        if not isinstance(ckpt, dict):
            raise ValueError(f"{self.path}: expected a dict checkpoint, got {type(ckpt).__name__}")
        self.contents = sorted(map(str, ckpt))
        if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            key = "d" if "final_linear.0.weight" in ckpt else "g_ema"
            self.source, self.data, self.ckpt = "bare state dict", {key: ckpt}, {}
        else:
            self.source, self.ckpt = "torch checkpoint", ckpt
            self.data = {k: ckpt[k] for k in _NVIDIA_KEYS if isinstance(ckpt.get(k), dict)}

    def has(self, key):
        return key in self.data

    def network(self, key):
        """(rosinality state dict, facts) of ``key`` ('g_ema', 'g' or 'd'). facts: lr_mlp
        (and whether it is the default), latent_avg or None (generators), mbstd_group_size,
        conv_clamp / num_fp16_res (NVIDIA)."""
        if key not in self.data:
            label = _NVIDIA_KEYS.get(key, key) if self.source == "NVIDIA pickle" else key
            raise ValueError(f"{self.path}: no {label!r} network in this {self.source} (has {self.contents})")
        if self.source == "NVIDIA pickle":
            try:
                if key == "d":
                    return discriminator_state(self.data[key], self.path)
                sd, latent_avg, facts = generator_state(self.data[key], self.path)
            except (KeyError, AttributeError, TypeError) as e:  # the pickle's structure is data too
                raise ValueError(f"{self.path}: {_NVIDIA_KEYS[key]} is not laid out like NVIDIA's StyleGAN2 "
                                 f"networks ({type(e).__name__}: {e})") from None
            return sd, {**facts, "latent_avg": latent_avg, "lr_mlp_default": False}
        arch = self.ckpt.get("arch", {})
        if key == "d":
            return self.data[key], {"mbstd_group_size": arch.get("mbstd_group_size", 4)}
        facts = {"lr_mlp": arch.get("lr_mlp", DEFAULT_LR_MLP), "lr_mlp_default": "lr_mlp" not in arch}
        return self.data[key], {**facts, "latent_avg": self.ckpt.get("latent_avg")}


def _load_strict(module, sd, name, what):
    """load_state_dict(strict=True), with a one-line error listing what does not fit."""
    own = module.state_dict()
    problems = [f"missing {k}" for k in own if k not in sd]
    problems += [f"unexpected {k}" for k in sd if k not in own]
    problems += [f"{k} has shape {tuple(sd[k].shape)}, expected {tuple(own[k].shape)}"
                 for k in own if k in sd and sd[k].shape != own[k].shape]
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ValueError(f"{name}: {what} does not match the inferred architecture: "
                         f"{'; '.join(problems[:3])}{more}")
    module.load_state_dict(sd, strict=True)


def _with_kernels(module, sd):
    """Files without rosinality's FIR ``kernel`` buffers (NVIDIA pickles) get our own
    [1,3,3,1] constants; nvidia_pickle checks the file's resample_filter is that filter."""
    own = module.state_dict()
    return {**{k: v for k, v in own.items() if k.endswith(".kernel") and k not in sd}, **sd}


def _latent_avg(g, latent_avg, name):
    if latent_avg is None:
        return g.mean_latent(MEAN_LATENT_SAMPLES, seed=MEAN_LATENT_SEED)[0]
    if not isinstance(latent_avg, torch.Tensor) or latent_avg.shape not in ((g.style_dim,), (1, g.style_dim)):
        raise ValueError(f"{name}: latent_avg has shape {tuple(latent_avg.shape)}, expected [{g.style_dim}] "
                         f"or [1, {g.style_dim}]")
    return latent_avg.reshape(g.style_dim).float()


def _generator(ckpt, key):
    sd, facts = ckpt.network(key)
    g = Generator(**generator_config(sd, ckpt.path), lr_mlp=facts["lr_mlp"])
    _load_strict(g, _with_kernels(g, sd), ckpt.path, f"generator {key!r}")
    g.latent_avg = _latent_avg(g, facts["latent_avg"], ckpt.path)
    return g.eval(), facts


def _discriminator(ckpt, key):
    sd, facts = ckpt.network(key)
    d = Discriminator(**discriminator_config(sd, ckpt.path))
    _load_strict(d, _with_kernels(d, sd), ckpt.path, f"discriminator {key!r}")
    d.stddev_group = facts["mbstd_group_size"]
    return d.eval(), facts


def load_generator(path, key="g_ema", device="cpu", hint=None):
    """A StyleGAN2 :class:`Generator` from a rosinality ``.pt`` (or bare state dict) or an
    NVIDIA ``.pkl``, in eval mode on ``device``, loaded with strict=True.

    ``g.latent_avg`` [style_dim] comes from the file (``latent_avg``, NVIDIA ``w_avg``) or,
    when absent, from ``mean_latent(10000)`` with a fixed seed, so loading is deterministic.
    ``key``: 'g_ema' (default) or 'g'. ``hint`` is added to the missing-file error.
    """
    return _generator(_Checkpoint(path, hint), key)[0].to(device)


def load_discriminator(path, key="d", device="cpu", hint=None):
    """A StyleGAN2 :class:`Discriminator` from a rosinality ``.pt`` (``d``, or a bare state
    dict) or an NVIDIA ``.pkl`` (``D``), in eval mode on ``device``, loaded with strict=True.
    NVIDIA's minibatch-stddev group size is kept as ``d.stddev_group``."""
    return _discriminator(_Checkpoint(path, hint), key)[0].to(device)


def describe(path):
    """Human-readable summary of the networks :func:`load_generator` /
    :func:`load_discriminator` build from ``path``."""
    ckpt = _Checkpoint(path)
    lines = [f"{ckpt.path}: {ckpt.source} (entries: {', '.join(ckpt.contents)})"]
    if ckpt.has("g_ema"):
        sd, facts = ckpt.network("g_ema")
        cfg = generator_config(sd, ckpt.path)
        lr = f"{facts['lr_mlp']:g}" + (" (default; not in the file)" if facts["lr_mlp_default"] else "")
        lines.append("generator: " + " ".join(f"{k}={v}" for k, v in cfg.items())
                     + f" lr_mlp={lr} n_latent={2 * int(math.log2(cfg['size'])) - 2}")
        computed = f"not stored; mean of {MEAN_LATENT_SAMPLES} mapped z (seed {MEAN_LATENT_SEED})"
        lines.append("latent_avg: " + ("stored in the file" if facts["latent_avg"] is not None else computed))
        if facts.get("conv_clamp") is not None or facts.get("num_fp16_res"):
            lines.append("NVIDIA run-time options not reproduced (ganinv runs float32, unclamped): "
                         f"conv_clamp={facts['conv_clamp']}, fp16 blocks={facts['num_fp16_res']}")
    if ckpt.has("d"):
        sd, facts = ckpt.network("d")
        cfg = discriminator_config(sd, ckpt.path)
        lines.append("discriminator: " + " ".join(f"{k}={v}" for k, v in cfg.items())
                     + f" mbstd_group_size={facts['mbstd_group_size']}")
    return "\n".join(lines)


def save_generator(path, g_ema, d=None, latent_avg=None, g=None):
    """The one writer of the rosinality checkpoint layout: ``g_ema`` (state dict), ``latent_avg``
    [style_dim] (``latent_avg`` or ``g_ema.latent_avg``, when either is set), ``d`` and the raw
    ``g`` when given, and ``arch`` with what shapes cannot carry (``lr_mlp``, ``mbstd_group_size``).
    rosinality's ``train.py`` writes ``g``, ``d``, ``g_ema`` (+ optimizers, ``args``);
    :func:`load_generator` / :func:`load_discriminator` read every file this writes. Atomic."""
    def cpu(module):
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}

    out = {"g_ema": cpu(g_ema), "arch": {"lr_mlp": g_ema.style[1].lr_mul}}
    latent_avg = g_ema.latent_avg if latent_avg is None else latent_avg
    if latent_avg is not None:
        out["latent_avg"] = latent_avg.detach().cpu().clone()
    if d is not None:
        out["d"] = cpu(d)
        out["arch"]["mbstd_group_size"] = d.stddev_group
    if g is not None:
        out["g"] = cpu(g)
    return save_atomic(out, path)


def convert(src, dst):
    """Write ``src`` (NVIDIA .pkl or any supported .pt) as a rosinality-layout ``.pt`` with
    :func:`save_generator`: ``g_ema``, ``d`` (when ``src`` has one), ``latent_avg`` and ``arch``."""
    ckpt = _Checkpoint(src)
    g, _ = _generator(ckpt, "g_ema")
    d = _discriminator(ckpt, "d")[0] if ckpt.has("d") else None
    return save_generator(dst, g, d=d)
