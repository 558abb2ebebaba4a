"""Read NVIDIA StyleGAN2 network pickles (stylegan2-ada-pytorch, and the stylegan3 repo's
StyleGAN2 configs) without running any of their code, and rename them to the rosinality
layout of :mod:`ganinv.nets.stylegan2`.

A snapshot ``.pkl`` is a plain pickle of ``{'G', 'D', 'G_ema', 'augment_pipe',
'training_set_kwargs'}``. Each network is a ``torch_utils.persistence`` object: it unpickles
by calling ``_reconstruct_persistent_obj(meta)``, which ``exec``s the module source stored
in ``meta['module_src']``. We map that global to a stub that only keeps ``class_name`` and
the module's ``__dict__`` state (``_parameters``, ``_buffers``, ``_modules``, attributes);
the source is never looked at. Every other global must be on the allow-list of
:mod:`ganinv.checkpoints.allowlist`.
"""
import math
import re

import torch

from .allowlist import TORCH, unpickle
from .safe import load_storage_bytes

NVIDIA_FILTER = (1, 3, 3, 1)  # rosinality's blur kernel too; checked, not assumed


class PersistentRecord:
    """What a ``torch_utils.persistence`` object holds, as data: ``class_name`` and ``state``
    (the pickled module ``__dict__``)."""

    def __init__(self, class_name, state):
        self.class_name, self.state = class_name, state

    def __getitem__(self, name):
        return self.state[name]

    def get(self, name, default=None):
        return self.state.get(name, default)

    @property
    def modules(self):
        return {k: v for k, v in self.state.get("_modules", {}).items() if v is not None}

    def tensors(self, prefix=""):
        """All parameters and buffers, recursively: {dotted name: tensor}."""
        out = {}
        for group in ("_parameters", "_buffers"):
            for name, t in self.state.get(group, {}).items():
                if t is not None:
                    out[prefix + name] = t
        for name, sub in self.modules.items():
            if not isinstance(sub, PersistentRecord):
                raise ValueError(f"module {prefix + name} is a {type(sub).__name__}, not a network record")
            out.update(sub.tensors(f"{prefix}{name}."))
        return out

    def walk(self, prefix=""):
        """(dotted name, record) for this record and all submodules."""
        yield prefix.rstrip("."), self
        for name, sub in self.modules.items():
            yield from sub.walk(f"{prefix}{name}.")


class _EasyDict(dict):
    """Stand-in for dnnlib's EasyDict (a dict with attribute access); holds plain data."""


def _persistent_record(meta):
    if not isinstance(meta, dict) or not isinstance(meta.get("class_name"), str) or not isinstance(
            meta.get("state"), dict):
        raise ValueError("persistent object without class_name/state")
    return PersistentRecord(meta["class_name"], meta["state"])


def _nvidia_globals(name):
    """The torch-file allow-list plus what NVIDIA snapshots add: the persistence hook (our record
    stub, the embedded source is never read), dnnlib's EasyDict (a dict), and tensor storages
    pickled as nested ``torch.save`` bytes (read by our torch-file reader)."""
    return {
        **TORCH,
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_record,
        ("torch.storage", "_load_from_bytes"): lambda data: load_storage_bytes(data, name),
        ("dnnlib.util", "EasyDict"): _EasyDict,
        ("dnnlib", "EasyDict"): _EasyDict,
    }


def load_pickle(path):
    """Unpickle an NVIDIA network pickle with the restricted unpickler: persistent networks
    come back as :class:`PersistentRecord`, tensors as CPU tensors."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(0)
        return unpickle(f, size, str(path), _nvidia_globals(str(path)), records=(PersistentRecord,))


# -- NVIDIA names -> rosinality names -------------------------------------------------------

_SYNTH = {  # SynthesisLayer / ToRGBLayer suffix -> rosinality suffix
    "affine.weight": "conv.modulation.weight", "affine.bias": "conv.modulation.bias",
    "noise_strength": "noise.weight",
}


def _expected_filter():
    f = torch.tensor(NVIDIA_FILTER, dtype=torch.float32)
    f = f[:, None] * f[None, :]
    return f / f.sum()


def _check_records(rec, what, expect_arch, name):
    """Refuse what the rosinality modules cannot represent, with the reason."""
    if rec.class_name != ("Generator" if what == "generator" else "Discriminator"):
        raise ValueError(f"{name}: {what} is a {rec.class_name!r}, not a StyleGAN2 {what}")
    if rec.get("c_dim", 0):
        raise ValueError(f"{name}: conditional {what} (c_dim={rec['c_dim']}) is not supported")
    if rec.get("img_channels", 3) != 3:
        raise ValueError(f"{name}: {what} has img_channels={rec['img_channels']}; only RGB (3) is supported")
    f = _expected_filter()
    for sub, r in rec.walk():
        if r.class_name.startswith("SynthesisInput") or re.fullmatch(r"synthesis\.L\d+_.*", sub):
            raise ValueError(f"{name}: this is a StyleGAN3 (alias-free) generator ({sub}: {r.class_name}); "
                             "only StyleGAN2 networks can be converted")
        arch = r.get("architecture")
        if arch is not None and arch != expect_arch and r.class_name != "DiscriminatorEpilogue":
            raise ValueError(f"{name}: {what} block {sub} uses architecture={arch!r}; only {expect_arch!r} "
                             "(the StyleGAN2 config-f default) is supported")
        act = r.get("activation")
        want = "linear" if sub.rsplit(".", 1)[-1] in ("affine", "skip", "out") else "lrelu"
        if act is not None and act != want:
            raise ValueError(f"{name}: {what} layer {sub} uses activation={act!r}, expected {want!r}")
        filt = r.get("_buffers", {}).get("resample_filter")
        if filt is not None and not (filt.shape == f.shape and torch.allclose(filt, f)):
            raise ValueError(f"{name}: {what} layer {sub} uses a resample filter other than "
                             f"{list(NVIDIA_FILTER)}")


def generator_state(rec, name):
    """NVIDIA ``Generator`` record -> (rosinality state dict without FIR kernels,
    latent_avg [w_dim], facts {lr_mlp, conv_clamp, num_fp16_res})."""
    _check_records(rec, "generator", "skip", name)
    mapping, synthesis = rec.modules["mapping"], rec.modules["synthesis"]
    if mapping["z_dim"] != mapping["w_dim"]:
        raise ValueError(f"{name}: z_dim={mapping['z_dim']} != w_dim={mapping['w_dim']} is not supported")
    gains = {sub.get("bias_gain") for sub in mapping.modules.values()}
    if len(gains) != 1:
        raise ValueError(f"{name}: mapping layers use different lr multipliers {sorted(gains)}")
    out, latent_avg = {}, None
    for key, t in rec.tensors().items():
        m = re.fullmatch(r"mapping\.fc(\d+)\.(weight|bias)", key)
        s = re.fullmatch(r"synthesis\.b(\d+)\.(conv0|conv1|torgb)\.(.+)", key)
        if key == "mapping.w_avg":
            latent_avg = t
        elif m:
            out[f"style.{int(m[1]) + 1}.{m[2]}"] = t
        elif key == "synthesis.b4.const":
            out["input.input"] = t.unsqueeze(0)
        elif s:
            k, layer, suffix = int(math.log2(int(s[1]))), s[2], s[3]
            if k == 2:
                prefix, noise = {"conv1": ("conv1", 0), "torgb": ("to_rgb1", None)}[layer]
            else:
                idx = 2 * (k - 3) + (layer == "conv1")
                prefix, noise = (f"to_rgbs.{k - 3}", None) if layer == "torgb" else (f"convs.{idx}", idx + 1)
            if suffix == "weight":  # [out, in, k, k] -> [1, out, in, k, k]; no flip between the two
                out[f"{prefix}.conv.weight"] = t.unsqueeze(0)
            elif suffix in _SYNTH:
                out[f"{prefix}.{_SYNTH[suffix]}"] = t.reshape(1) if suffix == "noise_strength" else t
            elif suffix == "bias" and noise is None:
                out[f"{prefix}.bias"] = t.reshape(1, -1, 1, 1)
            elif suffix == "bias":
                out[f"{prefix}.activate.bias"] = t
            elif suffix == "noise_const":
                out[f"noises.noise_{noise}"] = t[None, None]
            elif suffix != "resample_filter":
                raise ValueError(f"{name}: generator tensor {key} has no StyleGAN2 counterpart")
        elif not re.fullmatch(r"synthesis\.b\d+\.resample_filter", key):
            raise ValueError(f"{name}: generator tensor {key} has no StyleGAN2 counterpart")
    if latent_avg is None:
        raise ValueError(f"{name}: generator has no mapping.w_avg")
    first_layer = rec.modules["synthesis"].modules["b4"].modules["conv1"]
    facts = {"lr_mlp": float(gains.pop()), "conv_clamp": first_layer.get("conv_clamp"),
             "num_fp16_res": sum(bool(b.get("use_fp16")) for b in synthesis.modules.values())}
    return out, latent_avg, facts


def discriminator_state(rec, name):
    """NVIDIA ``Discriminator`` record -> (rosinality state dict without FIR kernels,
    facts {mbstd_group_size})."""
    _check_records(rec, "discriminator", "resnet", name)
    epilogue = rec.modules["b4"]
    mbstd = epilogue.modules.get("mbstd")
    if mbstd is None or mbstd["num_channels"] != 1 or mbstd["group_size"] is None:
        raise ValueError(f"{name}: discriminator minibatch-stddev layer must have num_channels=1 and a "
                         "fixed group size")
    size = rec["img_resolution"]
    log_size = int(math.log2(size))
    out = {}
    for key, t in rec.tensors().items():
        b = re.fullmatch(r"b(\d+)\.(fromrgb|conv0|conv1|skip|conv|fc|out)\.(weight|bias)", key)
        if b is None:
            if key.endswith("resample_filter"):
                continue
            raise ValueError(f"{name}: discriminator tensor {key} has no StyleGAN2 counterpart")
        res, layer, kind = int(b[1]), b[2], b[3]
        i = log_size - int(math.log2(res)) + 1  # rosinality ResBlock index
        target = {
            "fromrgb": {"weight": "convs.0.0.weight", "bias": "convs.0.1.bias"},
            "conv0": {"weight": f"convs.{i}.conv1.0.weight", "bias": f"convs.{i}.conv1.1.bias"},
            "conv1": {"weight": f"convs.{i}.conv2.1.weight", "bias": f"convs.{i}.conv2.2.bias"},
            "skip": {"weight": f"convs.{i}.skip.1.weight"},
            "conv": {"weight": "final_conv.0.weight", "bias": "final_conv.1.bias"},
            "fc": {"weight": "final_linear.0.weight", "bias": "final_linear.0.bias"},
            "out": {"weight": "final_linear.1.weight", "bias": "final_linear.1.bias"},
        }[layer].get(kind)
        where = {"fromrgb": res == size, "conv": res == 4, "fc": res == 4, "out": res == 4}.get(
            layer, 4 < res <= size)
        if target is None or not where:
            raise ValueError(f"{name}: discriminator tensor {key} has no StyleGAN2 counterpart")
        out[target] = t
    return out, {"mbstd_group_size": int(mbstd["group_size"])}
