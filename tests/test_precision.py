"""invert.py's precision= (32 | bf16 autocast) and channels_last= (NHWC nets and batches), end to end on
a tiny generator and IDInvert encoder: bf16 against fp32 (reconstruction PSNR, max latent error), NHWC
against NCHW (the same latents), the refusal of other precisions, and the conformance G under bf16.

Measured here (Sapphire Rapids, AMX bf16, 1 thread): optimisation (6 Adam steps) bf16 vs fp32 PSNR 44.3 dB,
max |dw| 0.042 (12 steps: 48.0 dB, 0.065); encoder pass bf16 vs fp32 PSNR 54.5 dB, max |dw| 3.3e-5; NHWC vs
NCHW in fp32 max |dw| 1.4e-6 (optimisation, 6 steps; 9.5e-4 after 12, Adam amplifying summation-order
differences) and 1.4e-9 (encoder); the rosinality 64 px conformance G (image_b, W+ input) under bf16
autocast vs the official fp32 image PSNR 59.8 dB over the image's range.
"""
import shutil

import pytest
import torch
from conftest import run_invert, write_tiny_run
from omegaconf import OmegaConf

from ganinv.checkpoints import load_generator, save_atomic
from ganinv.data.images import load_image
from ganinv.invert import settings
from ganinv.metrics.image import psnr
from ganinv.nets.idinvert_encoder import IDInvertEncoder
from ganinv.nets.stylegan2 import Generator

KEYS = ["im0", "im1"]
OPTIMIZE = ["generator=checkpoint", "generator.path=g.pt", "batch_size=2", "inversion.steps=6",
            "inversion.n_mean_latent=200", "logger=none", "progress_every=0", "grid_max=0"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """g.pt (32 px, 64-d), two of its images, and enc.pt: a tiny IDInvert checkpoint decoding with g."""
    root = tmp_path_factory.mktemp("precision")
    torch.manual_seed(0)
    g = Generator(32, 64, n_mlp=2, channel_max=32).eval()
    with torch.no_grad():  # random init leaves biases and noise strengths at constants
        for name, p in g.named_parameters():
            if name.endswith(("bias", "noise.weight")):
                p.add_(0.1 * torch.randn_like(p))
    write_tiny_run(root, KEYS, generator=g)
    torch.manual_seed(1)
    enc = IDInvertEncoder(32, w_space_dim=64, encoder_channels_base=8, encoder_channels_max=32)
    state = {f"encoder.{k}": v for k, v in enc.state_dict().items()}
    state.update({f"decoder.{k}": v for k, v in load_generator(root / "g.pt").state_dict().items()})
    save_atomic({"state_dict": state, "opts": {"encoder_type": "IDInvertEncoder", "start_from_latent_avg": False,
                                               "input_nc": 3}}, root / "enc.pt")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def invert(workdir, out, *args):
    """(latents [n, n_latent, D] float32, reconstructions [n, 3, S, S] in [-1, 1]) of an invert.py run."""
    done = run_invert("input=photos", f"output={out}", *args, cwd=workdir)
    assert done.returncode == 0, done.stderr[-2000:]
    latents = [torch.load(workdir / out / "latents" / f"{k}.pt", weights_only=True) for k in KEYS]
    assert all(w.dtype == torch.float32 for w in latents)  # saved fp32 under bf16 too
    images = [load_image(workdir / out / "reconstructions" / f"{k}.png") for k in KEYS]
    return torch.stack(latents), torch.stack(images)


def compare(a, b):
    """(min PSNR in dB of b's reconstructions against a's, max |latent difference|)."""
    return psnr((b[1] + 1) / 2, (a[1] + 1) / 2).min().item(), (a[0] - b[0]).abs().max().item()


def test_optimisation_bf16_close_to_fp32_and_nhwc_close_to_nchw(workdir):
    fp32 = invert(workdir, "o32", *OPTIMIZE)  # the default: precision=32, channels_last=true
    bf16 = invert(workdir, "o16", *OPTIMIZE, "precision=bf16")
    nchw = invert(workdir, "o32nchw", *OPTIMIZE, "channels_last=false")
    quality, code = compare(fp32, bf16)
    layout = (fp32[0] - nchw[0]).abs().max().item()
    print(f"\noptimisation bf16 vs fp32: PSNR {quality:.1f} dB, max |dw| {code:.3g}; "
          f"NHWC vs NCHW max |dw| {layout:.3g}")
    assert quality >= 38.0  # measured 44.3 dB
    assert 0 < code <= 0.15  # measured 0.042: bf16 really ran (nonzero), and stayed close
    # NHWC vs NCHW: the same math, oneDNN summing in another order (~1e-7 per forward); Adam divides each
    # gradient by its own running RMS, so the differences grow with the steps (measured 1.4e-6 after 6 steps,
    # 9.5e-4 after 12)
    torch.testing.assert_close(nchw[0], fp32[0], rtol=0, atol=1e-5)


def test_encoder_pass_bf16_close_to_fp32_and_nhwc_equals_nchw(workdir):
    args = ["method=enc.pt", "batch_size=2", "logger=none", "grid_max=0"]
    fp32 = invert(workdir, "e32", *args)
    bf16 = invert(workdir, "e16", *args, "precision=bf16")
    nchw = invert(workdir, "e32nchw", *args, "channels_last=false")
    quality, code = compare(fp32, bf16)
    layout = (fp32[0] - nchw[0]).abs().max().item()
    print(f"\nencoder bf16 vs fp32: PSNR {quality:.1f} dB, max |dw| {code:.3g}; NHWC vs NCHW max |dw| {layout:.3g}")
    assert quality >= 45.0  # measured 54.5 dB
    assert 0 < code <= 1e-3  # measured 3.3e-5
    torch.testing.assert_close(nchw[0], fp32[0], rtol=0, atol=1e-5)


def test_other_precisions_are_one_line_errors(workdir):
    bad = run_invert("input=photos", "output=bad", "precision=fp16", cwd=workdir)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == ["invert.py: precision=fp16: expected 32 or bf16"], bad.stderr
    assert not (workdir / "bad" / "latents").exists()
    for value in ("16-mixed", 16, "bf16-mixed", 64):
        cfg = OmegaConf.create({"precision": value})
        with pytest.raises(ValueError, match=rf"^precision={value}: expected 32 or bf16$"):
            settings.check_precision(cfg)
    with pytest.raises(ValueError, match=r"^channels_last=yes: expected true or false$"):
        settings.check_precision(OmegaConf.create({"channels_last": "yes"}))
    for value in (32, "32", "bf16"):
        settings.check_precision(OmegaConf.create({"precision": value, "channels_last": True}))
    trainer = OmegaConf.create({"precision": 32})
    assert settings.trainer_precision(OmegaConf.create({"precision": "bf16", "trainer": trainer})) == "bf16-mixed"
    assert settings.trainer_precision(OmegaConf.create({"precision": 32, "trainer": trainer})) == 32


@torch.no_grad()
def test_conformance_generator_under_bf16_autocast(vector, one_thread):
    """rosinality_generator_64 in NHWC: fp32 within the vector's tolerance (images a, b); (b) W+ codes ->
    image under torch.autocast(bfloat16) against the official fp32 image, PSNR over the image's range."""
    from ganinv.runner import to_channels_last

    v = vector("rosinality_generator_64")
    g = Generator(**v.config).eval()
    g.load_state_dict(v.state_dict(), strict=True)
    to_channels_last(g)  # the default layout: fp32 NHWC still passes the vectors' tolerances
    v.check("image_a", g.synthesis(g.broadcast(g.mapping(v.tensors["z"])), noise_mode="const"))
    v.check("image_b", g.synthesis(v.tensors["w_plus"]))
    ref = v.tensors["image_b"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        image = g.synthesis(v.tensors["w_plus"]).float()
    span = (ref.max() - ref.min()).item()
    quality = psnr(((image - ref.min()) / span).clamp(0, 1), ((ref - ref.min()) / span).clamp(0, 1)).min().item()
    print(f"\nconformance G 64 px bf16 vs official fp32: PSNR {quality:.2f} dB (range {span:.2f})")
    assert 50.0 <= quality < 100  # measured 59.8 dB; finite: bf16 really ran
