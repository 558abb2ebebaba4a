"""Data package: procedural faces, image I/O, folders and data modules, pSp tasks, generator samples."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ganinv.data.folder import (
    ImageDataModule,
    ImageFolder,
    PairedDataset,
    ProceduralDataModule,
    list_images,
    split_indices,
)
from ganinv.data.images import load_image, resize_crop, save_image
from ganinv.data.procedural import FACTORS, ProceduralFaces, render_batch, render_face
from ganinv.data.sampled import GeneratorSampledDataset
from ganinv.data.tasks import (
    EdgeSketch,
    Grayscale,
    Inpainting,
    OneHotLabels,
    SuperResolution,
    bicubic_downsample,
)
from ganinv.nets.stylegan2 import Generator

PHOTO = Path(__file__).parent / "data" / "e4e_car_img.jpg"  # 512x384 JPEG from the e4e repository


def factor_index(name):
    return FACTORS.index(name)


# -- procedural faces -----------------------------------------------------------------


def test_procedural_items_are_deterministic_and_streams_differ():
    a = ProceduralFaces(20, 32, seed=0)
    img, fac = a[5]
    img2, fac2 = ProceduralFaces(20, 32, seed=0)[5]
    assert torch.equal(img, img2) and torch.equal(fac, fac2)
    assert not torch.equal(fac, ProceduralFaces(20, 32, seed=1)[5][1])
    assert not torch.equal(fac, ProceduralFaces(20, 32, seed=0, split="val")[5][1])
    assert not torch.equal(fac, a[6][1])
    train = {tuple(ProceduralFaces(50, 8, split="train").factors(i).tolist()) for i in range(50)}
    val = {tuple(ProceduralFaces(50, 8, split="val").factors(i).tolist()) for i in range(50)}
    assert not train & val


@pytest.mark.parametrize("size", [32, 64, 128])
def test_procedural_shapes_and_range(size):
    data = ProceduralFaces(4, size)
    img, fac = data[0]
    assert img.shape == (3, size, size) and img.dtype == torch.float32
    assert fac.shape == (len(FACTORS),) and fac.dtype == torch.float32
    assert 0 <= fac.min() and fac.max() <= 1
    assert -1 <= img.min() < -0.5 and 0.5 < img.max() <= 1  # uses the range, not a flat image
    assert data.factor_names == FACTORS


def test_labels_match_rendering():
    data = ProceduralFaces(8, 64, seed=3, split="test")
    for i in range(3):
        img, fac = data[i]
        assert torch.equal(render_face(fac, 64), img)
        assert torch.equal(render_face(dict(zip(FACTORS, fac.tolist())), 64), img)
    batched = data.__getitems__([0, 1, 2])
    for i, (img, fac) in enumerate(batched):
        torch.testing.assert_close(img, data[i][0], atol=1e-6, rtol=0)
        assert torch.equal(fac, data[i][1])


def test_render_face_defaults_and_errors():
    assert torch.equal(render_face({}), render_face(torch.full((len(FACTORS),), 0.5)))
    with pytest.raises(ValueError, match="unknown face factors"):
        render_face({"nose_length": 0.5})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        render_face({"yaw": 1.5})
    with pytest.raises(ValueError, match="shape"):
        render_batch(torch.rand(2, 3))
    with pytest.raises(ValueError, match="split"):
        ProceduralFaces(split="training")


def _region_change(name, size=64):
    lo, hi = torch.full((2, len(FACTORS)), 0.5).unbind(0)
    lo, hi = lo.clone(), hi.clone()
    lo[factor_index(name)], hi[factor_index(name)] = 0.0, 1.0
    return (render_face(hi, size) - render_face(lo, size)).abs().mean(0)  # [S, S]


def test_mouth_curve_changes_the_lower_middle_only():
    d = _region_change("mouth_curve")
    mouth = d[36:48, 20:44].mean()
    assert mouth > 0.02
    assert d[:24].mean() < 0.01 * mouth + 1e-6  # the top (hair, forehead) is untouched
    assert d[36:48, 20:44].sum() > 0.9 * d.sum()


def test_eye_and_hair_factors_change_their_regions():
    eyes = _region_change("eye_size")
    assert eyes[22:34, 12:52].sum() > 0.9 * eyes.sum() > 0
    hair = _region_change("hair_amount")
    assert hair[:28].mean() > 3 * hair[40:52, 20:44].mean()
    bg = _region_change("bg_hue")
    assert bg[:8, :8].mean() > 0.1 and bg[24:40, 24:40].mean() < 1e-6  # face centre keeps its colour


def test_every_factor_is_visible_and_mostly_linearly_decodable():
    g = torch.Generator().manual_seed(0)
    fac = torch.rand(1600, len(FACTORS), generator=g)
    x = F.avg_pool2d(render_batch(fac, 32), 2).flatten(1).double()
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    tr, te = slice(0, 1400), slice(1400, None)
    w = torch.linalg.solve(x[tr].T @ x[tr] + torch.eye(x.shape[1], dtype=x.dtype), x[tr].T @ fac[tr].double())
    r2 = 1 - ((x[te] @ w - fac[te]) ** 2).mean(0) / fac[te].double().var(0)
    scores = dict(zip(FACTORS, r2.tolist()))
    # Positions of small features (eye spacing, mouth shape) need a non-linear regressor; all else is linear.
    for name, score in scores.items():
        assert score > (0.05 if name in ("eye_spacing", "mouth_curve", "mouth_width") else 0.8), scores


# -- image I/O ------------------------------------------------------------------------------


def _save(img, path, **kw):
    img.save(path, **kw)
    return path


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.png: empty file"):
        load_image(tmp_path / "empty.png")
    (tmp_path / "text.jpg").write_text("not really a jpeg\n")
    with pytest.raises(ValueError, match=r"text\.jpg: not a recognised image"):
        load_image(tmp_path / "text.jpg")
    good = _save(Image.new("RGB", (64, 64), (10, 20, 30)), tmp_path / "good.png")
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:60])
    with pytest.raises(ValueError, match=r"cut\.png: corrupt or truncated"):
        load_image(tmp_path / "cut.png")


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    path = _save(Image.new("RGB", (20, 20)), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 150)  # 400 px > 2x limit: Pillow's error
    with pytest.raises(ValueError, match=r"bomb\.png: refused as a possible decompression bomb"):
        load_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # between 1x and 2x: Pillow only warns
    with pytest.raises(ValueError, match="decompression bomb"):
        load_image(path)


@pytest.mark.parametrize(
    "name, make, conversion, rgb",
    [
        ("grey.png", lambda: Image.new("L", (6, 4), 128), "greyscale", (128, 128, 128)),
        ("rgba.png", lambda: Image.new("RGBA", (6, 4), (255, 0, 0, 0)), "on white", (255, 255, 255)),
        ("half.png", lambda: Image.new("RGBA", (6, 4), (0, 0, 0, 128)), "RGBA", (127, 127, 127)),
        ("deep.png", lambda: Image.fromarray(np.full((4, 6), 65535, np.uint16)), "I;16", (255, 255, 255)),
        ("cmyk.jpg", lambda: Image.new("CMYK", (6, 4), (0, 255, 255, 0)), "CMYK", (255, 0, 0)),
        ("pal.png", lambda: Image.new("RGB", (6, 4), (0, 0, 255)).convert("P"), "palette", (0, 0, 255)),
    ],
)
def test_conversions_warn_with_file_name(tmp_path, name, make, conversion, rgb):
    path = _save(make(), tmp_path / name)
    with pytest.warns(UserWarning, match=rf"{name}: converted .*{conversion}"):
        img = load_image(path)
    assert img.shape == (3, 4, 6)
    expected = torch.tensor(rgb, dtype=torch.float32) / 127.5 - 1
    tol = 3 / 127.5 if name.endswith(".jpg") else 1.01 / 127.5
    torch.testing.assert_close(img[:, 2, 3], expected, atol=tol, rtol=0)


def test_rgb_loads_without_warning_and_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((4, 6, 3), np.uint8)
    arr[0, 0] = 255
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _save(img, tmp_path / "rot.png", exif=exif)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = load_image(path)
    assert out.shape == (3, 6, 4)
    assert out[:, 0, 3].min() == 1.0 and out[:, 0, 0].max() == -1.0  # red corner moved to top right


def test_real_photo_loads_and_crops():
    img = load_image(PHOTO)
    assert img.shape == (3, 384, 512) and -1 <= img.min() and img.max() <= 1 and img.std() > 0.1
    square = load_image(PHOTO, 128)
    assert square.shape == (3, 128, 128)
    # Center crop to 384x384, then resize: equals cropping first ourselves.
    torch.testing.assert_close(square, resize_crop(img[:, :, 64:448], 128))
    assert load_image(PHOTO, (96, 64)).shape == (3, 96, 64)
    assert load_image(PHOTO, mode="L").shape == (1, 384, 512)


def test_save_image_roundtrip_is_atomic_and_clamped(tmp_path):
    x = torch.linspace(-1.5, 1.5, 3 * 8 * 8).reshape(3, 8, 8)
    path = tmp_path / "sub" / "out.png"
    save_image(x, path)
    back = load_image(path)
    torch.testing.assert_close(back, x.clamp(-1, 1), atol=0.5 / 127.5 + 1e-6, rtol=0)
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.png"]  # no temp files left
    with pytest.raises(ValueError, match="extension"):
        save_image(x, tmp_path / "out.xyz")


# -- folders and data modules ---------------------------------------------------------------


def _tree(root, n=20):
    for i in range(n):
        sub = root / ("a" if i % 2 else "b/c")
        sub.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), (i * 10, 0, 0)).save(sub / f"{i:02d}.png")
    (root / "notes.txt").write_text("ignored")
    return root


def test_image_folder_recursive_sorted_resized(tmp_path):
    root = _tree(tmp_path / "imgs")
    data = ImageFolder(root, 16)
    rel = [p.relative_to(root).as_posix() for p in data.paths]
    assert len(data) == 20 and rel == sorted(rel) and rel[0] == "a/01.png" and rel[-1] == "b/c/18.png"
    img = data[0]
    assert img.shape == (3, 16, 16)
    torch.testing.assert_close(img[0, 0, 0], torch.tensor(10 / 127.5 - 1))
    assert ImageFolder(root, (8, 12))[0].shape == (3, 8, 12)


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        ImageFolder(tmp_path / "nope", 16)
    (tmp_path / "empty" / "deep").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images .* found under .*empty"):
        list_images(tmp_path / "empty")


def test_split_is_deterministic_and_partitions():
    a = split_indices(100, (0.9, 0.05, 0.05), seed=0)
    assert a == split_indices(100, (0.9, 0.05, 0.05), seed=0)
    assert [len(p) for p in a] == [90, 5, 5]
    assert sorted(sum(a, [])) == list(range(100))
    assert a != split_indices(100, (0.9, 0.05, 0.05), seed=1)


def test_image_datamodule_root_split_and_task(tmp_path):
    root = _tree(tmp_path / "imgs")
    dm = ImageDataModule(root=str(root), split=(0.6, 0.2, 0.2), size=16, batch_size=4, task=Grayscale())
    dm.setup("fit")
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [12, 4, 4]
    batch = next(iter(dm.train_dataloader()))
    assert batch["y"].shape == (4, 3, 16, 16) and batch["x"].shape == (4, 1, 16, 16)
    val = next(iter(dm.val_dataloader()))
    dm2 = ImageDataModule(root=str(root), split=(0.6, 0.2, 0.2), size=16, batch_size=4, task=Grayscale())
    dm2.setup("fit")
    assert torch.equal(val["y"], next(iter(dm2.val_dataloader()))["y"])


def test_image_datamodule_explicit_dirs_and_errors(tmp_path):
    train = _tree(tmp_path / "train", 6)
    dm = ImageDataModule(train_dir=str(train), val_dir=str(train), size=8, batch_size=2, flip=False)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert torch.equal(batch["x"], batch["y"]) and batch["x"].shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="no test data"):
        dm.test_dataloader()
    with pytest.raises(ValueError, match="either root"):
        ImageDataModule(train_dir=str(train), root=str(train))
    with pytest.raises(ValueError, match="OneHotLabels does not derive"):
        PairedDataset(ImageFolder(train, 8), task=OneHotLabels(4))


def test_val_task_inputs_are_fixed_per_item():
    base = ProceduralFaces(6, 32, split="val")
    a = PairedDataset(base, Inpainting(), split="val", seed=0)
    b = PairedDataset(base, Inpainting(), split="val", seed=0)
    assert torch.equal(a[2]["x"], b[2]["x"])
    assert not torch.equal(a[2]["x"][3], a[3]["x"][3])  # different items, different holes


def test_procedural_datamodule_batches_carry_factors():
    dm = ProceduralDataModule(size=32, train_length=16, val_length=4, test_length=4, batch_size=4,
                              task=SuperResolution((4,)))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == batch["y"].shape == (4, 3, 32, 32)
    assert batch["factors"].shape == (4, len(FACTORS))
    val = next(iter(dm.val_dataloader()))
    for i in range(4):
        torch.testing.assert_close(val["y"][i], render_face(val["factors"][i], 32), atol=1e-6, rtol=0)


# -- tasks ----------------------------------------------------------------------------------


def test_task_shapes_and_channels():
    y = render_batch(torch.rand(2, len(FACTORS), generator=torch.Generator().manual_seed(0)), 64)
    for task, nc, lo, hi in [
        (SuperResolution(), 3, -1, 1),
        (Inpainting(), 4, -1, 1),
        (Grayscale(), 1, -1, 1),
        (EdgeSketch(), 1, 0, 1),
        (EdgeSketch("canny"), 1, 0, 1),
    ]:
        x = task(y)
        assert task.input_nc == nc and x.shape == (2, nc, 64, 64), type(task).__name__
        assert lo <= x.min() and x.max() <= hi
        assert task(y[0]).shape == (nc, 64, 64)


def test_bicubic_downsample_matches_psp_kernel():
    # pSp BicubicDownSample(factor=1): taps at -1.5, -0.5, 0.5, 1.5 of the Keys cubic (a = -0.5).
    x = torch.zeros(1, 3, 8, 8)
    x[..., 4, 4] = 1
    out = bicubic_downsample(x, 1)
    taps = torch.tensor([-0.0625, 0.5625, 0.5625, -0.0625])
    # Output row j is centred on input row j + 1/2: the impulse at 4 lands on rows 2..5.
    torch.testing.assert_close(out[0, 0, 2:6, 2:6], torch.outer(taps, taps))
    assert out[0, 0].abs().sum() == pytest.approx(1.25**2)
    const = torch.full((1, 3, 64, 64), 0.3)
    for f in (2, 4, 8, 16):
        torch.testing.assert_close(bicubic_downsample(const, f), torch.full((1, 3, 64 // f, 64 // f), 0.3))


def test_super_resolution_is_quantised_and_blurs_more_with_the_factor():
    y = render_face({}, 64)[None]
    sr = SuperResolution()
    errors = [(sr.degrade(y, f) - y).abs().mean().item() for f in (2, 8, 32)]
    assert errors[0] < errors[1] < errors[2]
    levels = (sr.degrade(y, 4) + 1) * 127.5
    torch.testing.assert_close(levels, levels.round(), atol=1e-3, rtol=0)
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(SuperResolution((4,))(y, generator=g), sr.degrade(y, 4))


def test_inpainting_hole_is_masked_and_sized():
    y = render_face({}, 64)
    x = Inpainting(0.25, 0.5)(y, generator=torch.Generator().manual_seed(1))
    mask = x[3]
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    rows, cols = mask.amax(1).sum(), mask.amax(0).sum()
    assert 16 <= rows <= 32 and 16 <= cols <= 32 and mask.sum() == rows * cols
    assert torch.equal(x[:3], y * (1 - mask))


def test_grayscale_sketch_and_one_hot_values():
    grey = torch.full((3, 8, 8), 0.2)
    torch.testing.assert_close(Grayscale()(grey), torch.full((1, 8, 8), 0.2))
    torch.testing.assert_close(EdgeSketch()(grey), torch.ones(1, 8, 8), atol=1e-4, rtol=0)  # white paper
    labels = torch.randint(5, (2, 1, 8, 8))
    one_hot = OneHotLabels(5)(labels)
    assert one_hot.shape == (2, 5, 8, 8) and OneHotLabels(5).input_nc == 5
    assert torch.equal(one_hot.argmax(1, keepdim=True), labels)
    assert torch.equal(one_hot.sum(1), torch.ones(2, 8, 8))
    assert OneHotLabels(5)(labels[0, 0].float()).shape == (5, 8, 8)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        OneHotLabels(3)(labels)


# -- generator samples ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_g():
    torch.manual_seed(0)
    g = Generator(32, 64, n_mlp=2, channel_max=32).eval()
    for name, p in g.named_parameters():
        if name.endswith("noise.weight"):
            p.data.fill_(0.5)  # trained generators use their noise inputs; fresh ones start at 0
    return g


def test_sampled_images_are_g_of_their_latents(tiny_g):
    data = GeneratorSampledDataset(tiny_g, 6, seed=0, batch_size=4)
    item = data[1]
    assert item["ws"].shape == (tiny_g.n_latent, 64) and item["y"].shape == (3, 32, 32)
    assert torch.equal(item["ws"], item["ws"][:1].expand_as(item["ws"]))  # one w for every layer
    with torch.no_grad():
        img = tiny_g.synthesis(item["ws"][None], "const").clamp(-1, 1)[0]
    torch.testing.assert_close(item["y"], img, atol=1e-5, rtol=0)
    assert torch.equal(item["x"], item["y"])
    again = GeneratorSampledDataset(tiny_g, 6, seed=0, batch_size=4)
    assert torch.equal(again[1]["ws"], item["ws"])
    batch = data.__getitems__([0, 1, 5])
    torch.testing.assert_close(batch[1]["y"], item["y"], atol=1e-5, rtol=0)
    assert not torch.equal(batch[0]["ws"], batch[2]["ws"])
    assert not torch.equal(GeneratorSampledDataset(tiny_g, 6, seed=1)[1]["ws"], item["ws"])
    with pytest.raises(IndexError):
        data[6]


def test_sampled_truncation_and_random_noise(tiny_g):
    tiny_g.latent_avg = None
    center = tiny_g.mean_latent(4096, seed=0)
    zero = GeneratorSampledDataset(tiny_g, 3, truncation=0.0)
    for i in range(3):
        torch.testing.assert_close(zero[i]["ws"][0], center[0])
    half = GeneratorSampledDataset(tiny_g, 3, truncation=0.5)[0]["ws"][0]
    full = GeneratorSampledDataset(tiny_g, 3)[0]["ws"][0]
    torch.testing.assert_close(half, center[0] + 0.5 * (full - center[0]), atol=1e-5, rtol=1e-5)
    noisy = GeneratorSampledDataset(tiny_g, 3, noise_mode="random")
    assert torch.equal(noisy[2]["y"], noisy[2]["y"])
    assert not torch.equal(noisy[2]["y"], GeneratorSampledDataset(tiny_g, 3)[2]["y"])


def test_procedural_cli_writes_a_face_folder_and_a_grid(tmp_path):
    """``python -m ganinv.data.procedural --folder DIR``: face_<i>.png equal to the dataset's items
    (8-bit rounding), from the split asked for; the grid holds the same faces."""
    from ganinv.data.procedural import main

    main(["--folder", str(tmp_path / "faces"), "--grid", str(tmp_path / "grid.png"), "--n", "4", "--size", "32",
          "--split", "test"])
    data = ProceduralFaces(4, 32, 0, split="test")
    names = sorted(p.name for p in (tmp_path / "faces").iterdir())
    assert names == [f"face_{i:03d}.png" for i in range(4)]
    for i, name in enumerate(names):
        written = load_image(tmp_path / "faces" / name, 32)
        assert (written - data[i][0].clamp(-1, 1)).abs().max() <= 1 / 127.5 + 1e-6
    grid = load_image(tmp_path / "grid.png", 64)
    assert torch.allclose(grid[:, :32, :32], load_image(tmp_path / "faces" / "face_000.png", 32), atol=1e-6)
    assert not torch.allclose(data[0][0], ProceduralFaces(4, 32, 0, split="train")[0][0])
    with pytest.raises(SystemExit):
        main(["--n", "2"])
