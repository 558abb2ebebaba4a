"""Part ``ref``: the reference configuration, nets and losses called directly (no Lightning).

Rows (batch 4): ``Generator(S, 512, 8, channel_multiplier=2)`` forward z -> image at every size
(random noise, as the official ``g([z])``); forward+backward at the largest size (backward of
``img.square().mean()`` into every G parameter); and at the largest size one e4e training step and
one e4e inference batch with ``Encoder4Editing(50, 'ir_se')`` at stage 'all' (every delta on). The
step is the encoder update of e4e's ``training/coach.py`` at ``w_discriminator_lambda 0``,
``id_lambda 0``: codes = E(x) + latent_avg, y_hat = G.synthesis(codes, random noise) with G frozen,
loss = MSE + 0.8·LPIPS(alex) on a random AlexNet trunk (``pnet_rand``; the ImageNet weights are not
available offline, the cost is the same), backward, Ranger step. Inference: E + G, no grad,
constant noise.

With ``spec['official']`` (``--official DIR``) every row is measured side by side with the official
module in the same process: the official module is built first (its random init), its state dict
loaded into ganinv's (strict), the same inputs fed to both, and after one warm-up each the calls
alternate (official, ganinv, official, ...). The official side runs fp32 NCHW, as its users run
it; ``precision`` and ``layout`` apply to ganinv's side. ``max_diff`` = max |official - ganinv| of
one fp32 call with constant noise (the same weights give the same images). FLOPs: one untimed
ganinv call under FlopCounterMode. Memory: ``base_mb`` is read after the official modules are
built, ``peak_mb`` after ganinv's warm-up, before the official code is timed (the e4e step's
``max_diff`` is taken before any optimizer step, the other rows' after the timing).
"""
import types

import torch
import torch.nn.functional as F

from . import official as official_code
from .build import BIG, autocast, make_encoder, make_generator, nhwc, nhwc_input, random_images
from .flops import count_flops
from .machine import peak_memory_mb
from .timing import time_calls, time_interleaved

ENCODER = dict(num_layers=50, mode="ir_se", input_size=256, head_channels=512)  # the official Encoder4Editing


def specs(sizes, add, official):
    top = max(sizes)
    gen = dict(size=top, **BIG)
    for s in sizes:
        add("ref", f"ref/g_forward_{s}", f"G forward {s} px", "g_forward", s, generator=dict(size=s, **BIG),
            official=official)
    add("ref", f"ref/g_forward_backward_{top}", f"G forward+backward {top} px", "g_forward_backward", top,
        generator=gen, official=official)
    add("ref", f"ref/e4e_step_{top}", f"e4e training step {top} px", "e4e_step", top, generator=gen,
        encoder=ENCODER, official=official)
    add("ref", f"ref/e4e_inference_{top}", f"e4e inference {top} px (E + G)", "e4e_inference", top,
        generator=gen, encoder=ENCODER, official=official)


# -- the two sides --------------------------------------------------------------------------
def max_diff(a, b):
    return (a.float() - b.float()).abs().max().item()


def official_generator(spec, device, family):
    """rosinality's Generator (family 'rosinality') or e4e's copy of it ('e4e'), sized as spec['generator']."""
    g = spec["generator"]
    cuda = torch.device(device).type == "cuda"
    if family == "rosinality":
        cls = official_code.rosinality(spec["official"], cuda).Generator
    else:
        cls = official_code.e4e(spec["official"], cuda)[0]
    return cls(g["size"], g["style_dim"], g["n_mlp"], channel_multiplier=g["channel_multiplier"]).to(device).eval()


def timings(spec, device, ours, official=None, base_mb=None):
    """FLOPs of one ganinv call, then ganinv's times alone or interleaved with ``official``."""
    out = {"flops": count_flops(ours)}
    if official is None:
        out["times_s"] = time_calls(ours, spec["warmup"], spec["repeats"], device)
        return out

    def read_peak():
        out["peak_mb"] = peak_memory_mb(device)
    out["times_s"], out["official_times_s"] = time_interleaved(ours, official, spec["warmup"], spec["repeats"],
                                                               device, after_warmup=read_peak)
    out["base_mb"] = base_mb
    return out


# -- measurements: spec -> {"times_s", "flops", ["official_times_s", "max_diff", ...]} --------------
def generators(spec, device, grad):
    """(ganinv G, official G or None, base memory) with the official weights in ganinv's."""
    if not spec.get("official"):
        return make_generator(spec, device).requires_grad_(grad), None, None
    off = official_generator(spec, device, "rosinality").requires_grad_(grad)
    base = peak_memory_mb(device)
    g = make_generator(spec, "cpu")
    g.load_state_dict(off.state_dict(), strict=True)
    return g.to(device).requires_grad_(grad), off, base


def check_generators(g, off, z):
    with torch.no_grad():
        return max_diff(off([z], randomize_noise=False)[0], g(z, noise_mode="const"))


def run_g_forward(spec, device):
    g, off, base = generators(spec, device, grad=False)
    nhwc(spec, g)
    z = torch.randn(spec["batch"], g.style_dim, device=device)

    def ours():
        with torch.no_grad(), autocast(spec, device):
            g(z)

    def official():
        with torch.no_grad():
            off([z])
    if off is None:
        return timings(spec, device, ours)
    return {**timings(spec, device, ours, official, base), "max_diff": check_generators(g, off, z)}


def run_g_forward_backward(spec, device):
    g, off, base = generators(spec, device, grad=True)
    nhwc(spec, g)
    z = torch.randn(spec["batch"], g.style_dim, device=device)

    def ours():
        g.zero_grad(set_to_none=True)
        with autocast(spec, device):
            loss = g(z).float().square().mean()
        loss.backward()

    def official():
        off.zero_grad(set_to_none=True)
        off([z])[0].square().mean().backward()
    if off is None:
        return timings(spec, device, ours)
    return {**timings(spec, device, ours, official, base), "max_diff": check_generators(g, off, z)}


def e4e_parts(spec, device):
    """ganinv's frozen G, its e4e encoder at stage 'all', latent_avg [1, 512], the images; and the
    official (G, encoder, Ranger class) with the same weights, or None; base memory."""
    official = None
    base = None
    g = make_generator(spec, "cpu")
    enc = make_encoder("e4e", spec, g, "cpu")
    if spec.get("official"):
        off_g = official_generator(spec, device, "e4e").requires_grad_(False)
        _, off_e4e, off_ranger = official_code.e4e(spec["official"], torch.device(device).type == "cuda")
        opts = types.SimpleNamespace(stylegan_size=spec["generator"]["size"])
        off_enc = off_e4e(spec["encoder"]["num_layers"], spec["encoder"]["mode"], opts).to(device)
        base = peak_memory_mb(device)
        g.load_state_dict(off_g.state_dict(), strict=True)
        enc.load_state_dict(off_enc.state_dict(), strict=True)
        official = (off_g, off_enc, off_ranger)
    g = g.to(device).requires_grad_(False)
    enc = enc.to(device)
    enc.progressive_stage = "all"
    avg = g.mean_latent(4096, seed=0)  # [1, 512], broadcast over the W+ rows like latent_avg
    x = random_images(spec["batch"], g.size, device)
    nhwc(spec, g, enc)
    return g, enc, avg, x, official, base


def check_e4e(g, enc, off_g, off_enc, avg, x, xu):
    enc.eval()
    off_enc.eval()
    with torch.no_grad():
        a = off_g([off_enc(x) + avg], input_is_latent=True, randomize_noise=False)[0]
        return max_diff(a, g.synthesis(enc(xu) + avg, noise_mode="const"))


def run_e4e_step(spec, device):
    import lpips

    from ganinv.losses import LPIPSLoss
    from ganinv.methods.ranger import Ranger

    g, enc, avg, x, official, base = e4e_parts(spec, device)
    xu = nhwc_input(spec, x)
    loss_fn = LPIPSLoss("alex", pnet_rand=True).to(device)
    nhwc(spec, loss_fn)
    opt = Ranger(enc.parameters(), lr=1e-4)
    enc.train()

    def ours():
        with autocast(spec, device):
            y_hat = g.synthesis(enc(xu) + avg, noise_mode="random").float()
            loss = F.mse_loss(y_hat, xu) + 0.8 * loss_fn(y_hat, xu)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if official is None:
        return timings(spec, device, ours)
    off_g, off_enc, off_ranger = official
    diff = check_e4e(g, enc, off_g, off_enc, avg, x, xu)  # before the optimizer steps change the weights
    enc.train()
    off_enc.train()
    off_lpips = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).to(device).requires_grad_(False)
    loss_fn.model.load_state_dict(off_lpips.state_dict())
    off_opt = off_ranger(off_enc.parameters(), lr=1e-4)

    def off():
        y_hat, _ = off_g([off_enc(x) + avg], input_is_latent=True, randomize_noise=True)
        loss = F.mse_loss(y_hat, x) + 0.8 * off_lpips(y_hat, x, normalize=False).mean()
        off_opt.zero_grad()
        loss.backward()
        off_opt.step()
    return {**timings(spec, device, ours, off, base), "max_diff": diff}


def run_e4e_inference(spec, device):
    g, enc, avg, x, official, base = e4e_parts(spec, device)
    xu = nhwc_input(spec, x)
    enc.eval()

    def ours():
        with torch.no_grad(), autocast(spec, device):
            g.synthesis(enc(xu) + avg, noise_mode="const")
    if official is None:
        return timings(spec, device, ours)
    off_g, off_enc, _ = official
    off_enc.eval()

    def off():
        with torch.no_grad():
            off_g([off_enc(x) + avg], input_is_latent=True, randomize_noise=False)
    return {**timings(spec, device, ours, off, base), "max_diff": check_e4e(g, enc, off_g, off_enc, avg, x, xu)}


KINDS = {"g_forward": run_g_forward, "g_forward_backward": run_g_forward_backward, "e4e_step": run_e4e_step,
         "e4e_inference": run_e4e_inference}
