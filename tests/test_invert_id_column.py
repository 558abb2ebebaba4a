"""invert.py's metrics.csv ``id`` column (issue 17): pSp/e4e's ArcFace IR-SE50 cosine similarity between
input and reconstruction when ``model_ir_se50.pth`` is where :func:`ganinv.metrics.image.id_weights_path`
looks, no column without it; the reader's header rule (required columns in order, optional ``id``)."""
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import compose_config, write_tiny_run

from ganinv import demo, evaluate, inversion
from ganinv.checkpoints import load_generator
from ganinv.data.images import load_image
from ganinv.losses import IDLoss
from ganinv.metrics.image import id_similarity, id_weights_path
from ganinv.nets.irse import Backbone
from ganinv.outputs import COLUMNS, OutputError, Outputs, read_metrics

KEYS = ["a", "sub/b", "c"]
WITH_ID = "image,mse,psnr,ssim,lpips,id,seconds,generator"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, module_one_thread):
    """Two invert.py runs of the same three 32 px images (a tiny untrained G: zero noise strengths, so
    G.synthesis(latent) is the reconstruction): ``with_id`` with a random IR-SE50 saved as
    $GANINV_WEIGHTS/model_ir_se50.pth, ``without`` with $GANINV_WEIGHTS an empty folder."""
    root = tmp_path_factory.mktemp("id_column")
    write_tiny_run(root, KEYS)
    facenet = Backbone(112, 50, "ir_se", drop_ratio=0.6, affine=True).eval()
    (root / "weights").mkdir()
    torch.save(facenet.state_dict(), root / "weights" / "model_ir_se50.pth")
    (root / "no_weights").mkdir()
    summaries = {}
    for name, weights in (("with_id", "weights"), ("without", "no_weights")):
        out = root / name
        cfg = compose_config("invert", [f"input={root / 'photos'}", f"output={out}", "generator=checkpoint",
                                        f"generator.path={root / 'g.pt'}", "logger=none", "grid_max=0",
                                        "batch_size=2", "inversion.steps=3", "inversion.n_mean_latent=100"], out)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("GANINV_WEIGHTS", str(root / weights))
            summaries[name] = inversion.invert(cfg)
    yield SimpleNamespace(root=root, summaries=summaries, facenet=facenet)
    shutil.rmtree(root, ignore_errors=True)


def test_id_column_is_id_similarity_of_input_and_reconstruction(runs):
    out = runs.root / "with_id"
    lines = (out / "metrics.csv").read_text().splitlines()
    assert lines[0] == WITH_ID and runs.summaries["with_id"]["inverted"] == len(KEYS)
    rows, bad = read_metrics(out / "metrics.csv")
    assert sorted(rows) == sorted(KEYS) and bad == []
    g = load_generator(runs.root / "g.pt")
    id_loss = IDLoss(backbone=runs.facenet)
    latents = torch.stack([torch.load(out / "latents" / f"{k}.pt", weights_only=True) for k in KEYS])
    targets = torch.stack([load_image(runs.root / "photos" / f"{k}.png", 32) for k in KEYS])
    with torch.no_grad():
        recons = g.synthesis(latents, noise_mode="const")
    expected = id_similarity(recons, targets, id_loss)
    for key, value in zip(KEYS, expected.tolist()):
        assert float(rows[key]["id"]) == pytest.approx(value, abs=1e-5)
    saved = torch.stack([load_image(out / "reconstructions" / f"{k}.png") for k in KEYS])
    assert (saved - recons.clamp(-1, 1)).abs().max() <= 1 / 127.5 + 1e-6  # G(latent) is the saved reconstruction
    # the score tells pairs apart: a reconstruction against another image's input scores differently
    swapped = id_similarity(recons, targets.roll(1, 0), id_loss)
    assert (swapped - expected).abs().min() > 1e-4
    assert runs.summaries["with_id"]["id"] == pytest.approx(expected.mean().item(), abs=1e-5)


def test_no_weights_file_no_id_column(runs):
    out = runs.root / "without"
    lines = (out / "metrics.csv").read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS) and len(lines) == 1 + len(KEYS)
    assert "id" not in runs.summaries["without"]
    rows, bad = read_metrics(out / "metrics.csv")
    assert sorted(rows) == sorted(KEYS) and bad == [] and all("id" not in r for r in rows.values())
    # the other columns are the same scores as the run with weights: building the ArcFace net leaves the
    # seeded inversion's random numbers alone
    with_id, _ = read_metrics(runs.root / "with_id" / "metrics.csv")
    for key in KEYS:
        for column in ("mse", "psnr", "ssim"):
            assert float(rows[key][column]) == pytest.approx(float(with_id[key][column]), rel=1e-5)


def test_both_readers_read_both_files(runs):
    for name in ("with_id", "without"):
        path = runs.root / name / "metrics.csv"
        rows, _ = read_metrics(path)
        listed, means = demo.read_metrics(path)
        assert listed == list(rows.values())
        for column in ("mse", "psnr", "ssim", "seconds"):
            assert means[column] == pytest.approx(sum(float(r[column]) for r in listed) / len(KEYS), rel=1e-9)
        assert all(("id" in r) == (name == "with_id") for r in listed)


def test_rows_without_id_after_rows_with_it_keep_the_column_blank(tmp_path):
    outputs = Outputs(tmp_path)
    row = {"image": "a", "mse": 0.1, "psnr": 16.0, "ssim": 0.5, "lpips": "", "seconds": 1.0, "generator": ""}
    outputs.add_rows([{**row, "id": 0.75}])
    outputs.add_rows([{**row, "image": "b"}])  # e.g. a re-run after the weights were removed
    assert (tmp_path / "metrics.csv").read_text().splitlines() == [
        WITH_ID, "a,0.1,16,0.5,,0.75,1,", "b,0.1,16,0.5,,,1,"]
    rows, bad = read_metrics(tmp_path / "metrics.csv")
    assert (rows["a"]["id"], rows["b"]["id"], bad) == ("0.75", "", [])
    only_blank = Outputs(tmp_path / "blank")
    only_blank.add_rows([{**row, "id": ""}])  # nothing measured: no column
    assert (tmp_path / "blank" / "metrics.csv").read_text().splitlines()[0] == ",".join(COLUMNS)


ROW = "a,0.1,16,0.5,,1,"
HEADERS = [  # (id, header, data row, the refusal naming the column)
    ("unknown-column", WITH_ID + ",smile", "a,0.1,16,0.5,,0.9,1,,2", "has an unknown column 'smile'"),
    ("missing-required", "image,mse,psnr,ssim,lpips,generator", "a,0.1,16,0.5,,", "has no 'seconds' column"),
    ("id-out-of-place", "image,mse,psnr,ssim,id,lpips,seconds,generator", "a,0.1,16,0.5,0.9,,1,",
     "has column 'id' out of order (expected image,mse,psnr,ssim,lpips,id,seconds,generator)"),
    ("required-out-of-order", "image,psnr,mse,ssim,lpips,seconds,generator", ROW,
     "has column 'psnr' out of order (expected image,mse,psnr,ssim,lpips,seconds,generator)"),
]


@pytest.mark.parametrize("header, row, refusal", [pytest.param(*c[1:], id=c[0]) for c in HEADERS])
def test_a_header_ganinv_does_not_write_is_one_line_naming_file_and_column(tmp_path, header, row, refusal):
    path = tmp_path / "metrics.csv"
    path.write_text(f"{header}\n{row}\n")
    for reader in (read_metrics, demo.read_metrics, Outputs):
        with pytest.raises(OutputError) as e:
            reader(path if reader is not Outputs else tmp_path)
        message = str(e.value)
        assert "\n" not in message
        assert message.startswith(f"{path}: not a ganinv metrics file (its header {header[:80]!r} {refusal})")
    assert path.read_text() == f"{header}\n{row}\n"  # untouched


def test_id_weights_path_and_evaluate_use_one_rule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GANINV_WEIGHTS", raising=False)
    assert id_weights_path() is None
    assert id_weights_path(tmp_path / "x.pth") == tmp_path / "x.pth"  # given: used as it is (IDLoss names it)
    torch.manual_seed(1)
    facenet = Backbone(112, 50, "ir_se", drop_ratio=0.6, affine=True)
    (tmp_path / "pretrained_models").mkdir()
    torch.save(facenet.state_dict(), tmp_path / "pretrained_models" / "model_ir_se50.pth")
    assert id_weights_path() == Path("pretrained_models") / "model_ir_se50.pth"  # relative to the working folder
    monkeypatch.setenv("GANINV_WEIGHTS", str(tmp_path / "elsewhere"))
    assert id_weights_path() is None  # the variable wins over pretrained_models/
    # a folder given (invert.py: paths.weights_dir, e.g. overridden on the command line) wins over both
    found = id_weights_path(folder=tmp_path / "pretrained_models")
    assert found == tmp_path / "pretrained_models" / "model_ir_se50.pth"
    assert id_weights_path(folder=tmp_path / "elsewhere") is None
    monkeypatch.setenv("GANINV_WEIGHTS", str(tmp_path / "pretrained_models"))
    assert id_weights_path() == tmp_path / "pretrained_models" / "model_ir_se50.pth"
    args = SimpleNamespace(lpips_random=True, id_weights=None, fid=False, inception_weights=None,
                           lec_encoder=None, lec_direction=None, lec_factor=3.0)
    built = evaluate.build(args)["id_loss"]
    weight = "input_layer.0.weight"
    assert torch.equal(built.facenet.state_dict()[weight], facenet.state_dict()[weight])
    monkeypatch.setenv("GANINV_WEIGHTS", str(tmp_path / "elsewhere"))
    assert evaluate.build(args)["id_loss"] is None
