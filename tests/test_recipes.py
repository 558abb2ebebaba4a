"""Every official pSp / e4e training recipe (conf/experiment/<method>_<dataset_type>.yaml): its
values equal the official README command's options, and it trains 3 steps on procedural faces
(written to an image folder: the recipes' data=folder layout) with a tiny random generator.

Offline the ID / MoCo similarity nets (pretrained weights) are switched off and LPIPS runs on the
embedded loss (loss=embedded); the segmentation recipe gets stand-in label maps (LuminanceLabels).
"""
import csv
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import compose_config
from PIL import Image

from ganinv.checkpoints import load_inverter
from ganinv.data.images import save_image
from ganinv.data.procedural import ProceduralFaces
from ganinv.methods.encoder import cars_crop
from ganinv.methods.psp import PSP
from ganinv.nets.psp_encoders import GradualStyleEncoder
from ganinv.nets.stylegan2 import Generator
from ganinv.runner import train

# Official values per recipe, keyed by our config path, from the README commands (pSp
# eladrich/pixel2style2pixel README "Training"; e4e omertov/encoder4editing README "Training"
# and issue #43 for FFHQ) and the official option defaults (options/train_options.py).
PSP_BASE = {
    "data.batch_size": 8, "data.num_workers": 8, "data.size": 256, "trainer.val_check_interval": 2500,
    "callbacks.model_checkpoint.every_n_train_steps": 5000, "trainer.max_steps": 500000,
    "method.module.encoder._target_": "ganinv.nets.psp_encoders.GradualStyleEncoder",
    "method.module.start_from_latent_avg": True, "method.module.optimizer": "ranger", "method.module.lr": 1e-4,
    "method.module.lpips_lambda": 0.8, "method.module.l2_lambda": 1.0, "method.module.id_lambda": 0.1,
    "method.module.w_norm_lambda": 0.0, "method.module.lpips_lambda_crop": 0.0,
    "method.module.l2_lambda_crop": 0.0, "method.module.moco_lambda": 0.0,
    "method.module.encoder.input_nc": 3, "method.module.label_nc": 0,
    "method.module.export_opts.test_batch_size": 8, "method.module.export_opts.test_workers": 8,
}
E4E_BASE = {
    "data.batch_size": 8, "data.num_workers": 8, "data.size": 256, "trainer.val_check_interval": 10000,
    "trainer.max_steps": 300000, "method.module.encoder._target_": "ganinv.nets.e4e_encoder.Encoder4Editing",
    "method.module.start_from_latent_avg": True, "method.module.w_discriminator_lambda": 0.1,
    "method.module.w_pool_size": 50, "method.module.progressive_start": 20000,
    "method.module.progressive_step_every": 2000, "method.module.id_lambda": 0.1, "method.module.moco_lambda": 0.0,
    "method.module.lpips_lambda": 0.8, "method.module.l2_lambda": 1.0, "method.module.lr": 1e-4,
    "method.module.w_discriminator_lr": 2e-5, "method.module.r1": 10.0, "method.module.d_reg_every": 16,
    "method.module.delta_norm": 2, "method.module.delta_norm_lambda": 2e-4,
    "method.module.export_opts.test_batch_size": 4, "method.module.export_opts.test_workers": 4,
}
NONFACE = {"method.module.id_lambda": 0.0, "method.module.moco_lambda": 0.5, "trainer.max_steps": 200000}
RECIPES = {
    "psp_ffhq_encode": {**PSP_BASE, "method.module.dataset_type": "ffhq_encode"},
    "psp_ffhq_frontalize": {**PSP_BASE, "method.module.dataset_type": "ffhq_frontalize",
                            "method.module.lpips_lambda": 0.08, "method.module.l2_lambda": 0.001,
                            "method.module.lpips_lambda_crop": 0.8, "method.module.l2_lambda_crop": 0.01,
                            "method.module.id_lambda": 1.0, "method.module.w_norm_lambda": 0.005,
                            "data.task._target_": "ganinv.data.tasks.HorizontalFlip", "data.task.p": 0.5},
    "psp_celebs_sketch_to_face": {**PSP_BASE, "method.module.dataset_type": "celebs_sketch_to_face",
                                  "method.module.id_lambda": 0.0, "method.module.w_norm_lambda": 0.005,
                                  "method.module.encoder.input_nc": 1, "method.module.label_nc": 1,
                                  "data.flip": False, "data.task._target_": "ganinv.data.tasks.EdgeSketch"},
    "psp_celebs_seg_to_face": {**PSP_BASE, "method.module.dataset_type": "celebs_seg_to_face",
                               "method.module.id_lambda": 0.0, "method.module.w_norm_lambda": 0.005,
                               "method.module.encoder.input_nc": 19, "method.module.label_nc": 19,
                               "data.flip": False, "data.task._target_": "ganinv.data.tasks.OneHotLabels",
                               "data.task.label_nc": 19},
    "psp_celebs_super_resolution": {**PSP_BASE, "method.module.dataset_type": "celebs_super_resolution",
                                    "method.module.id_lambda": 0.1, "method.module.w_norm_lambda": 0.005,
                                    "data.flip": False, "data.task.factors": [1, 2, 4, 8, 16, 32],
                                    "method.module.export_opts.resize_factors": "1,2,4,8,16,32"},
    "psp_toonify": {**PSP_BASE, "method.module.dataset_type": "ffhq_encode", "method.module.id_lambda": 1.0,
                    "method.module.w_norm_lambda": 0.025, "trainer.max_steps": 6000},
    "e4e_ffhq_encode": {**E4E_BASE, "method.module.dataset_type": "ffhq_encode"},
    "e4e_cars_encode": {**E4E_BASE, **NONFACE, "method.module.dataset_type": "cars_encode",
                        "data.size": [192, 256]},
    "e4e_church_encode": {**E4E_BASE, **NONFACE, "method.module.dataset_type": "church_encode"},
    "e4e_horse_encode": {**E4E_BASE, **NONFACE, "method.module.dataset_type": "horse_encode"},
}
ROOT = Path(__file__).resolve().parent.parent


def test_every_recipe_has_a_config():
    files = {p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")}
    assert set(RECIPES) <= files


def _get(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return list(node) if hasattr(node, "__len__") and not isinstance(node, str) else node


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_values_equal_the_official_command(tmp_path, recipe):
    cfg = compose_config("train", [f"+method={recipe.split('_')[0]}", f"+experiment={recipe}"], tmp_path)
    for key, official in RECIPES[recipe].items():
        assert _get(cfg, key) == official, key
    # the official data layout and generator: image folders and a generator file the user names
    assert cfg.data._target_ == "ganinv.data.folder.ImageDataModule"
    assert cfg.generator._target_ == "ganinv.checkpoints.load_generator"
    assert cfg.trainer.precision == 32 and cfg.trainer.accelerator == "gpu"


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """8 procedural faces at 32 px as PNG files: an image folder for the recipes' data=folder."""
    folder = tmp_path_factory.mktemp("faces")
    data = ProceduralFaces(8, 32, seed=0, split="train")
    for i in range(len(data)):
        save_image(data[i][0], folder / f"{i:02d}.png")
    return folder


def tiny_run(recipe, faces, out, *extra):
    """The recipe on the tiny random generator, 3 steps, image grids every step, validation at step 3."""
    overrides = [
        f"+method={recipe.split('_')[0]}", f"+experiment={recipe}", "generator=random", "loss=embedded",
        "trainer=cpu", "logger=csv", f"data.root={faces}", "data.split=[0.5,0.5,0]", "data.batch_size=2",
        "data.num_workers=0", "data.size=32", "trainer.max_steps=3", "trainer.val_check_interval=3",
        "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1", "+trainer.enable_progress_bar=false",
        "callbacks.model_checkpoint.every_n_train_steps=3", "method.module.id_lambda=0",
        "method.module.moco_lambda=0", "method.module.image_every=1",
    ]
    if recipe.startswith("e4e"):  # stages 0, 1, 2 within the 3 steps
        overrides += ["method.module.progressive_start=1", "method.module.progressive_step_every=1"]
    if recipe == "e4e_cars_encode":
        # the official 192x256 at 1/4 from a 64 px generator (the trunk needs >= 32 rows)
        overrides += ["data.size=[48,64]", "generator.size=64", "encoder.input_size=64"]
    # factor 32 needs >= 64 px (reflect padding of 48); LPIPS-alex on the face crop needs > 32 px
    if recipe in ("psp_celebs_super_resolution", "psp_ffhq_frontalize"):
        overrides += ["data.size=64", "generator.size=64", "encoder.input_size=64"]
    if recipe == "psp_celebs_seg_to_face":
        overrides += ["data.task._target_=ganinv.data.tasks.LuminanceLabels"]
    cfg = compose_config("train", overrides + list(extra), out)
    return cfg, train(cfg)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_trains_three_steps(faces, tmp_path, recipe):
    cfg, trainer = tiny_run(recipe, faces, tmp_path)
    assert trainer.global_step == 3
    export = torch.load(tmp_path / "export" / f"{cfg.method.name}.pt", weights_only=False)
    assert export["opts"]["dataset_type"] == RECIPES[recipe]["method.module.dataset_type"]
    assert export["opts"]["input_nc"] == RECIPES[recipe].get("method.module.encoder.input_nc", 3)
    # input | recon | target grids at steps 0-2 and at validation, 3-channel, also for 1- and 19-channel inputs
    grids = sorted(p.name for p in (tmp_path / "images").glob("*.png"))
    first = 1 if recipe.startswith("e4e") else 0  # e4e logs after its (manual) encoder step
    assert grids == [f"train_input_recon_target_{s:07d}.png" for s in range(first, first + 3)] + [
        "val_input_recon_target_0000003.png"]
    h, w = {"e4e_cars_encode": (48, 64), "psp_celebs_super_resolution": (64, 64),
            "psp_ffhq_frontalize": (64, 64)}.get(recipe, (32, 32))
    with Image.open(tmp_path / "images" / grids[0]) as grid:
        assert grid.mode == "RGB"
        assert grid.size == (3 * w + 4 * 2, 2 * h + 3 * 2)  # make_grid: 3 columns, 2 rows, padding 2
    if recipe.startswith("e4e"):  # progressive stages 0, 1, 2 (progressive_start=1, a stage every step)
        rows = csv.DictReader(open(tmp_path / "csv" / "metrics.csv"))
        assert [float(r["train/stage"]) for r in rows if r.get("train/stage")] == [0.0, 1.0, 2.0]


def test_cars_crop_equals_the_official_indexing():
    """e4e training/coach.py forward: ``y_hat[:, :, 32:224, :]`` of the 256x256 face_pool output."""
    y256 = torch.randn(2, 3, 256, 256)
    assert torch.equal(cars_crop(y256), y256[:, :, 32:224, :])
    # the method: a 512 px generator's output pooled to 256x256 (pSp's face_pool), then cropped
    g = Generator(size=64, style_dim=64, n_mlp=1, channel_multiplier=1, channel_max=16)
    enc = GradualStyleEncoder(18, "ir_se", n_styles=g.n_latent, input_size=32, head_channels=16)
    model = PSP(g, enc, lpips_lambda=0, dataset_type="cars_encode")
    codes = g.mapping(torch.randn(2, 64))[:, None].expand(-1, g.n_latent, -1)
    img = g.synthesis(codes, noise_mode="const")                     # [2, 3, 64, 64]
    official = F.adaptive_avg_pool2d(img, (32, 32))[:, :, 32 * 32 // 256:224 * 32 // 256, :]
    out = model.decode(codes, size=(24, 32))
    assert out.shape == (2, 3, 24, 32)
    assert torch.equal(out, official)
    # full size: the 256-wide target of the official, rows 32:224 exactly
    g256 = torch.randn(1, 3, 512, 512)
    assert torch.equal(cars_crop(F.adaptive_avg_pool2d(g256, (256, 256))),
                       F.adaptive_avg_pool2d(g256, (256, 256))[:, :, 32:224, :])
    other = PSP(g, enc, lpips_lambda=0, dataset_type="ffhq_encode").decode(codes, size=(32, 32))
    assert torch.equal(other, F.adaptive_avg_pool2d(img, (32, 32)))


def test_learn_in_w_encoder_trains_exports_and_loads(faces, tmp_path):
    """pSp --learn_in_w (--encoder_type BackboneEncoderUsingLastLayerIntoW): one w per image,
    broadcast to every layer; exported with learn_in_w and a [1, 512] latent_avg, as pSp saves it."""
    target = "ganinv.nets.psp_encoders.BackboneEncoderUsingLastLayerIntoW"
    cfg, trainer = tiny_run("psp_ffhq_encode", faces, tmp_path, f"method.module.encoder._target_={target}",
                            "method.module.w_norm_lambda=0.005")
    assert trainer.global_step == 3
    path = tmp_path / "export" / "psp.pt"
    export = torch.load(path, weights_only=False)
    assert export["opts"]["learn_in_w"] is True
    assert export["opts"]["encoder_type"] == "BackboneEncoderUsingLastLayerIntoW"
    assert export["latent_avg"].shape == (1, 512)
    module = trainer.lightning_module
    assert torch.equal(export["latent_avg"][0], module.latent_avg[0])
    inv = load_inverter(path, input_size=32)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    ws = inv.encode(x)
    assert ws.shape == (2, module.generator.n_latent, 512)
    assert torch.allclose(ws, ws[:, :1].expand_as(ws))  # one w on every layer
    with torch.no_grad():
        module.eval()
        assert torch.allclose(ws, module.encode(x), atol=1e-5)
    assert math.isclose(float(export["opts"]["w_norm_lambda"]), 0.005)
