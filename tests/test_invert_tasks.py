"""invert.py's Image2StyleGAN++ tasks (ganinv.invert.tasks): inpainting composites, crossover, activation
blending and mask errors, end to end on a tiny generator with few steps."""
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_invert, write_tiny_run
from PIL import Image

from ganinv.data.images import load_image

ROOT = Path(__file__).resolve().parent.parent
BASE = ["inversion.vgg_lambda=0", "inversion.vgg=null", "inversion.lr=0.05", "inversion.n_mean_latent=200",
        "generator=checkpoint", "generator.path=g.pt", "logger=none", "progress_every=0", "grid_max=0"]
W_PLUS = ["inversion=image2stylegan", *BASE]


def save_mask(array, path):
    Image.fromarray((np.asarray(array) * 255).astype(np.uint8), mode="L").save(path)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    write_tiny_run(root, "ab", z_scale=2)
    hole = np.zeros((32, 32))
    hole[8:24, 10:22] = 1
    save_mask(hole, root / "hole.png")
    left = np.zeros((32, 32))
    left[:, :16] = 1
    save_mask(left, root / "left.png")
    save_mask(np.zeros((32, 32)), root / "zero.png")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_inpaint_composite_keeps_the_known_pixels(workdir):
    done = run_invert("input=photos", "output=inp", "mask=hole.png", "inpaint=true", "inversion.steps=5", *W_PLUS,
                      cwd=workdir)
    assert done.returncode == 0, done.stderr[-2000:]
    hole = np.asarray(Image.open(workdir / "hole.png")) > 0
    for key in "ab":
        given = np.asarray(Image.open(workdir / "photos" / f"{key}.png").convert("RGB"))
        composite = np.asarray(Image.open(workdir / "inp" / "composites" / f"{key}.png").convert("RGB"))
        recon = np.asarray(Image.open(workdir / "inp" / "reconstructions" / f"{key}.png").convert("RGB"))
        assert np.array_equal(composite[~hole], given[~hole])  # exactly the input outside the hole
        assert np.abs(composite[hole].astype(int) - recon[hole]).max() <= 1  # G's pixels inside it
        assert not np.array_equal(composite[hole], given[hole])


def test_crossover_fits_input1_inside_the_mask_and_input2_outside(workdir):
    edit = ["inversion=image2stylegan_pp_edit", "inversion.style_vgg=null", "inversion.noise_steps=0"]
    done = run_invert("input=photos/a.png", "output=cross", "crossover=photos/b.png", "mask=left.png",
                      "inversion.steps=40", *BASE, *edit, cwd=workdir)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = (load_image(workdir / "photos" / f"{k}.png") for k in "ab")
    out = load_image(workdir / "cross" / "reconstructions" / "a.png")
    inside, outside = slice(0, 16), slice(16, 32)

    def mse(x, y, cols):
        return float((x[..., cols] - y[..., cols]).pow(2).mean())

    assert mse(out, a, inside) < 0.5 * mse(out, b, inside)
    assert mse(out, b, outside) < 0.5 * mse(out, a, outside)
    # crossover without the edit preset is one line
    bad = run_invert("input=photos/a.png", "output=cross2", "crossover=photos/b.png", "mask=left.png", cwd=workdir)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "invert.py: crossover= needs method=optimize inversion=image2stylegan_pp_edit"]


def test_blend_with_an_all_zero_mask_is_the_reconstruction(workdir):
    done = run_invert("input=photos", "output=bl", "inversion.steps=3", "blend={with:b,mask:zero.png,layer:3}",
                      *W_PLUS, cwd=workdir)
    assert done.returncode == 0, done.stderr[-2000:]
    for key in "ab":
        recon = np.asarray(Image.open(workdir / "bl" / "reconstructions" / f"{key}.png").convert("RGB")).astype(int)
        blend = np.asarray(Image.open(workdir / "bl" / "blend" / f"{key}.png").convert("RGB")).astype(int)
        assert np.abs(blend - recon).max() <= 1
    a_rec = np.asarray(Image.open(workdir / "bl" / "reconstructions" / "a.png").convert("RGB")).astype(int)
    b_rec = np.asarray(Image.open(workdir / "bl" / "reconstructions" / "b.png").convert("RGB")).astype(int)
    assert np.abs(a_rec - b_rec).mean() > 5  # the two reconstructions differ: the equality above means something


@pytest.mark.parametrize("args,line", [
    (["mask=nope.png"], "mask=nope.png: no such file or folder"),
    (["inpaint=true"], "inpaint=true needs mask=PNG_OR_FOLDER (white = the hole)"),
    (["blend={with:a,mask:nope.png,layer:2}"], "blend.mask=nope.png: no such file"),
])
def test_bad_task_settings_are_one_line(workdir, args, line):
    bad = run_invert("input=photos", "output=bad", *args, cwd=workdir)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [f"invert.py: {line}"], bad.stderr
    assert not (workdir / "bad" / "metrics.csv").exists()


@pytest.fixture
def restyle_export(compose_train, tmp_path):
    """A ReStyle-pSp export (3 passes) from 2 training steps of the tiny recipe."""
    from test_restyle_training import build, fit

    cfg, model = build(compose_train, "restyle_psp", "method.module.n_iters_per_batch=3")
    fit(model, cfg, 2)
    model.eval()
    model.export(tmp_path / "restyle.pt")
    return tmp_path / "restyle.pt"


@pytest.mark.slow  # 20-35 s of subprocess runs; CI runs it in make test-slow
def test_save_steps_and_bootstrap(workdir, restyle_export):
    common = ["input=photos", f"method={restyle_export}", "logger=none", "grid_max=0", "save_steps=true"]
    done = run_invert("output=steps", *common, cwd=workdir)
    assert done.returncode == 0, done.stderr[-2000:]
    for key in "ab":
        steps = torch.load(workdir / "steps" / "steps" / f"{key}.pt", weights_only=True)
        latent = torch.load(workdir / "steps" / "latents" / f"{key}.pt", weights_only=True)
        assert steps.shape == (3, 8, 512)  # the export's n_iters_per_batch passes, W+ [n_latent, D] of its G
        assert torch.equal(steps[-1], latent)
        assert not torch.equal(steps[0], steps[-1])
        assert Image.open(workdir / "steps" / "steps" / f"{key}.png").size == (4 * 32, 32)  # 3 passes | input
    # bootstrapping: pass 0 by the first model, then restyle_iters passes of method=PATH
    boot = run_invert("output=boot", *common, f"bootstrap={restyle_export}", "restyle_iters=2", cwd=workdir)
    assert boot.returncode == 0, boot.stderr[-2000:]
    steps = torch.load(workdir / "boot" / "steps" / "a.pt", weights_only=True)
    assert steps.shape == (3, 8, 512)
    assert torch.equal(steps[-1], torch.load(workdir / "boot" / "latents" / "a.pt", weights_only=True))
    # the first model's single pass is the plain run's first pass
    plain = torch.load(workdir / "steps" / "steps" / "a.pt", weights_only=True)
    torch.testing.assert_close(steps[0], plain[0], rtol=0, atol=1e-5)
    bad = run_invert("output=boot2", "input=photos", f"bootstrap={restyle_export}", cwd=workdir)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "invert.py: bootstrap= needs method=PATH (the ReStyle model that refines the first one's codes), "
        "not method=optimize"]


@pytest.mark.slow  # 20-35 s of subprocess runs; CI runs it in make test-slow
def test_alae_export_inverts_as_method_path(workdir):
    """A tiny StyleALAE export (32 px: layer_count 4) as method=PATH: x -> E(x) -> G, one w per image
    broadcast to the 2·layer_count style inputs."""
    from ganinv.checkpoints.alae import ALAEConfig, load_alae, save_alae

    torch.manual_seed(0)
    config = ALAEConfig(layer_count=4, startf=8, maxf=32, latent_size=32, mapping_layers=3)
    model = config.build().eval()
    save_alae(workdir / "alae.pt", model, model, config)
    done = run_invert("input=photos", "output=alae", "method=alae.pt", "logger=none", cwd=workdir)
    assert done.returncode == 0, done.stderr[-2000:]
    alae = load_alae(workdir / "alae.pt")
    for key in "ab":
        latent = torch.load(workdir / "alae" / "latents" / f"{key}.pt", weights_only=True)
        assert latent.shape == (8, 32)
        assert torch.equal(latent, latent[:1].expand(8, -1))  # every row the one w
        with torch.no_grad():
            w = alae.encode(load_image(workdir / "photos" / f"{key}.png")[None])[0]
            image = alae.decode(latent[:1], noise=False).clamp(-1, 1)[0]
        torch.testing.assert_close(latent[0], w, rtol=0, atol=1e-5)
        recon = load_image(workdir / "alae" / "reconstructions" / f"{key}.png")
        assert (recon - image).abs().max() <= 1 / 127.5 + 1e-5
    bad = run_invert("input=photos", "output=alae2", "method=alae.pt", "refine=pti", cwd=workdir)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "invert.py: alae.pt: a StyleALAE checkpoint inverts as method=PATH with its own decoder only "
        "(not with refine=)"]


def first_loss(result):
    """The summed loss of step 1 in a run's progress lines."""
    return float(re.search(r"batch_00000: step 1/\d+ loss ([0-9.e+-]+)", result.stdout + result.stderr).group(1))


@pytest.mark.slow  # 20-35 s of subprocess runs; CI runs it in make test-slow
def test_stylegan_encoder_discriminator_term_uses_the_generators_d(workdir):
    """inversion.discriminator_lambda > 0 loads the embedded generator file's D: the first step's loss
    grows by 0.5·softplus(−D(G(w))) > 0 over the same seeded run without it."""
    args = ["input=photos/a.png", "inversion=stylegan_encoder", "inversion.vgg_lambda=0", "inversion.vgg=null",
            "inversion.msssim_lambda=0", "inversion.steps=2", "inversion.n_mean_latent=200", "progress_every=1",
            "logger=none", "grid_max=0"]
    plain = run_invert("output=sge0", *args, cwd=workdir)
    with_d = run_invert("output=sge1", *args, "inversion.discriminator_lambda=0.5", cwd=workdir)
    assert plain.returncode == 0 and with_d.returncode == 0, (plain.stderr[-1500:], with_d.stderr[-1500:])
    assert first_loss(with_d) > first_loss(plain) + 1e-3
