"""export/<method>.pt carries every ``opts`` key the official pSp / e4e / ReStyle loaders and
inference scripts read from a checkpoint, with the recipe's values, and ganinv's own loader
still reads it. Exports come from 3-step runs of official recipes (tests/test_recipes.py)."""
import math
import shutil
from argparse import Namespace

import pytest
import torch
from test_recipes import faces, tiny_run  # noqa: F401 (faces: the image-folder fixture)

from ganinv.checkpoints import load_inverter

# key -> the official files that read it from ckpt['opts'] (eladrich/pixel2style2pixel,
# omertov/encoder4editing, yuval-alaluf/restyle-encoder at their stored heads).
OFFICIAL_OPTS = {
    "dataset_type": "pSp scripts/inference.py + style_mixing.py (data_configs.DATASETS[opts.dataset_type]); "
                    "e4e scripts/inference.py (is_cars), metrics/LEC.py; ReStyle models/psp.py, models/e4e.py, "
                    "scripts/inference_iterative.py, utils/inference_utils.py",
    "encoder_type": "pSp models/psp.py set_encoder; e4e models/psp.py set_encoder; ReStyle models/psp.py, "
                    "models/e4e.py, scripts/inference_iterative.py (ENCODER_TYPES, utils/model_utils.py)",
    "input_nc": "pSp models/encoders/psp_encoders.py; ReStyle models/encoders/*.py, models/psp.py",
    "label_nc": "pSp models/psp.py load_weights, datasets/inference_dataset.py, utils/common.py "
                "log_input_image, configs/transforms_config.py (ToOneHot)",
    "output_size": "pSp models/psp.py (Generator size, n_styles), scripts/inference.py (resize_amount); "
                   "ReStyle models/psp.py, models/e4e.py, scripts/inference_iterative.py",
    "stylegan_size": "e4e models/psp.py (Generator size), models/encoders/psp_encoders.py (log_size)",
    "n_styles": "pSp models/encoders/psp_encoders.py (style_count; models/psp.py recomputes it)",
    "start_from_latent_avg": "pSp models/psp.py forward; e4e models/psp.py forward, scripts/inference.py, "
                             "metrics/LEC.py",
    "learn_in_w": "pSp models/psp.py forward and load_weights (scripts/inference.py defaults it to False)",
    "resize_factors": "pSp configs/transforms_config.py SuperResTransforms, scripts/inference.py",
    "checkpoint_path": "pSp/e4e/ReStyle models/psp.py load_weights (e4e utils/model_utils.setup_model sets it)",
    "stylegan_weights": "pSp/e4e/ReStyle models/psp.py load_weights (read when checkpoint_path is None)",
    "device": "pSp/e4e models/psp.py __load_latent_avg (e4e setup_model sets it; pSp inference does not)",
    "test_batch_size": "pSp scripts/inference.py, ReStyle scripts/inference_iterative.py (DataLoader)",
    "test_workers": "pSp scripts/inference.py, ReStyle scripts/inference_iterative.py (DataLoader)",
}
# Read by the official scripts too, but always given by their TestOptions on the command line
# (opts.update(vars(test_opts))), so a checkpoint need not carry them.
TEST_TIME_ONLY = ("exp_dir", "data_path", "couple_outputs", "resize_outputs", "n_images", "latent_mask",
                  "mix_alpha", "n_outputs_to_generate", "n_iters_per_batch")


@pytest.fixture(scope="module")
def exports(faces, tmp_path_factory):  # noqa: F811
    """{recipe: (export path, composed config)} from 3-step runs: a 1-channel pSp recipe and e4e."""
    out = {}
    for recipe in ("psp_celebs_sketch_to_face", "e4e_ffhq_encode"):
        run_dir = tmp_path_factory.mktemp(recipe)
        cfg, trainer = tiny_run(recipe, faces, run_dir)
        assert trainer.global_step == 3
        out[recipe] = (run_dir / "export" / f"{cfg.method.name}.pt", cfg)
    yield out
    for path, _ in out.values():
        shutil.rmtree(path.parent.parent, ignore_errors=True)


@pytest.mark.parametrize("recipe", ["psp_celebs_sketch_to_face", "e4e_ffhq_encode"])
def test_export_carries_every_official_opts_key(exports, recipe):
    path, cfg = exports[recipe]
    ckpt = torch.load(path, weights_only=False)
    opts = ckpt["opts"]
    assert set(OFFICIAL_OPTS) <= set(opts), sorted(set(OFFICIAL_OPTS) - set(opts))
    assert not set(TEST_TIME_ONLY) & set(opts)
    g = cfg.generator.size
    psp = recipe.startswith("psp")
    expected = {
        "dataset_type": "celebs_sketch_to_face" if psp else "ffhq_encode",
        "encoder_type": "GradualStyleEncoder" if psp else "Encoder4Editing",
        "input_nc": 1 if psp else 3, "label_nc": 1 if psp else 0, "output_size": g, "stylegan_size": g,
        "n_styles": 2 * int(math.log2(g)) - 2, "start_from_latent_avg": True, "learn_in_w": False,
        "resize_factors": None, "checkpoint_path": None, "stylegan_weights": None, "device": "cuda:0",
        "test_batch_size": 8 if psp else 4, "test_workers": 8 if psp else 4,
    }
    assert {k: opts[k] for k in expected} == expected
    # what the official code computes from them
    o = Namespace(**opts)
    assert int(math.log(o.output_size, 2)) * 2 - 2 == o.n_styles  # pSp models/psp.py
    assert ckpt["latent_avg"].shape == (o.n_styles, 512)           # repeated as pSp saves it
    # ganinv's loader reads the export: same codes as the trained module's encoder
    inv = load_inverter(path)
    assert inv.opts["dataset_type"] == expected["dataset_type"]
    x = torch.rand(2, expected["input_nc"], 32, 32)
    assert inv.encode(x).shape == (2, o.n_styles, 512)


def test_super_resolution_factors_are_the_official_string(tmp_path):
    """pSp transforms_config: ``[int(f) for f in opts.resize_factors.split(",")]``."""
    from conftest import compose_config

    cfg = compose_config("train", ["+method=psp", "+experiment=psp_celebs_super_resolution"], tmp_path)
    factors = cfg.method.module.export_opts.resize_factors
    assert [int(f) for f in factors.split(",")] == list(cfg.data.task.factors) == [1, 2, 4, 8, 16, 32]


def test_export_opts_cannot_override_model_keys(tmp_path):
    from ganinv.methods.psp import PSP
    from ganinv.nets.psp_encoders import GradualStyleEncoder
    from ganinv.nets.stylegan2 import Generator

    g = Generator(size=32, style_dim=64, n_mlp=1, channel_multiplier=1, channel_max=16)
    enc = GradualStyleEncoder(18, "ir_se", n_styles=g.n_latent, input_size=32, head_channels=16)
    with pytest.raises(ValueError, match=r"^method.export_opts.input_nc: set from the model"):
        PSP(g, enc, lpips_lambda=0, export_opts={"input_nc": 3})
