"""Editing: InterFaceGAN boundaries (fit, e4e/InterFaceGAN/IDInvert files), GANSpace, SeFa, edit specs."""
import fractions

import numpy as np
import pytest
import torch

from ganinv.checkpoints import UnsafeCheckpointError
from ganinv.editing import (
    Direction,
    Edit,
    apply_direction,
    apply_edit,
    apply_ganspace,
    apply_sefa,
    edit_strip,
    ganspace_pca,
    load_direction,
    load_ganspace_pca,
    parse_edit,
    parse_layers,
    pca_of_w,
    sefa_directions,
    train_boundary,
)
from ganinv.nets.stylegan2 import Generator

D = 32


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    return Generator(32, style_dim=D, n_mlp=2, channel_multiplier=1, channel_max=32).eval()  # n_latent 8


def _unit(v):
    return v / v.norm()


# -- InterFaceGAN ---------------------------------------------------------------------------------

def test_boundary_recovers_direction_from_binary_labels():
    n = _unit(torch.randn(D))
    w = torch.randn(3000, D) * torch.linspace(0.5, 2.0, D)  # anisotropic, like W
    fit = train_boundary(w, (w @ n > 0).float(), chosen_ratio=0.5)
    assert fit.normal.shape == (1, D)
    assert fit.normal.norm().item() == pytest.approx(1.0, abs=1e-5)
    assert (fit.normal[0] @ n).item() > 0.95
    assert fit.val_accuracy > 0.95


def test_boundary_recovers_direction_from_continuous_scores():
    n = _unit(torch.randn(D))
    w = torch.randn(4000, D)
    scores = w @ n + 0.05 * torch.randn(4000)
    fit = train_boundary(w, scores, chosen_ratio=0.25)  # top and bottom quarter, as InterFaceGAN
    assert (fit.normal[0] @ n).item() > 0.95
    flipped = train_boundary(w, -scores, chosen_ratio=0.25)  # the normal points towards high scores
    assert (flipped.normal[0] @ n).item() < -0.95


def test_boundary_rejects_bad_shapes():
    with pytest.raises(ValueError, match="latents must be"):
        train_boundary(torch.randn(10, 4), torch.randn(9))


def test_e4e_direction_file_and_edit(tmp_path):
    d = torch.randn(1, D)
    torch.save(d, tmp_path / "age.pt")
    torch.save(d[0], tmp_path / "flat.pt")
    for name in ("age.pt", "flat.pt"):
        direction = load_direction(tmp_path / name)
        torch.testing.assert_close(direction.vector, d)
        assert direction.layers is None
    ws = torch.randn(2, 8, D)
    out = apply_direction(ws, load_direction(tmp_path / "age.pt"), [-3, 0, 3])
    assert out.shape == (3, 2, 8, D)
    torch.testing.assert_close(out[0], ws - 3 * d)  # e4e: w + f·d on every row
    torch.testing.assert_close(out[1], ws)
    torch.testing.assert_close(out[2], ws + 3 * d)


def test_interfacegan_npy_boundary(tmp_path):
    b = np.random.randn(1, D).astype(np.float32)
    np.save(tmp_path / "boundary_Smiling.npy", b)
    direction = load_direction(tmp_path / "boundary_Smiling.npy")
    torch.testing.assert_close(direction.vector, torch.from_numpy(b))


def test_idinvert_layerwise_boundary(tmp_path):
    b = np.random.randn(1, 8, D).astype(np.float32)
    np.save(tmp_path / "age.npy", {"boundary": b, "meta_data": {"manipulate_layers": "2-4"}})
    direction = load_direction(tmp_path / "age.npy")
    assert direction.layers == [2, 3, 4]
    torch.testing.assert_close(direction.vector, torch.from_numpy(b[0]))
    ws = torch.randn(2, 8, D)
    out = apply_direction(ws, direction, [2.0])[0]
    expected = ws.clone()
    expected[:, 2:5] += 2.0 * torch.from_numpy(b[0, 2:5])  # IDInvert: w[:, l] += f·boundary[:, l]
    torch.testing.assert_close(out, expected)
    np.save(tmp_path / "pose.npy", {"boundary": b, "meta_data": {"manipulate_layers": [np.int64(0), 1]}})
    assert load_direction(tmp_path / "pose.npy").layers == [0, 1]


def test_direction_files_are_loaded_safely(tmp_path):
    np.save(tmp_path / "evil.npy", {"boundary": fractions.Fraction(1, 2)}, allow_pickle=True)
    with pytest.raises(UnsafeCheckpointError, match="fractions.Fraction"):
        load_direction(tmp_path / "evil.npy")
    torch.save(torch.randn(2, 3, 4, 5), tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad.pt.*\(2, 3, 4, 5\)"):
        load_direction(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_direction(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="does not fit"):
        apply_direction(torch.randn(1, 8, D), Direction(torch.randn(3, D)), [1.0])


def test_parse_layers():
    assert parse_layers("0,3,6-8", 10) == [0, 3, 6, 7, 8]
    assert parse_layers("all", 4) == [0, 1, 2, 3]
    assert parse_layers([5, 2, 2]) == [2, 5]
    assert parse_layers(None) is None
    with pytest.raises(ValueError, match="row indices"):
        parse_layers("2-9", 8)
    with pytest.raises(ValueError, match="cannot parse"):
        parse_layers("2:5", 8)


# -- GANSpace -------------------------------------------------------------------------------------

def test_pca_recovers_dominant_direction():
    u = _unit(torch.randn(D))
    w = 0.1 * torch.randn(5000, D) + 3.0 * torch.randn(5000, 1) * u + 1.5
    pca = pca_of_w(w, n_components=4)
    assert pca["mean"].shape == (1, D) and pca["comp"].shape == (4, 1, D) and pca["std"].shape == (4,)
    assert abs((pca["comp"][0, 0] @ u).item()) > 0.999
    assert pca["std"][0].item() == pytest.approx(3.0, rel=0.05)
    assert pca["std"][1].item() == pytest.approx(0.1, rel=0.1)
    torch.testing.assert_close(pca["comp"][:, 0] @ pca["comp"][:, 0].T, torch.eye(4), atol=1e-5, rtol=0)


def test_ganspace_pca_of_generator_matches_direct_pca(generator):
    streamed = ganspace_pca(generator, n_samples=3000, n_components=5, batch=700, seed=1)
    w = generator.mapping(torch.randn(3000, D, generator=torch.Generator().manual_seed(1)))
    direct = pca_of_w(w, n_components=5)
    torch.testing.assert_close(streamed["mean"], direct["mean"], atol=1e-5, rtol=0)
    torch.testing.assert_close(streamed["std"], direct["std"], atol=1e-4, rtol=1e-4)
    cos = (streamed["comp"][:, 0] * direct["comp"][:, 0]).sum(1).abs()
    assert cos.min().item() > 0.999


def test_ganspace_file_and_e4e_edit(tmp_path):
    k = 6
    comp = torch.linalg.qr(torch.randn(D, k))[0].T  # orthonormal rows
    pca = {"mean": torch.randn(1, D), "comp": comp.unsqueeze(1), "std": torch.rand(k) + 0.5}
    torch.save(pca, tmp_path / "ffhq_pca.pt")
    loaded = load_ganspace_pca(tmp_path / "ffhq_pca.pt")
    for key in pca:
        torch.testing.assert_close(loaded[key], pca[key])
    torch.save({"mean": pca["mean"][0], "comp": comp, "std": pca["std"]}, tmp_path / "flat.pt")
    torch.testing.assert_close(load_ganspace_pca(tmp_path / "flat.pt")["comp"], pca["comp"])

    ws = torch.randn(2, 8, D)
    idx, start, end = 2, 3, 6
    out = apply_ganspace(ws, loaded, idx, start, end, [-4.0, 4.0])
    assert out.shape == (2, 2, 8, D)
    c, sigma = comp[idx], pca["std"][idx]
    for s_i, s in enumerate([-4.0, 4.0]):
        for b in range(2):  # e4e get_delta: coordinate from row 0, set to the strength on [start, end)
            coord = ((ws[b, 0] - pca["mean"][0]) @ c) / sigma
            expected = ws[b].clone()
            expected[start:end] += (s - coord) * c * sigma
            torch.testing.assert_close(out[s_i, b], expected)
    # on a W code (all rows equal) the edited rows sit exactly s standard deviations along the component
    w_code = torch.randn(2, 1, D).expand(2, 8, D)
    edited = apply_ganspace(w_code, loaded, idx, start, end, [-4.0, 4.0])
    coords = ((edited[:, :, start:end] - pca["mean"][0]) @ c) / sigma
    torch.testing.assert_close(coords, torch.tensor([-4.0, 4.0]).view(2, 1, 1).expand_as(coords),
                               atol=1e-4, rtol=0)
    torch.save({"mean": torch.randn(1, D), "comp": torch.randn(3, D + 1), "std": torch.ones(3)},
               tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt.*do not fit"):
        load_ganspace_pca(tmp_path / "bad.pt")


# -- SeFa -----------------------------------------------------------------------------------------

def test_sefa_layer_to_module_mapping(generator):
    from ganinv.editing import modulation_weight

    assert modulation_weight(generator, 0) is generator.conv1.conv.modulation.weight
    assert modulation_weight(generator, 1) is generator.convs[0].conv.modulation.weight
    assert modulation_weight(generator, 6) is generator.convs[5].conv.modulation.weight
    assert modulation_weight(generator, 7) is generator.to_rgbs[-1].conv.modulation.weight


def test_sefa_directions_are_orthonormal_eigenvectors(generator):
    sefa = sefa_directions(generator, "2-5")
    assert sefa.layers == [2, 3, 4, 5]
    dirs = sefa.directions.double()
    torch.testing.assert_close(dirs @ dirs.T, torch.eye(D, dtype=torch.float64), atol=1e-5, rtol=0)
    assert torch.all(sefa.eigenvalues[:-1] >= sefa.eigenvalues[1:])

    # independent check: right singular vectors of the stacked, row-normalised weights
    a = torch.cat([generator.convs[r - 1].conv.modulation.weight.detach().double() for r in (2, 3, 4, 5)])
    a = a / a.norm(dim=1, keepdim=True)
    _, sv, vh = torch.linalg.svd(a, full_matrices=False)
    torch.testing.assert_close(sefa.eigenvalues.double(), sv.square(), atol=1e-4, rtol=1e-4)
    for k in range(3):  # distinct leading eigenvalues: directions agree up to sign
        assert abs((dirs[k] @ vh[k]).item()) > 1 - 1e-5


def test_sefa_edit(generator):
    sefa = sefa_directions(generator, [1, 3])
    ws = torch.randn(2, 8, D)
    out = apply_sefa(ws, sefa, 0, [-2.0, 5.0])
    diff = out - ws
    for s_i, s in enumerate([-2.0, 5.0]):
        for row in range(8):
            expected = s * sefa.directions[0] if row in (1, 3) else torch.zeros(D)
            torch.testing.assert_close(diff[s_i, :, row], expected.expand(2, D), atol=1e-5, rtol=0)


# -- edit specs -----------------------------------------------------------------------------------

def test_parse_edit_specs():
    s = parse_edit("interfacegan:dirs/age.pt:-3,0,3")
    assert (s.kind, s.path, s.strengths, s.layers) == ("interfacegan", "dirs/age.pt", (-3.0, 0.0, 3.0), None)
    s = parse_edit("interfacegan:C:/dirs/age.npy:1.5:layers=2-5")
    assert (s.path, s.strengths, s.layers) == ("C:/dirs/age.npy", (1.5,), "2-5")
    s = parse_edit("ganspace:ffhq_pca.pt:54,7,8:-20,20")
    assert (s.path, s.index, s.start, s.end, s.strengths) == ("ffhq_pca.pt", 54, 7, 8, (-20.0, 20.0))
    s = parse_edit("sefa:layers=2-5:1:-5,5")
    assert (s.index, s.strengths, s.layers) == (1, (-5.0, 5.0), "2-5")
    for bad, match in [("styleflow:x", "unknown kind"), ("interfacegan:age.pt:a,b", "STRENGTHS"),
                       ("ganspace:p.pt:1,2:3", "three integers"), ("sefa:0:1:depth=3", "unknown option"),
                       ("sefa:0", "sefa:INDEX:STRENGTHS")]:
        with pytest.raises(ValueError, match=match):
            parse_edit(bad)


def test_apply_edit_and_strip(generator, tmp_path):
    d = torch.randn(1, D)
    torch.save(d, tmp_path / "dir.pt")
    ws = generator.broadcast(generator.mapping(torch.randn(2, D)))
    out = apply_edit(ws, f"interfacegan:{tmp_path}/dir.pt:-1,2:layers=0-3")
    assert out.shape == (2, 2, 8, D)
    torch.testing.assert_close(out[1, :, :4], ws[:, :4] + 2 * d)
    torch.testing.assert_close(out[1, :, 4:], ws[:, 4:])

    with pytest.raises(ValueError, match="needs the generator"):
        apply_edit(ws, "sefa:0:1")
    edit = Edit("sefa:0:0,3:layers=2-5", generator)
    expected = apply_sefa(ws, sefa_directions(generator, "2-5"), 0, [0, 3])
    torch.testing.assert_close(apply_edit(ws, edit), expected)

    strip = edit_strip(generator, ws, edit, batch=3)
    assert strip.shape == (2, 2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(strip[:, 0], generator.synthesis(ws))  # strength 0 is the input
        torch.testing.assert_close(strip[1, 1], generator.synthesis(edit(ws)[1, 1:2])[0])
