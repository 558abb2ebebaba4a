"""Directions from data (issue 17, item 2): InterFaceGAN boundaries by scikit-learn's linear SVM with
the official sample selection, GANSpace and SeFa files in the official layouts, ``python -m
ganinv.editing`` and edits of an invert.py folder's saved latents."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config
from sklearn import svm
from sklearn.decomposition import PCA

from ganinv import inversion
from ganinv.checkpoints import load_generator, load_torch, save_atomic
from ganinv.config import ASSETS
from ganinv.data.images import load_image, save_image
from ganinv.data.procedural import FACTORS, ProceduralFaces
from ganinv.edit_cli import apply_saved
from ganinv.editing import (
    GANSPACE_SAMPLES,
    Edit,
    edit_saved,
    edit_strip,
    ganspace_pca,
    load_direction,
    load_ganspace_pca,
    save_boundary,
    train_boundary,
)
from ganinv.editing.__main__ import main, parser
from ganinv.editing.labels import load_latents, procedural_scores
from ganinv.metrics.editability import FactorRegressor, load_regressor, save_regressor
from ganinv.nets.stylegan2 import Generator
from ganinv.outputs import read_metrics

D = 64


@pytest.fixture(scope="module")
def gfile(tmp_path_factory):
    torch.manual_seed(0)
    g = Generator(32, D, n_mlp=2, channel_max=32).eval()  # n_latent 8
    path = tmp_path_factory.mktemp("g") / "g.pt"
    save_atomic({"g_ema": g.state_dict()}, path)
    return path


def factor_latents(n=2000, dim=512, noise=0.01):
    """Latents that are a linear image of the procedural factors: w = f·A + noise, f [n, 12] the
    factors of ProceduralFaces items; -> (w [n, dim] float64, f)."""
    f = torch.stack([ProceduralFaces(n, seed=3).factors(i) for i in range(n)]).double()
    a = torch.randn(len(FACTORS), dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return f @ a + noise * torch.randn(n, dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64), f


def official_boundary(latents, scores, chosen, split_ratio, seed):
    """InterFaceGAN's train_boundary step by step (global np.random seeded), with sklearn directly."""
    np.random.seed(seed)
    order = np.argsort(scores.reshape(-1, 1), axis=0)[::-1, 0]
    x = latents[order]
    n_train = int(chosen * split_ratio)
    pos_idx, neg_idx = np.arange(chosen), np.arange(chosen)
    np.random.shuffle(pos_idx)
    np.random.shuffle(neg_idx)
    pos, neg = x[:chosen][pos_idx], x[-chosen:][neg_idx]
    clf = svm.SVC(kernel="linear").fit(np.concatenate([pos[:n_train], neg[:n_train]]),
                                       np.r_[np.ones(n_train), np.zeros(n_train)])
    val = np.concatenate([pos[n_train:], neg[n_train:]])
    acc = (clf.predict(val) == np.r_[np.ones(chosen - n_train), np.zeros(chosen - n_train)]).mean()
    coef = clf.coef_.reshape(1, -1)
    return coef / np.linalg.norm(coef), acc


def test_svc_boundary_on_separable_factor_latents_equals_sklearn():
    w, f = factor_latents()
    hair = f[:, FACTORS.index("hair_tone")]
    fit = train_boundary(w, hair, chosen_ratio=0.1, split_ratio=0.7, seed=5)
    # 200 positives / 200 negatives, 140 + 140 to train, 60 + 60 to validate: all held-out ones right
    assert fit.val_accuracy == 1.0
    assert fit.normal.shape == (1, 512) and fit.normal.dtype == torch.float32
    assert fit.normal.norm().item() == pytest.approx(1.0, abs=1e-6)
    expected, acc = official_boundary(w.numpy(), hair.numpy(), 200, 0.7, 5)
    assert fit.val_accuracy == acc
    cosine = (fit.normal.double() @ torch.from_numpy(expected).T).item()
    assert cosine > 0.9999
    # the normal points to high scores: the factor rises along it
    proj = w @ fit.normal[0].double()
    assert np.corrcoef(proj.numpy(), hair.numpy())[0, 1] > 0.9
    flipped = train_boundary(w, -hair, chosen_ratio=0.1, seed=5)
    assert (flipped.normal[0] @ fit.normal[0]).item() < -0.99


def test_official_defaults_select_two_percent_and_report_remaining_accuracy():
    w, f = factor_latents(n=5000, dim=64)
    skin = f[:, FACTORS.index("skin_light")]
    fit = train_boundary(w, skin)  # chosen_num_or_ratio 0.02 -> 100 per side, 70 train, 30 validate
    expected, acc = official_boundary(w.numpy(), skin.numpy(), 100, 0.7, 0)
    assert fit.val_accuracy == acc == 1.0
    assert (fit.normal.double() @ torch.from_numpy(expected).T).item() > 0.9999
    # the 4800 unchosen samples, labelled by the mid score: a linear factor is still mostly right
    assert fit.remaining_accuracy > 0.95
    with pytest.raises(ValueError, match="scores are constant"):
        train_boundary(w, torch.ones(5000))
    with pytest.raises(ValueError, match="leave no training data"):
        train_boundary(w[:40], skin[:40])


def test_boundary_layouts_round_trip(tmp_path):
    normal = torch.nn.functional.normalize(torch.randn(1, 512), dim=1)
    npy = save_boundary(normal, tmp_path / "boundary.npy")
    raw = np.load(npy, allow_pickle=False)  # InterFaceGAN's boundary.npy: float32 [1, 512]
    assert raw.shape == (1, 512) and raw.dtype == np.float32
    pt = save_boundary(normal[0], tmp_path / "age.pt")
    assert load_torch(pt).shape == (1, 512)  # e4e's direction: a tensor [1, 512]
    for path in (npy, pt):
        direction = load_direction(path)
        assert direction.layers is None
        torch.testing.assert_close(direction.vector, normal, atol=0, rtol=0)


def test_fit_boundary_cli_on_an_invert_folder_and_a_csv(tmp_path):
    w, f = factor_latents(n=400, dim=D)
    run = tmp_path / "run"
    keys = [f"faces/im{i:03d}" for i in range(400)]
    for key, code in zip(keys, w.float()):
        save_atomic(code.expand(8, D).clone(), run / "latents" / f"{key}.pt")  # a W inversion: equal rows
    smile = f[:, FACTORS.index("mouth_curve")]
    rows = ["image,smile,other"] + [f"{k},{s:.9g},0" for k, s in zip(keys[:300], smile[:300].tolist())]
    (tmp_path / "scores.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "smile.npy"
    assert main(["fit-boundary", "--latents", run, "--scores", tmp_path / "scores.csv", "--attribute", "smile",
                 "--chosen-ratio", "0.25", "--out", out]) == 0
    scores = torch.tensor([float(r.split(",")[1]) for r in rows[1:]], dtype=torch.float64)
    names, codes = load_latents(run)  # keys sorted; W+ codes -> the mean of their rows
    assert names == keys and (codes - w.float()).abs().max() < 1e-6
    direct = train_boundary(codes[:300], scores, chosen_ratio=0.25)  # only the 300 scored latents
    torch.testing.assert_close(load_direction(out).vector, direct.normal, atol=1e-6, rtol=0)
    record = json.loads(out.with_suffix(".json").read_text())
    assert (record["samples"], record["val_accuracy"]) == (300, direct.val_accuracy)
    assert record["val_accuracy"] == 1.0 and record["chosen_num_or_ratio"] == 0.25


def test_fit_boundary_cli_on_procedural_labels_of_generator_samples(tmp_path, gfile):
    torch.manual_seed(3)
    regressor = FactorRegressor(size=32).eval()  # any regressor: this checks the plumbing, not its skill
    save_regressor(regressor, tmp_path / "reg.pt")
    out = tmp_path / "dirs"
    assert main(["fit-boundary", "--procedural", "hair_tone,yaw", "--generator", gfile, "--regressor",
                 tmp_path / "reg.pt", "--n-samples", "400", "--chosen-ratio", "0.1", "--seed", "2", "--out", out,
                 "--prefix", "g_"]) == 0
    record = json.loads((out / "g_directions.json").read_text())
    assert list(record["factors"]) == ["hair_tone", "yaw"] and record["samples"] == 400
    w, scores = procedural_scores(load_generator(gfile), load_regressor(tmp_path / "reg.pt"), 400, seed=2)
    for name, entry in record["factors"].items():
        direct = train_boundary(w, scores[:, FACTORS.index(name)], chosen_ratio=0.1, seed=2)
        assert entry["val_accuracy"] == direct.val_accuracy
        torch.testing.assert_close(load_direction(out / f"g_{name}.pt").vector, direct.normal, atol=1e-6, rtol=0)
        assert entry["sigma"] == pytest.approx((w.double() @ direct.normal[0].double()).std().item(), rel=1e-6)


def test_ganspace_cli_writes_e4e_layout_equal_to_sklearn_pca(tmp_path, gfile):
    assert GANSPACE_SAMPLES == 300_000 and parser().parse_args(["ganspace", "--out", "x"]).n_samples == 300_000
    out = tmp_path / "pca.pt"
    assert main(["ganspace", "--generator", gfile, "--n-samples", "3000", "--components", "8", "--out", out]) == 0
    raw = load_torch(out)
    assert sorted(raw) == ["comp", "mean", "std"]
    assert (raw["mean"].shape, raw["comp"].shape, raw["std"].shape) == ((1, D), (8, 1, D), (8,))
    loaded = load_ganspace_pca(out)
    for key in raw:
        torch.testing.assert_close(loaded[key], raw[key], atol=0, rtol=0)
    g = load_generator(gfile)
    direct = ganspace_pca(g, n_samples=3000, n_components=8, seed=0)
    for key in raw:
        torch.testing.assert_close(raw[key], direct[key], atol=0, rtol=0)
    with torch.no_grad():
        w = g.mapping(torch.randn(3000, D, generator=torch.Generator().manual_seed(0))).double().numpy()
    ref = PCA(n_components=8, svd_solver="full").fit(w)
    np.testing.assert_allclose(raw["mean"][0].numpy(), ref.mean_, atol=1e-5)
    np.testing.assert_allclose(raw["std"].numpy(), np.sqrt(ref.explained_variance_), rtol=1e-4)
    cos = np.abs((raw["comp"][:, 0].double().numpy() * ref.components_).sum(1))
    assert cos[:4].min() > 0.9999  # leading components (distinct eigenvalues) agree up to sign


def test_sefa_cli_files_edit_as_the_sefa_spec(tmp_path, gfile):
    out = tmp_path / "sefa"
    assert main(["sefa", "--generator", gfile, "--layers", "2-5", "--num", "3", "--out", out]) == 0
    record = json.loads((out / "sefa.json").read_text())
    assert record["layers"] == [2, 3, 4, 5] and len(record["eigenvalues"]) == 3
    g = load_generator(gfile)
    ws = g.broadcast(g.mapping(torch.randn(2, D)))
    for k in range(3):
        from_file = Edit(f"interfacegan:{out / f'sefa_{k}.npy'}:-3,0,3")
        assert from_file._data.layers == [2, 3, 4, 5]
        expected = Edit(f"sefa:{k}:-3,0,3:layers=2-5", g)(ws)
        assert (from_file(ws) - expected).abs().max().item() < 1e-6


def test_apply_to_saved_latents_equals_editing_at_inversion_time(tmp_path, gfile, monkeypatch, one_thread):
    g = load_generator(gfile)
    with torch.no_grad():
        images = g(torch.randn(3, D, generator=torch.Generator().manual_seed(4)), noise_mode="const").clamp(-1, 1)
    for i, image in enumerate(images):
        save_image(image, tmp_path / "photos" / f"sub/im{i}.png")
    torch.save(torch.randn(1, D), tmp_path / "dir.pt")
    specs = ["sefa:1:-4,0,4:layers=2-5", f"interfacegan:{tmp_path / 'dir.pt'}:-2,2"]
    captured = {}
    original = inversion.Outputs.write_edit

    def capture(self, tag, key, strip):
        captured[(tag, key)] = strip.clone()
        return original(self, tag, key, strip)

    monkeypatch.setattr(inversion.Outputs, "write_edit", capture)
    edit = "edit=[" + ",".join(f"'{s}'" for s in specs) + "]"
    # channels_last=false: apply renders NCHW, and NHWC convolutions round differently (~1e-5), which can
    # flip an 8-bit PNG level; the claim checked here is the same generator, codes and edit, exactly
    common = [f"input={tmp_path / 'photos'}", "generator=checkpoint", f"generator.path={gfile}", "logger=none",
              "grid_max=0", "inversion.steps=2", "inversion.n_mean_latent=100", "channels_last=false", edit]
    out = tmp_path / "pti"
    pti = ["refine=pti", "pti.steps=1", "pti.lpips_threshold=0"]  # per image: generators/<key>.pt
    cfg = compose_config("invert", [*common, f"output={out}", *pti], out)
    assert inversion.invert(cfg)["inverted"] == 3
    rows, _ = read_metrics(out / "metrics.csv")  # the driver reads the run folder; editing/ gets its rows
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    returned = edit_saved(out, specs, load_generator(gfile), rows)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps  # edit_saved itself writes nothing
    assert sorted((t, k) for t in returned for k in returned[t]) == sorted(captured)
    assert max((returned[t][k] - s).abs().max().item() for (t, k), s in captured.items()) < 1e-6
    strips = apply_saved(out, specs, load_generator(gfile), out=tmp_path / "applied")
    assert sorted((t, k) for t in strips for k in strips[t]) == sorted(captured)
    assert max((strips[t][k] - s).abs().max().item() for (t, k), s in captured.items()) < 1e-6
    for tag, key in captured:  # the same PNGs in the same layout, holding the returned strips
        rel = Path("edits") / tag / f"{key}.png"
        written = load_image(tmp_path / "applied" / rel)
        assert torch.equal(written, load_image(out / rel))
        side_by_side = torch.cat(list(returned[tag][key].clamp(-1, 1)), dim=-1)
        assert (written - side_by_side).abs().max().item() <= 1 / 127.5 + 1e-6  # 8-bit PNG rounding
    with torch.no_grad():  # ... rendered by each image's PTI-tuned generator, not the base one
        untuned = edit_strip(g, load_torch(out / "latents" / "sub/im0.pt")[None], specs[1])[0]
    assert (untuned - captured[("interfacegan_dir", "sub/im0")]).abs().max() > 1e-4
    # the CLI writes the same files into the run folder itself
    before = {p: load_image(p) for p in (out / "edits").rglob("*.png")}
    assert main(["apply", out, "--generator", gfile, *sum((["--edit", s] for s in specs), [])]) == 0
    assert len(before) == 6 and all(torch.equal(load_image(p), img) for p, img in before.items())


def test_apply_without_pti_renders_with_the_base_generator(tmp_path, gfile):
    g = load_generator(gfile)
    ws = g.broadcast(g.mapping(torch.randn(3, D))).detach()
    for i, code in enumerate(ws):
        save_atomic(code.clone(), tmp_path / "run" / "latents" / f"im{i}.pt")
    spec = "sefa:0:-3,3"  # no metrics.csv generator column: the base generator renders, as invert.py does
    strips = edit_saved(tmp_path / "run", [spec], g, {})["sefa_0"]
    expected = edit_strip(g, ws, spec)
    assert max((strips[f"im{i}"] - expected[i]).abs().max().item() for i in range(3)) < 1e-6
    assert not (tmp_path / "run" / "edits").exists()


def _one_line(capsys, argv, match):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("python -m ganinv.editing: ")
    assert match in err, err


def test_cli_one_line_errors_name_the_file(tmp_path, capsys, gfile):
    run = tmp_path / "run"
    save_atomic(torch.randn(8, D), run / "latents" / "a.pt")
    (tmp_path / "bad.csv").write_text("image,smile\na,high\n")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    save_atomic({"w": 1}, tmp_path / "dict.pt")
    _one_line(capsys, ["apply", tmp_path / "nowhere", "--edit", "sefa:0:1", "--generator", gfile],
              f"{tmp_path / 'nowhere'}: not an invert.py output folder")
    _one_line(capsys, ["fit-boundary", "--latents", run, "--scores", tmp_path / "missing.csv", "--out", "x.npy"],
              f"scores file not found: {tmp_path / 'missing.csv'}")
    _one_line(capsys, ["fit-boundary", "--latents", run, "--scores", tmp_path / "bad.csv", "--out", "x.npy"],
              f"scores file {tmp_path / 'bad.csv'} line 2: smile='high' is not a number")
    _one_line(capsys, ["fit-boundary", "--latents", tmp_path / "dict.pt", "--scores", tmp_path / "bad.csv",
                       "--out", "x.npy"], f"latents file {tmp_path / 'dict.pt'}: expected a float tensor")
    _one_line(capsys, ["ganspace", "--generator", tmp_path / "junk.pt", "--out", tmp_path / "p.pt"],
              str(tmp_path / "junk.pt"))
    _one_line(capsys, ["apply", run, "--edit", f"interfacegan:{tmp_path / 'gone.pt'}:1", "--generator", gfile],
              f"direction file not found: {tmp_path / 'gone.pt'}")
    _one_line(capsys, ["fit-boundary", "--procedural", "smile", "--out", tmp_path], "unknown factor 'smile'")


def test_shipped_directions_for_the_embedded_generator():
    record = json.loads((ASSETS / "procedural64_directions.json").read_text())
    assert list(record["factors"]) == list(FACTORS)
    assert record["samples"] == 20000 and record["chosen_num_or_ratio"] == 0.02 and record["split_ratio"] == 0.7
    for entry in record["factors"].values():
        direction = load_direction(ASSETS / entry["file"])
        assert direction.vector.shape == (1, 512) and direction.layers is None
        assert direction.vector.norm().item() == pytest.approx(1.0, abs=1e-5)
        assert 0.5 <= entry["val_accuracy"] <= 1.0 and entry["sigma"] > 0
    well_rendered = ("skin_light", "hair_tone", "bg_hue")  # experiments/embedded_generator: covered factors
    assert min(record["factors"][f]["val_accuracy"] for f in well_rendered) >= 0.95
    pca = load_ganspace_pca(ASSETS / "procedural64_pca.pt")
    assert (pca["mean"].shape, pca["comp"].shape, pca["std"].shape) == ((1, 512), (80, 1, 512), (80,))
    assert torch.all(pca["std"][:-1] >= pca["std"][1:])
