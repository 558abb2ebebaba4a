"""Safe StyleGAN2 checkpoint loading: rosinality .pt, NVIDIA .pkl, refusals, CLI."""
import argparse
import builtins
import collections
import math
import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from ganinv.checkpoints import (
    UnsafeCheckpointError,
    load_discriminator,
    load_generator,
    load_torch,
    save_atomic,
)
from ganinv.checkpoints.__main__ import main as cli
from ganinv.checkpoints.stylegan import MEAN_LATENT_SAMPLES, MEAN_LATENT_SEED, generator_config
from ganinv.nets.stylegan2 import Discriminator, Generator

TINY = dict(size=32, style_dim=64, n_mlp=2, channel_multiplier=2, channel_max=64)


def _perturbed(module, seed):
    """Random init leaves biases/noise strengths at constants; make every entry matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias") or name.endswith("noise.weight"):
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return module.eval()


def _tiny_g(seed=0, **kw):
    torch.manual_seed(seed)
    return _perturbed(Generator(**{**TINY, **kw}), seed)


def _tiny_d(seed=1, size=32, **kw):
    torch.manual_seed(seed)
    return _perturbed(Discriminator(size, channel_max=64, **kw), seed)


def _images(g, seed=3):
    ws = torch.randn(2, g.n_latent, g.style_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return g.synthesis(ws, noise_mode="const")


def _logits(d, seed=4):
    x = torch.randn(4, 3, d.size, d.size, generator=torch.Generator().manual_seed(seed)).tanh()
    with torch.no_grad():
        return d(x)


def _assert_one_line(err, *needles):
    msg = str(err.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert str(n) in msg, msg


# -- rosinality .pt ---------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [{}, dict(size=64, style_dim=32, n_mlp=1, channel_multiplier=0.125)])
def test_rosinality_round_trip(tmp_path, kw):
    g, g_raw, d = _tiny_g(0, **kw), _tiny_g(5, **kw), _tiny_d(size=kw.get("size", 32))
    latent_avg = torch.randn(1, g.style_dim)
    path = tmp_path / "rosinality.pt"
    args = argparse.Namespace(size=g.size, latent=g.style_dim, n_mlp=g.n_mlp)
    torch.save({"g_ema": g.state_dict(), "g": g_raw.state_dict(), "d": d.state_dict(),
                "latent_avg": latent_avg, "args": args}, path)

    loaded = load_generator(path)
    assert not loaded.training
    for attr in ("size", "style_dim", "n_mlp", "channel_multiplier", "channel_max"):
        assert getattr(loaded, attr) == getattr(g, attr), attr
    assert loaded.style[1].lr_mul == 0.01
    assert torch.equal(_images(loaded), _images(g))
    assert torch.equal(loaded.latent_avg, latent_avg[0])
    assert torch.equal(_images(load_generator(path, key="g")), _images(g_raw))
    assert torch.equal(_logits(load_discriminator(path)), _logits(d))


@pytest.mark.parametrize("cfg", [
    dict(size=1024, style_dim=512, n_mlp=8, channel_multiplier=2, channel_max=512),  # FFHQ config-f
    dict(size=256, style_dim=512, n_mlp=8, channel_multiplier=2, channel_max=512),
    dict(size=256, style_dim=512, n_mlp=8, channel_multiplier=1, channel_max=512),
    dict(size=64, style_dim=256, n_mlp=4, channel_multiplier=1, channel_max=512),
    dict(size=128, style_dim=64, n_mlp=2, channel_multiplier=1, channel_max=256),  # cap below 512
])
def test_architecture_inferred_from_shapes(cfg):
    with torch.device("meta"):  # shapes only: real-size configs at no cost
        sd = Generator(**cfg).state_dict()
    assert generator_config(sd) == cfg


def test_all_capped_channels_report_the_default_multiplier():
    # ch(64) = 256*cm is capped at 128 for cm = 1 and 2 alike; the networks are identical
    with torch.device("meta"):
        sd = Generator(64, 64, 2, channel_multiplier=1, channel_max=128).state_dict()
    assert generator_config(sd)["channel_multiplier"] == 2
    with torch.device("meta"):
        assert Generator(64, 64, 2, channel_multiplier=2, channel_max=128).state_dict().keys() == sd.keys()


def test_latent_avg_computed_when_absent(tmp_path):
    g = _tiny_g()
    torch.save({"g_ema": g.state_dict()}, tmp_path / "a.pt")
    torch.save(g.state_dict(), tmp_path / "bare.pt")  # a bare state dict loads the same way
    a, bare = load_generator(tmp_path / "a.pt"), load_generator(tmp_path / "bare.pt")
    expected = g.mean_latent(MEAN_LATENT_SAMPLES, seed=MEAN_LATENT_SEED)[0]
    assert a.latent_avg.shape == (g.style_dim,)
    assert torch.equal(a.latent_avg, expected) and torch.equal(bare.latent_avg, expected)
    assert torch.equal(_images(bare), _images(g))


def test_bad_latent_avg_and_mismatched_state_dict_are_clear(tmp_path):
    g = _tiny_g()
    torch.save({"g_ema": g.state_dict(), "latent_avg": torch.zeros(3, g.style_dim)}, tmp_path / "avg.pt")
    with pytest.raises(ValueError) as err:
        load_generator(tmp_path / "avg.pt")
    _assert_one_line(err, "avg.pt", "latent_avg", "(3, 64)")
    sd = g.state_dict()
    sd["conv1.conv.modulation.bias"] = torch.zeros(5)
    torch.save({"g_ema": sd}, tmp_path / "shape.pt")
    with pytest.raises(ValueError) as err:
        load_generator(tmp_path / "shape.pt")
    _assert_one_line(err, "shape.pt", "conv1.conv.modulation.bias")
    torch.save({"d": _tiny_d().state_dict()}, tmp_path / "d_only.pt")
    with pytest.raises(ValueError) as err:
        load_generator(tmp_path / "d_only.pt")
    _assert_one_line(err, "d_only.pt", "'g_ema'")


# -- NVIDIA .pkl, built here with the official structure ---------------------------------------
# Real snapshots pickle torch_utils.persistence objects: _reconstruct_persistent_obj(meta) with
# meta = {type, version, module_src, class_name, state=module __dict__}. The fake modules exist
# only while pickling; module_src would create a marker file if anything ran it.

def _fake_nvidia_modules():
    pkg, persistence, dnnlib, util = (types.ModuleType(n) for n in
                                      ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util"))

    def _reconstruct_persistent_obj(meta):
        raise AssertionError("only used for pickling")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    easy_dict = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
    util.EasyDict = dnnlib.EasyDict = easy_dict
    pkg.persistence, dnnlib.util = persistence, util
    return {"torch_utils": pkg, "torch_utils.persistence": persistence, "dnnlib": dnnlib, "dnnlib.util": util}


class _Persistent:
    def __init__(self, class_name, params=None, buffers=None, modules=None, src="", **attrs):
        params = {k: torch.nn.Parameter(v.detach().clone(), False) for k, v in (params or {}).items()}
        self.meta = dict(type="class", version=6, module_src=src, class_name=class_name, state={
            "training": False, "_parameters": collections.OrderedDict(params),
            "_buffers": collections.OrderedDict((k, v.detach().clone()) for k, v in (buffers or {}).items()),
            "_non_persistent_buffers_set": set(), "_backward_hooks": collections.OrderedDict(),
            "_modules": collections.OrderedDict(modules or {}), **attrs})

    def __reduce__(self):
        return sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (self.meta,)


def _nvidia_networks(g, d, marker, synthesis_extra=None, **g_attrs):
    """Inverse of the NVIDIA -> rosinality renaming: official module tree and names."""
    src = f"open({str(marker)!r}, 'w').write('executed')\n"
    easy = sys.modules["dnnlib.util"].EasyDict
    fir = torch.tensor([1.0, 3, 3, 1])
    fir = fir[:, None] * fir[None, :] / 64
    gsd, dsd = g.state_dict(), d.state_dict()
    P = lambda name, **kw: _Persistent(name, src=src, **kw)  # noqa: E731

    def fc(prefix, activation="linear", gain=1.0):
        params = {"weight": gsd[f"{prefix}.weight"], "bias": gsd[f"{prefix}.bias"]}
        return P("FullyConnectedLayer", params=params, activation=activation, bias_gain=gain,
                 weight_gain=np.float64(gain / math.sqrt(g.style_dim)))

    def layer(prefix, noise, res, up):
        return P("SynthesisLayer", params={"weight": gsd[f"{prefix}.conv.weight"][0],
                                           "noise_strength": gsd[f"{prefix}.noise.weight"].reshape(()),
                                           "bias": gsd[f"{prefix}.activate.bias"]},
                 buffers={"resample_filter": fir, "noise_const": gsd[f"noises.noise_{noise}"][0, 0]},
                 modules={"affine": fc(f"{prefix}.conv.modulation")}, activation="lrelu", up=up,
                 resolution=res, conv_clamp=256, act_gain=np.float64(math.sqrt(2)))

    def torgb(prefix):
        params = {"weight": gsd[f"{prefix}.conv.weight"][0], "bias": gsd[f"{prefix}.bias"].flatten()}
        return P("ToRGBLayer", params=params, modules={"affine": fc(f"{prefix}.conv.modulation")},
                 conv_clamp=256)

    blocks = {"b4": P("SynthesisBlock", params={"const": gsd["input.input"][0]},
                      buffers={"resample_filter": fir},
                      modules={"conv1": layer("conv1", 0, 4, 1), "torgb": torgb("to_rgb1")},
                      architecture="skip", in_channels=0, resolution=4, use_fp16=False)}
    for k in range(3, g.log_size + 1):
        i = 2 * (k - 3)
        mods = {"conv0": layer(f"convs.{i}", i + 1, 2 ** k, 2),
                "conv1": layer(f"convs.{i + 1}", i + 2, 2 ** k, 1), "torgb": torgb(f"to_rgbs.{k - 3}")}
        blocks[f"b{2 ** k}"] = P("SynthesisBlock", buffers={"resample_filter": fir}, modules=mods,
                                 architecture="skip", resolution=2 ** k, use_fp16=k > g.log_size - 2)
    blocks.update(synthesis_extra or {})
    mapping = P("MappingNetwork", buffers={"w_avg": g.latent_avg}, modules={
        f"fc{i}": fc(f"style.{i + 1}", "lrelu", 0.01) for i in range(g.n_mlp)},
        z_dim=g.style_dim, c_dim=0, w_dim=g.style_dim, num_ws=g.n_latent, num_layers=g.n_mlp)
    attrs = dict(z_dim=g.style_dim, c_dim=0, w_dim=g.style_dim, img_resolution=g.size, img_channels=3)
    kwargs = easy(attrs, mapping_kwargs=easy(num_layers=g.n_mlp),
                  synthesis_kwargs=easy(channel_base=16384, channel_max=64))
    G = P("Generator", modules={"synthesis": P("SynthesisNetwork", modules=blocks, img_resolution=g.size),
                                "mapping": mapping}, **{**attrs, "_init_kwargs": kwargs, **g_attrs})

    def conv(prefix, weight_key, bias_key=None, activation="lrelu", down=1):
        params = {"weight": dsd[f"{prefix}.{weight_key}"]}
        if bias_key:
            params["bias"] = dsd[f"{prefix}.{bias_key}"]
        return P("Conv2dLayer", params=params, buffers={"resample_filter": fir}, activation=activation,
                 down=down)

    log = int(math.log2(d.size))
    dblocks = {}
    for i, k in enumerate(range(log, 2, -1), start=1):
        mods = {"conv0": conv(f"convs.{i}.conv1", "0.weight", "1.bias"),
                "conv1": conv(f"convs.{i}.conv2", "1.weight", "2.bias", down=2),
                "skip": conv(f"convs.{i}.skip", "1.weight", activation="linear", down=2)}
        if i == 1:
            mods = {"fromrgb": conv("convs.0", "0.weight", "1.bias"), **mods}
        dblocks[f"b{2 ** k}"] = P("DiscriminatorBlock", buffers={"resample_filter": fir}, modules=mods,
                                  architecture="resnet", resolution=2 ** k)
    dblocks["b4"] = P("DiscriminatorEpilogue", architecture="resnet", modules={
        "mbstd": P("MinibatchStdLayer", group_size=4, num_channels=1),
        "conv": conv("final_conv", "0.weight", "1.bias"),
        "fc": P("FullyConnectedLayer", activation="lrelu", bias_gain=1, params={
            "weight": dsd["final_linear.0.weight"], "bias": dsd["final_linear.0.bias"]}),
        "out": P("FullyConnectedLayer", activation="linear", bias_gain=1, params={
            "weight": dsd["final_linear.1.weight"], "bias": dsd["final_linear.1.bias"]})})
    D = P("Discriminator", modules=dblocks, c_dim=0, img_resolution=d.size, img_channels=3)
    return G, D, easy


def _write_nvidia_pkl(path, g, d, marker, **kw):
    fakes = _fake_nvidia_modules()
    sys.modules.update(fakes)
    try:
        G, D, easy = _nvidia_networks(g, d, marker, **kw)
        with open(path, "wb") as f:
            pickle.dump({"G": G, "D": D, "G_ema": G, "augment_pipe": None,
                         "training_set_kwargs": easy(path="ffhq.zip", resolution=g.size)}, f)
    finally:
        for name in fakes:
            del sys.modules[name]
    assert not {"torch_utils", "dnnlib"} & set(sys.modules)
    return path


@pytest.fixture
def nvidia(tmp_path):
    g, d = _tiny_g(), _tiny_d()
    g.latent_avg = torch.randn(g.style_dim)
    marker = tmp_path / "marker"
    return g, d, marker, _write_nvidia_pkl(tmp_path / "network-snapshot.pkl", g, d, marker)


def test_nvidia_pickle_loads_without_running_its_code(nvidia):
    g, d, marker, pkl = nvidia
    loaded, disc = load_generator(pkl), load_discriminator(pkl)
    assert not marker.exists()
    assert not {"torch_utils", "dnnlib"} & set(sys.modules)
    assert (loaded.size, loaded.style_dim, loaded.n_mlp, loaded.channel_max) == (32, 64, 2, 64)
    assert loaded.style[1].lr_mul == 0.01  # read from the file's bias_gain
    assert torch.equal(_images(loaded), _images(g))
    assert torch.equal(loaded.latent_avg, g.latent_avg)
    assert disc.stddev_group == 4
    assert torch.equal(_logits(disc), _logits(d))


def test_convert_cli_round_trip(nvidia, tmp_path, capsys):
    g, d, marker, pkl = nvidia
    out = tmp_path / "converted" / "g.pt"
    assert cli(["convert", str(pkl), str(out)]) == 0
    ckpt = torch.load(out, map_location="cpu", weights_only=True)  # plain data: no allow-list needed
    assert set(ckpt) == {"g_ema", "d", "latent_avg", "arch"}
    assert ckpt["arch"] == {"lr_mlp": 0.01, "mbstd_group_size": 4}
    assert not [p for p in out.parent.iterdir() if p.name != "g.pt"]  # no temp files left
    assert torch.equal(_images(load_generator(out)), _images(g))
    assert torch.equal(load_generator(out).latent_avg, g.latent_avg)
    assert torch.equal(_logits(load_discriminator(out)), _logits(d))
    assert cli(["info", str(pkl)]) == 0
    info = capsys.readouterr().out
    assert "NVIDIA pickle" in info and "size=32 style_dim=64 n_mlp=2" in info and "channel_max=64" in info
    assert "conv_clamp=256, fp16 blocks=2" in info
    assert not marker.exists()


@pytest.mark.parametrize("change, needle", [
    # StyleGAN3 synthesis: SynthesisInput + L{idx}_{size}_{channels} layers
    (dict(synthesis_extra={"input": _Persistent("SynthesisInput"),
                           "L0_36_64": _Persistent("SynthesisLayer", params={"weight": torch.zeros(1)})}),
     "StyleGAN3"),
    (dict(c_dim=10), "conditional"),
    (dict(img_channels=1), "img_channels=1"),
])
def test_unrepresentable_nvidia_networks_are_refused(tmp_path, change, needle):
    g, d, marker = _tiny_g(), _tiny_d(), tmp_path / "marker"
    g.latent_avg = torch.zeros(g.style_dim)
    pkl = _write_nvidia_pkl(tmp_path / "net.pkl", g, d, marker, **change)
    with pytest.raises(ValueError) as err:
        load_generator(pkl)
    _assert_one_line(err, "net.pkl", needle)
    assert not marker.exists()


# -- refusals ---------------------------------------------------------------------------------

class _Evil:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


def _marker_code(marker):
    return f"open({str(marker)!r}, 'w').write('executed')"


@pytest.mark.parametrize("func, refused", [
    (os.system, f"{os.system.__module__}.system"), (builtins.exec, "builtins.exec"),
    (builtins.eval, "builtins.eval")])
def test_malicious_pickle_is_refused(tmp_path, func, refused):
    marker = tmp_path / "marker"
    arg = f"touch {marker}" if func is os.system else _marker_code(marker)
    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(pickle.dumps({"G_ema": _Evil(func, arg)}))
    with pytest.raises(UnsafeCheckpointError) as err:
        load_generator(pkl)
    _assert_one_line(err, "evil.pkl", f"'{refused}'", "not imported or executed")
    assert not marker.exists()


def test_malicious_torch_file_is_refused(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"g_ema": {"w": torch.zeros(1)}, "args": _Evil(os.system, f"touch {marker}")}, path)
    for load in (load_torch, load_generator):
        with pytest.raises(UnsafeCheckpointError) as err:
            load(path)
        _assert_one_line(err, "evil.pt", f"'{os.system.__module__}.system'", "not imported or executed")
    assert not marker.exists()


def test_load_torch_allow_list(tmp_path):
    path = tmp_path / "ok.pt"
    torch.save({"args": argparse.Namespace(size=256), "opts": {"lr": 1e-4}, "best_val_loss": np.float64(0.5),
                "latent_avg": torch.ones(2)}, path)
    ckpt = load_torch(path)
    assert ckpt["args"].size == 256 and ckpt["opts"] == {"lr": 1e-4} and ckpt["best_val_loss"] == 0.5
    assert torch.equal(ckpt["latent_avg"], torch.ones(2))


def test_broken_files_give_one_line_errors(tmp_path, nvidia):
    g, _, _, pkl = nvidia
    good = tmp_path / "good.pt"
    torch.save({"g_ema": g.state_dict()}, good)
    cases = {"truncated.pt": good.read_bytes()[:2000], "truncated.pkl": pkl.read_bytes()[:2000],
             "empty.pt": b"", "notes.txt": b"this is not a checkpoint\n"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError) as err:
            load_generator(tmp_path / name)
        _assert_one_line(err, name)
    with pytest.raises(ValueError) as err:
        load_torch(tmp_path / "notes.txt")
    _assert_one_line(err, "notes.txt", "not a torch checkpoint")
    with pytest.raises(FileNotFoundError) as err:
        load_generator(tmp_path / "missing.pt", hint="download it to pretrained/ffhq.pt")
    _assert_one_line(err, "missing.pt", "pretrained/ffhq.pt")


def test_save_atomic_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_atomic({"a": torch.ones(2)}, path)
    with pytest.raises((pickle.PicklingError, AttributeError)):
        save_atomic({"a": lambda: 0}, path)  # unpicklable: fails mid-write
    assert torch.equal(load_torch(path)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
