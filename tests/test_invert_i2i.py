"""invert.py with image-to-image pSp checkpoints (issue 15 item 6) and paired source folders.

A sketch and a segmentation pSp checkpoint are exported from 3-step runs of the official recipes
(psp_celebs_sketch_to_face, psp_celebs_seg_to_face; the tiny random generator of tests/test_recipes.py,
32 px, 8 W+ rows); the segmentation run reads real label-map folders through data.train_source_dir.
Folders of 1-channel sketches and integer label-map PNGs then go through invert.py (subprocess) with
the official inference transforms (pSp configs/transforms_config.py), style-mixing multimodal outputs
(pSp scripts/style_mixing.py), couple_outputs and resize_outputs (pSp scripts/inference.py).
"""
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import compose_config
from PIL import Image

from ganinv.checkpoints import load_inverter
from ganinv.checkpoints.inverter import Inverter
from ganinv.data.folder import ImageDataModule, ImageFolder, PairedDataset
from ganinv.data.images import load_image, save_image
from ganinv.data.procedural import ProceduralFaces
from ganinv.data.tasks import EdgeSketch, LuminanceLabels, OneHotLabels, SuperResolution
from ganinv.invert.inputs import InputTransform
from ganinv.nets.psp_encoders import GradualStyleEncoder
from ganinv.nets.stylegan2 import Generator
from ganinv.runner import train

ROOT = Path(__file__).resolve().parent.parent
MASK = [4, 5, 6, 7]  # the fine rows of the 8-row 32 px generator


def run_invert(*overrides, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "invert.py"), *overrides], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


def labels_of(face, label_nc=19):
    """A stand-in integer label map [H, W] from a face (LuminanceLabels' classes)."""
    return LuminanceLabels(label_nc)(face).argmax(0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 procedural faces (32 px) with paired label maps (same relative paths) and 1-channel sketches."""
    root = tmp_path_factory.mktemp("i2i")
    faces = ProceduralFaces(8, 32, seed=0, split="train")
    for i in range(len(faces)):
        face = faces[i][0]
        sub = "a" if i < 4 else "b"
        save_image(face, root / "faces" / sub / f"{i:02d}.png")
        (root / "labels" / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(labels_of(face).numpy().astype(np.uint8), "L").save(root / "labels" / sub / f"{i:02d}.png")
        sketch = EdgeSketch()(face)
        save_image(sketch * 2 - 1, root / "sketches" / sub / f"{i:02d}.png")  # mode 'L' files
    yield root
    shutil.rmtree(root, ignore_errors=True)


def export(recipe, data, out, *extra):
    overrides = [
        "+method=psp", f"+experiment={recipe}", "generator=random", "loss=embedded", "trainer=cpu", "logger=csv",
        "data.batch_size=2", "data.num_workers=0", "data.size=32", "trainer.max_steps=3",
        "trainer.val_check_interval=3", "trainer.limit_val_batches=1", "+trainer.enable_progress_bar=false",
        "callbacks.model_checkpoint.every_n_train_steps=3", "method.module.id_lambda=0", *extra,
    ]
    cfg = compose_config("train", overrides, out)
    assert train(cfg).global_step == 3
    return out / "export" / "psp.pt"


@pytest.fixture(scope="module")
def checkpoints(data, tmp_path_factory):
    runs = tmp_path_factory.mktemp("sketch_run"), tmp_path_factory.mktemp("seg_run")
    sketch = export("psp_celebs_sketch_to_face", data, runs[0],
                    f"data.root={data / 'faces'}", "data.split=[0.5,0.5,0]")
    # segmentation -> face on real label-map folders, paired by relative path
    seg = export("psp_celebs_seg_to_face", data, runs[1],
                 f"data.train_dir={data / 'faces'}", f"data.val_dir={data / 'faces'}",
                 f"data.train_source_dir={data / 'labels'}", f"data.val_source_dir={data / 'labels'}")
    yield {"sketch": sketch, "seg": seg}
    for run in runs:  # ~0.5 GB of checkpoints each: CI's disk is small
        shutil.rmtree(run, ignore_errors=True)


def png(path):
    with Image.open(path) as img:
        return img.mode, img.size, np.array(img)


def test_sketch_folder_inverts_with_multimodal_outputs(data, checkpoints, tmp_path):
    opts = torch.load(checkpoints["sketch"], weights_only=False)["opts"]
    assert (opts["dataset_type"], opts["input_nc"], opts["label_nc"]) == ("celebs_sketch_to_face", 1, 1)
    out = tmp_path / "out"
    r = run_invert(f"input={data / 'sketches'}", f"output={out}", f"method={checkpoints['sketch']}",
                   "n_outputs=3", "latent_mask='4,5,6,7'", "couple_outputs=true", "seed=3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "8 inverted" in r.stdout
    keys = [f"{'a' if i < 4 else 'b'}/{i:02d}" for i in range(8)]
    inv = load_inverter(checkpoints["sketch"])
    transform = InputTransform(inv, None, "sketch")
    assert transform.kind == "sketch"
    for key in keys:
        mode, size, _ = png(out / "reconstructions" / f"{key}.png")
        assert (mode, size) == ("RGB", (32, 32))
        # the official SketchToImageTransforms input: convert('L'), ToTensor ([0, 1], 1 channel)
        x = transform.load(data / "sketches" / f"{key}.png").x
        official = torch.from_numpy(png(data / "sketches" / f"{key}.png")[2].astype(np.float32))[None] / 255
        assert x.shape == (1, 32, 32) and torch.allclose(x, official)
        w = torch.load(out / "latents" / f"{key}.pt")
        with torch.no_grad():
            assert torch.allclose(w, inv.encode(x[None])[0], atol=1e-5)
        codes = torch.load(out / "multimodal" / f"{key}.pt")
        assert codes.shape == (3, 8, 512)
        assert np.array_equal(np.load(out / "multimodal" / f"{key}.npy"), codes.numpy())
        keep = [r for r in range(8) if r not in MASK]
        assert torch.equal(codes[:, keep], w[keep].expand(3, -1, -1))  # rows outside latent_mask: the image's
        for j in range(3):  # masked rows: one random w each, broadcast, different per output
            assert torch.equal(codes[j, MASK], codes[j, MASK[0]].expand(len(MASK), -1))
            assert not torch.allclose(codes[j, MASK], w[MASK])
        assert not torch.allclose(codes[0, MASK], codes[1, MASK])
        mode, size, strip = png(out / "multimodal" / f"{key}.png")  # input | 3 outputs
        assert size == (4 * 32, 32)
        panels = [strip[:, 32 * k:32 * (k + 1)].astype(int) for k in range(1, 4)]
        assert np.abs(panels[0] - panels[1]).max() > 0 and np.abs(panels[1] - panels[2]).max() > 0
        mode, size, couple = png(out / "couples" / f"{key}.png")  # input | output
        assert size == (2 * 32, 32)
        assert np.array_equal(couple[:, 32:], png(out / "reconstructions" / f"{key}.png")[2])
        assert np.abs(couple[:, :32, 0].astype(int) - np.rint(official[0].numpy() * 255)).max() <= 1
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert sorted(r["image"] for r in rows) == keys
    assert all(r["mse"] == "" and r["ssim"] == "" for r in rows)  # no RGB target for a sketch
    # seeded by (seed, key): another run in other batches draws the same z for every image; another seed not
    again = tmp_path / "again"
    r = run_invert(f"input={data / 'sketches'}", f"output={again}", f"method={checkpoints['sketch']}",
                   "n_outputs=3", "latent_mask=[4,5,6,7]", "seed=3", "batch_size=3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for key in keys:
        first, second = torch.load(out / "multimodal" / f"{key}.pt"), torch.load(again / "multimodal" / f"{key}.pt")
        assert torch.equal(first[:, MASK], second[:, MASK])  # the same z draws
        assert torch.allclose(first, second, atol=1e-5)  # the encoder's rows (batch-size rounding aside)
    assert not (again / "couples").exists()


def test_label_maps_invert_as_one_hot(data, checkpoints, tmp_path):
    opts = torch.load(checkpoints["seg"], weights_only=False)["opts"]
    assert (opts["dataset_type"], opts["input_nc"], opts["label_nc"]) == ("celebs_seg_to_face", 19, 19)
    inputs = tmp_path / "maps"
    inputs.mkdir()
    faces = ProceduralFaces(2, 48, seed=5, split="test")
    maps = [labels_of(faces[i][0]) for i in range(2)]
    for i, labels in enumerate(maps):
        Image.fromarray(labels.numpy().astype(np.uint8), "L").save(inputs / f"m{i}.png")
    Image.fromarray(np.full((48, 48), 25, np.uint8), "L").save(inputs / "bad.png")  # class 25 >= label_nc
    out = tmp_path / "out"
    r = run_invert(f"input={inputs}", f"output={out}", f"method={checkpoints['seg']}", "couple_outputs=true",
                   "resize_outputs=true", "n_outputs=2", "latent_mask='6,7'", "mix_alpha=0.5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "2 inverted" in r.stdout and "1 unreadable" in r.stdout and "bad.png: label 25" in r.stdout
    inv = load_inverter(checkpoints["seg"])
    for i, labels in enumerate(maps):
        mode, size, _ = png(out / "reconstructions" / f"m{i}.png")
        assert (mode, size) == ("RGB", (256, 256))  # resize_outputs: the official 256 px
        # one-hot of the nearest-resized class indices (48 -> 32: every 1.5th pixel, no blending)
        x = InputTransform(inv, None, "seg").load(inputs / f"m{i}.png").x
        near = F.interpolate(labels[None, None].float(), size=(32, 32), mode="nearest")[0, 0].long()
        assert torch.equal(x, F.one_hot(near, 19).permute(2, 0, 1).float())
        w = torch.load(out / "latents" / f"m{i}.pt")
        with torch.no_grad():
            assert torch.allclose(w, inv.encode(x[None])[0], atol=1e-5)
        codes = torch.load(out / "multimodal" / f"m{i}.pt")
        assert codes.shape == (2, 8, 512)
        assert torch.equal(codes[:, :6], w[:6].expand(2, -1, -1))
        # mix_alpha 0.5: halfway between the image's rows and the random w
        injected = 2 * codes[:, 6:] - w[6:]
        assert torch.allclose(injected[:, 0], injected[:, 1], atol=1e-5)
        assert not torch.allclose(codes[0, 6:], codes[1, 6:])
        assert png(out / "multimodal" / f"m{i}.png")[1] == (3 * 256, 256)
        assert png(out / "couples" / f"m{i}.png")[1] == (2 * 256, 256)
    assert not (out / "reconstructions" / "bad.png").exists()


def test_paired_source_folder_pairs_by_path_and_refuses_a_count_mismatch(data, tmp_path):
    faces = ImageFolder(data / "faces", 32)
    paired = PairedDataset(faces, OneHotLabels(19), "val", 0, source=data / "labels")
    assert len(paired) == 8
    for i in (0, 5):
        item = paired[i]
        labels = torch.from_numpy(png(sorted((data / "labels").rglob("*.png"))[i])[2].astype(np.int64))
        assert torch.equal(item["x"], F.one_hot(labels, 19).permute(2, 0, 1).float())
        assert torch.equal(item["y"], faces[i])
    # sketches: one channel in [0, 1], as the official source transform (Resize, ToTensor)
    sketches = PairedDataset(faces, EdgeSketch(), "train", 0, source=data / "sketches")
    gray = png(data / "sketches" / "b" / "06.png")[2].astype(np.float32) / 255
    assert torch.allclose(sketches[6]["x"], torch.from_numpy(gray)[None], atol=1e-6)
    # the data module: train_source_dir with train_dir
    module = ImageDataModule(train_dir=str(data / "faces"), train_source_dir=str(data / "labels"), size=32,
                             task=OneHotLabels(19), batch_size=2, num_workers=0)
    module.setup()
    assert module.datasets["train"][3]["x"].shape == (19, 32, 32)
    short = tmp_path / "short"
    for path in sorted((data / "labels").rglob("*.png"))[:7]:
        (short / path.parent.name).mkdir(parents=True, exist_ok=True)
        (short / path.parent.name / path.name).write_bytes(path.read_bytes())
    with pytest.raises(ValueError) as e:
        PairedDataset(faces, OneHotLabels(19), source=short)
    message = str(e.value)
    assert "\n" not in message and str(short) in message and str(data / "faces") in message
    assert "7 images" in message and "has 8" in message
    with pytest.raises(ValueError, match="train_source_dir"):
        ImageDataModule(root=str(data / "faces"), train_source_dir=str(data / "labels"))


def test_super_resolution_input_is_the_official_down_then_up_sampling(data, tmp_path):
    """SuperResTransforms transform_inference: Resize(256), BilinearResize([factor]), Resize(256), Normalize;
    one factor at inference (scripts/inference.py asserts it), from resize_factors= or the checkpoint's."""
    g = Generator(size=32, style_dim=512, n_mlp=2, channel_max=32)
    enc = GradualStyleEncoder(18, "ir_se", n_styles=g.n_latent, input_size=32, head_channels=16)
    opts = {"dataset_type": "celebs_super_resolution", "resize_factors": "1,2,4,8"}
    inv = Inverter(enc, g, input_size=(32, 32), opts=opts)
    path = data / "faces" / "a" / "01.png"
    item = InputTransform(inv, 4, "sr.pt").load(path)
    y = load_image(path, 32)
    assert torch.equal(item.target, y)
    assert torch.equal(item.x, SuperResolution((4,)).degrade(y[None], 4)[0])
    assert (item.x - y).abs().max() > 0.05 and item.x.shape == (3, 32, 32)
    with pytest.raises(ValueError, match=r"resize_factors=1,2,4,8: sr.pt .* choose one downsampling factor"):
        InputTransform(inv, None, "sr.pt")
    inv.opts["resize_factors"] = "2"
    assert InputTransform(inv, None, "sr.pt").factor == 2
