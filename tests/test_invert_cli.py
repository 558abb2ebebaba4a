"""invert.py end to end (a tiny generator checkpoint, a folder with a corrupt file), its
configuration errors, input keys and FFHQ alignment geometry."""
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config, run_invert, write_tiny_run
from PIL import Image

from ganinv import inversion
from ganinv.checkpoints import load_generator, save_atomic
from ganinv.data import align
from ganinv.data.images import load_image, save_image
from ganinv.invert import inputs, settings
from ganinv.losses.lpips import TRUNK_WEIGHTS
from ganinv.losses.weights import torchvision_weights_file
from ganinv.nets.idinvert_encoder import IDInvertEncoder

ROOT = Path(__file__).resolve().parent.parent
KEYS = ["faces/im0", "faces/im1", "im2"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("invert")
    write_tiny_run(root, KEYS[:3])
    (root / "photos" / "faces" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def lpips_weights_present():
    try:
        torchvision_weights_file(TRUNK_WEIGHTS["alex"])
        return True
    except FileNotFoundError:
        return False


def test_folder_with_a_corrupt_file_then_rerun_skips(workdir):
    args = ["input=photos", "output=out", "generator=checkpoint", "generator.path=g.pt", "batch_size=2",
            "inversion.steps=12", "inversion.n_mean_latent=500", "refine=pti", "pti.steps=3"]
    first = run_invert(*args, cwd=workdir)
    assert first.returncode == 0, first.stderr[-2000:]
    summary = first.stdout.strip().splitlines()[-1]
    bad = "1 unreadable (photos/faces/broken.jpg: "
    assert summary.startswith(f"invert.py: 3 inverted, 0 already done, {bad}")
    out = workdir / "out"
    for key in KEYS:
        latent = torch.load(out / "latents" / f"{key}.pt", weights_only=True)
        assert latent.shape == (8, 64) and latent.dtype == torch.float32
        assert np.array_equal(np.load(out / "latents" / f"{key}.npy"), latent.numpy())
        recon = load_image(out / "reconstructions" / f"{key}.png")
        assert recon.shape == (3, 32, 32)
        # refine=pti: the tuned generator at the latent reproduces the saved reconstruction
        tuned = load_generator(out / "generators" / f"{key}.pt")
        with torch.no_grad():
            again = tuned.synthesis(latent[None], noise_mode="const")[0].clamp(-1, 1)
        assert (again - recon).abs().max() <= 1 / 127.5 + 1e-6
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert rows[0] == "image,mse,psnr,ssim,lpips,seconds,generator"
    table = {r.split(",")[0]: r.split(",") for r in rows[1:]}
    assert sorted(table) == sorted(KEYS)
    for key, (_, mse, psnr, ssim, lpips, seconds, generator) in table.items():
        target = load_image(workdir / "photos" / f"{key}.png")
        recon = load_image(out / "reconstructions" / f"{key}.png")
        assert float(mse) == pytest.approx((recon - target).pow(2).mean().item(), abs=2e-3)
        assert float(psnr) == pytest.approx(10 * np.log10(4 / float(mse)), abs=1e-3)
        assert -1 <= float(ssim) <= 1 and float(seconds) > 0
        assert generator == f"generators/{key}.pt"
        assert (lpips != "") == lpips_weights_present()
    assert Image.open(out / "grid.png").size == (2 * 34 + 2, 3 * 34 + 2)  # input | reconstruction rows
    curves = next((out / "csv").glob("*/metrics.csv")).read_text().splitlines()[0]
    assert all(f"loss/{key}" in curves for key in KEYS)  # per-image loss curves were logged

    stamps = {key: (out / "latents" / f"{key}.pt").stat().st_mtime_ns for key in KEYS}
    second = run_invert(*args, cwd=workdir)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.strip().splitlines()[-1].startswith(f"invert.py: 0 inverted, 3 already done, {bad}")
    assert stamps == {key: (out / "latents" / f"{key}.pt").stat().st_mtime_ns for key in KEYS}


def test_a_bad_setting_is_one_line_and_exit_2(workdir):
    # also checks that method= reaches invert.py as a value, not as train.py's conf/method/ group
    r = run_invert("input=photos", "output=bad", "method=missing.pt", cwd=workdir)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "invert.py: method=missing.pt: not optimize, idinvert or an existing encoder checkpoint"]


@pytest.mark.parametrize("overrides, error, message", [
    (["batch_size=0"], ValueError, "batch_size=0: expected an integer >= 1"),
    (["inversion._target_=ganinv.methods.pti.PTI"], ValueError, "inversion= must name an optimisation preset"),
    (["init=middle"], ValueError, "init=middle: expected mean, random or encoder"),
    (["init=encoder"], ValueError, "method=optimize init=encoder needs encoder=PATH"),
    (["method=idinvert", "encoder=nowhere.pt"], FileNotFoundError,
     "encoder=nowhere.pt: no such file"),
    (["refine=ptii"], ValueError, "refine=ptii: expected pti"),
    (["device=tpu"], ValueError, "device=tpu: expected one of auto, cpu, cuda, gpu, mps"),
    (["seed=abc"], ValueError, r"seed=abc: expected an integer in \[0, 2\^32\)"),
    (["seed=-1"], ValueError, r"seed=-1: expected an integer in \[0, 2\^32\)"),
    (["inversion.n_mean_latent=0"], ValueError, "inversion.n_mean_latent=0: expected an integer >= 1"),
    (["method=idinvert", "encoder=g.pt", "idinvert.n_mean_latent=-5"], ValueError,
     "idinvert.n_mean_latent=-5: expected an integer >= 1"),
])
def test_bad_settings_name_the_field(tmp_path, monkeypatch, overrides, error, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "g.pt").write_bytes(b"")  # an existing encoder= file: only the setting is wrong
    cfg = compose_config("invert", ["input=x", "output=y", *overrides], tmp_path)
    with pytest.raises(error, match=message.replace("+", r"\+")):
        settings.check_config(cfg)


def test_pti_is_a_refinement_not_an_inversion_preset(tmp_path):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="Could not find 'inversion/pti'"):
        compose_config("invert", ["input=x", "output=y", "inversion=pti"], tmp_path)
    assert compose_config("invert", ["input=x", "output=y", "refine=pti"], tmp_path).pti._target_ == \
        "ganinv.methods.pti.PTI"


@pytest.fixture
def idinvert_checkpoint(workdir):
    """A tiny IDInvert export (encoder + the test generator) in the official checkpoint layout."""
    path = workdir / "idinvert.pt"
    if not path.exists():
        torch.manual_seed(0)
        encoder = IDInvertEncoder(32, w_space_dim=64, encoder_channels_base=8, encoder_channels_max=32)
        g = load_generator(workdir / "g.pt")
        state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
        state.update({f"decoder.{k}": v for k, v in g.state_dict().items()})
        opts = {"encoder_type": "IDInvertEncoder", "start_from_latent_avg": False, "input_nc": 3,
                "generator": {"size": 32, "style_dim": 64, "n_mlp": 2}}
        save_atomic({"state_dict": state, "opts": opts}, path)
    return path


def test_encoder_checkpoint_then_pti_and_idinvert_in_process(workdir, idinvert_checkpoint, one_thread):
    from ganinv.checkpoints import load_inverter

    common = [f"input={workdir / 'photos'}", "logger=none", "grid_max=0", "metrics.lpips_net=alex"]
    out = workdir / "enc"
    method = f"method={idinvert_checkpoint}"  # method=PATH on the command line
    cfg = compose_config("invert", [*common, f"output={out}", method, "refine=pti", "pti.steps=2",
                                    "refine_per_image=false", "batch_size=2"], out)
    summary = inversion.invert(cfg)
    assert (summary["inverted"], summary["skipped"], len(summary["unreadable"])) == (3, 0, 1)
    inverter = load_inverter(idinvert_checkpoint)
    with torch.no_grad():
        codes = inverter.encode(torch.stack([load_image(workdir / "photos" / f"{k}.png") for k in KEYS]))
    for key, expected in zip(KEYS, codes):  # the encoder's codes are the pivots, saved as they are
        saved = torch.load(out / "latents" / f"{key}.pt", weights_only=True)
        assert torch.allclose(saved, expected, atol=1e-6)
    # one tuned G per batch: [broken, im0] and [im1, im2] (sorted paths, batch_size=2)
    generators = [row.split(",")[-1] for row in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert generators == ["generators/faces/im0.batch.pt"] + ["generators/faces/im1.batch.pt"] * 2

    out = workdir / "idinvert"
    cfg = compose_config("invert", [*common, f"output={out}", "method=idinvert",
                                    f"encoder={idinvert_checkpoint}", "idinvert.steps=3",
                                    "idinvert.vgg.pretrained=false", "idinvert.n_mean_latent=200"], out)
    summary = inversion.invert(cfg)
    assert summary["inverted"] == 3
    latent = torch.load(out / "latents" / f"{KEYS[0]}.pt", weights_only=True)
    assert latent.shape == (8, 64) and not torch.allclose(latent, codes[0], atol=1e-4)  # optimised from E(x)


def test_keys_are_relative_paths_and_disambiguated(tmp_path):
    for name in ("a.png", "a.jpg", "sub/b.png"):
        save_image(torch.zeros(3, 8, 8), tmp_path / name)
    paths, keys = inputs.collect_inputs(tmp_path)
    assert dict(zip(keys, [p.relative_to(tmp_path).as_posix() for p in paths])) == {
        "a_jpg": "a.jpg", "a_png": "a.png", "sub/b": "sub/b.png"}


def test_align_without_the_extra_says_how_to_install(monkeypatch):
    align.dlib_models.cache_clear()
    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'ganinv\[align\]'"):
        align.dlib_models()
    align.dlib_models.cache_clear()


def test_ffhq_align_frames_the_face():
    lm = np.zeros((68, 2))
    lm[36:42], lm[42:48] = (40, 50), (80, 50)  # eyes
    lm[48], lm[54] = (50, 90), (70, 90)  # mouth corners
    quad, qsize = align.ffhq_quad(lm)
    # eye-to-eye 40, eye-to-mouth 40: side 2·max(2·40, 1.8·40) = 160, centred at eyes + 0.1·(0, 40)
    assert np.allclose(quad, [[-20, -26], [-20, 134], [140, 134], [140, -26]]) and qsize == 160
    img = np.zeros((200, 200, 3), np.uint8)
    img[44:65, 50:71] = 255  # a 21 px square centred on the crop centre (60, 54)
    out = align.ffhq_align(Image.fromarray(img), lm, 64)  # the quad leaves the image: padded
    assert out.size == (64, 64)
    arr = np.asarray(out).mean(2)
    ys, xs = np.nonzero(arr > 128)
    assert xs.mean() == pytest.approx(31.5, abs=0.5) and ys.mean() == pytest.approx(31.5, abs=0.5)
    assert xs.max() - xs.min() + 1 == pytest.approx(21 * 64 / 160, abs=1)  # scaled by 64 / qsize
    assert arr[:8, :8].max() < 20  # the padding is filled from the dark surroundings


def test_presets_carry_the_official_settings(tmp_path):
    def preset(name):
        return compose_config("invert", ["input=x", "output=y", f"inversion={name}"], tmp_path).inversion

    projector, i2s, i2spp, idinvert = (preset(n) for n in ("projector", "image2stylegan", "image2stylegan_pp",
                                                            "idinvert"))
    assert (projector.latent_space, projector.init, projector.steps, projector.lr, projector.schedule) == (
        "w", "mean", 1000, 0.1, "projector")
    assert (projector.lr_rampup, projector.lr_rampdown, projector.latent_noise, projector.latent_noise_ramp,
            projector.noise_regularize, projector.n_mean_latent, projector.lpips.net) == (
        0.05, 0.25, 0.05, 0.75, 1e5, 10000, "vgg")
    assert projector.optimize_noise and projector.noise_init == "random"
    assert (i2s.latent_space, i2s.steps, i2s.lr, i2s.mse_lambda, i2s.vgg_lambda, list(i2s.vgg.layers)) == (
        "w+", 5000, 0.01, 1.0, 1.0, ["conv1_1", "conv1_2", "conv3_2", "conv4_2"])
    assert (i2spp.steps, i2spp.noise_steps, i2spp.noise_init) == (5000, 3000, "const")
    assert (idinvert.init, idinvert.steps, idinvert.lr, idinvert.mse_lambda, idinvert.vgg_lambda,
            idinvert.domain_lambda) == ("encoder", 100, 0.01, 1.0, 5e-5, 2.0)
    assert list(idinvert.vgg.layers) == ["conv4_3"]
    pti = compose_config("invert", ["input=x", "output=y"], tmp_path).pti
    assert (pti.steps, pti.lr, pti.mse_lambda, pti.lpips_lambda, pti.lpips_threshold, pti.lpips.net) == (
        350, 3e-4, 1.0, 1.0, 0.06, "alex")
    assert (pti.locality_regularization, pti.locality_psi, pti.locality_alpha, pti.locality_mse_lambda,
            pti.locality_lpips_lambda) == (False, 0.5, 30.0, 0.1, 0.1)


def test_edits_write_one_strip_per_image_with_the_pti_generator(workdir, one_thread):
    """edit= renders an edit strip per image (one column per strength): SeFa and an InterFaceGAN
    direction file; strength 0 reproduces the reconstruction (the PTI-tuned G when refining)."""
    g = load_generator(workdir / "g.pt")
    direction = torch.randn(1, 64)
    torch.save(direction, workdir / "smile.pt")  # e4e's direction layout: a [1, 512]-like tensor
    out = workdir / "edits"
    cfg = compose_config("invert", [f"input={workdir / 'photos'}", f"output={out}", "generator=checkpoint",
                                    f"generator.path={workdir / 'g.pt'}", "logger=none", "grid_max=0",
                                    "inversion.steps=3", "inversion.n_mean_latent=100", "refine=pti",
                                    "pti.steps=2", "pti.lpips_threshold=0",  # random-trunk LPIPS: tune anyway
                                    f"edit=['sefa:1:-4,0,4','interfacegan:{workdir / 'smile.pt'}:0,2']"], out)
    summary = inversion.invert(cfg)
    assert summary["inverted"] == 3
    for key in KEYS:
        latent = torch.load(out / "latents" / f"{key}.pt", weights_only=True)
        recon = load_image(out / "reconstructions" / f"{key}.png")
        sefa = load_image(out / "edits" / "sefa_1" / f"{key}.png")
        assert sefa.shape == (3, 32, 3 * 32)
        assert (sefa[..., 32:64] - recon).abs().max() <= 1 / 127.5 + 1e-6  # strength 0 = reconstruction
        assert (sefa[..., :32] - recon).abs().mean() > 0.01  # a real edit changes the image
        shifted = load_image(out / "edits" / "interfacegan_smile" / f"{key}.png")
        assert shifted.shape == (3, 32, 2 * 32)
        tuned = load_generator(out / "generators" / f"{key}.pt")
        with torch.no_grad():
            expected = tuned.synthesis((latent + 2 * direction)[None], noise_mode="const")[0].clamp(-1, 1)
            untuned = g.synthesis((latent + 2 * direction)[None], noise_mode="const")[0].clamp(-1, 1)
        assert (shifted[..., 32:] - expected).abs().max() <= 1 / 127.5 + 1e-5
        assert (untuned - expected).abs().max() > 2 / 127.5  # the tuned G, not the original, rendered it
    again = inversion.invert(cfg)
    assert (again["inverted"], again["skipped"]) == (0, 3)  # edit strips count as outputs


def test_a_bad_edit_spec_is_a_one_line_error(tmp_path):
    cfg = compose_config("invert", ["input=x", "output=y", "edit='sefa:first:-3,3'"], tmp_path)
    with pytest.raises(ValueError, match=r"edit spec 'sefa:first:-3,3': INDEX must be comma-separated numbers"):
        settings.check_config(cfg)
