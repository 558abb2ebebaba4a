"""Latent regression (pbaylies/stylegan-encoder train_resnet.py): the TreeConnect head's official
shapes, the G(w) -> w pairs, training on a tiny random generator (32 px, style_dim 64) until the
encoder beats predict-the-mean on held-out pairs, and the hybrid: W+ optimisation started from the
encoder reaches the mean start's final MSE in fewer steps."""
import math

import pytest
import pytorch_lightning as pl
import torch
from conftest import compose_config, noisy_generator
from torch.utils.data import DataLoader
from torchvision.models.resnet import BasicBlock, ResNet

from ganinv.checkpoints.inverter import Inverter
from ganinv.checkpoints.safe import load_torch
from ganinv.data.sampled import GeneratorSampledDataset
from ganinv.methods.latent_regression import LatentRegression, log_cosh, pair_indices
from ganinv.methods.optimization import OptimizationInversion
from ganinv.methods.targets import w_statistics
from ganinv.nets.regression_encoder import RegressionEncoder, regression_encoder_kwargs, tree_shape
from ganinv.runner import train

pytestmark = pytest.mark.usefixtures("module_one_thread")


@pytest.fixture(scope="module")
def g():
    return noisy_generator(latent_avg=True)


def regression(g, **kw):
    torch.manual_seed(0)
    encoder = RegressionEncoder(g.n_latent, g.style_dim, trunk="resnet10", input_size=32)
    return LatentRegression(g, encoder, image_every=0, **kw)


def fit(module, steps):
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=DataLoader(range(steps)))  # batches only clock the steps
    return module.eval()


def test_official_head_shapes():
    assert tree_shape(18 * 512) == (96, 96)  # 1024 px: 9216 = 96^2 (official layer_l = layer_r)
    assert tree_shape(14 * 512) == (56, 128)  # 256 px: not a square, layer_l = 2^ceil(log2 sqrt)
    enc = RegressionEncoder(18, 512, trunk="resnet50", input_size=256)
    assert enc.head.conv.in_channels == 2048 and enc.head.conv.out_channels == 18 * 8  # Conv2D(model_scale*8, 1)
    assert [tuple(p.shape) for p in enc.head.blocks[0].parameters()] == [
        (96, 96, 96), (96, 96), (96, 96, 96), (96, 96)]
    with torch.no_grad():
        out = enc(torch.zeros(1, 3, 256, 256))
    assert out.shape == (1, 18, 512) and out.abs().max().item() == 0.0  # zero-initialised last layer
    w_only = RegressionEncoder(8, 64, trunk="resnet10", input_size=32, learn_in_w=True, depth=2)
    w_only.head.blocks[-1][1].weight.data.normal_()
    assert w_only(torch.zeros(2, 3, 32, 32)).shape == (2, 64)
    for enc in (RegressionEncoder(8, 64, trunk="resnet10", input_size=32, depth=2), w_only):
        kwargs = regression_encoder_kwargs(enc.state_dict(), style_dim=64)
        assert {k: kwargs[k] for k in ("trunk", "input_size", "depth", "learn_in_w")} == {
            "trunk": "resnet10", "input_size": 32, "depth": 2, "learn_in_w": enc.learn_in_w}
        RegressionEncoder(**kwargs).load_state_dict(enc.state_dict(), strict=True)


def test_log_cosh_and_chunk_schedule():
    d = torch.tensor([0.0, 0.5, -2.0, 100.0])
    expected = torch.log(torch.cosh(d[:3])).tolist() + [100 - math.log(2)]
    torch.testing.assert_close(log_cosh(d, torch.zeros(4)), torch.tensor(expected).mean())
    assert pair_indices(5, 3, seed=0) == [5, 6, 7]
    first = pair_indices(0, 8, seed=0, n_samples=4, chunk_epochs=2)  # chunk 0, two shuffled passes
    assert sorted(first[:4]) == sorted(first[4:]) == [0, 1, 2, 3] and first[:4] != first[4:]
    assert sorted(pair_indices(8, 4, seed=0, n_samples=4, chunk_epochs=2)) == [4, 5, 6, 7]


def test_official_pairs_mirror_and_style_groups(g):
    c = g.latent_avg
    pairs = GeneratorSampledDataset(g, 40, truncation=0.7, mirror=True, style_groups=True)
    out = pairs.render(list(range(40)))
    ws = out["ws"]
    torch.testing.assert_close(ws[0::2] + ws[1::2], 2 * c.expand_as(ws[0::2]), atol=1e-5, rtol=0)  # ±0.7 pairs
    groups = [len(torch.unique(w, dim=0)) for w in ws]
    assert set(groups) == {2, 4}  # n_latent 8: 2 w's (not a multiple of 3) or n_latent/2
    for w, n in zip(ws, groups):
        torch.testing.assert_close(w, w[::8 // n].repeat_interleave(8 // n, 0))  # consecutive layers
    with torch.no_grad():
        torch.testing.assert_close(out["images"][:4], g.synthesis(ws[:4]).clamp(-1, 1), atol=1e-5, rtol=0)
    held_out = GeneratorSampledDataset(g, 4, truncation=0.7, split=1).render([0])["ws"]
    assert not torch.allclose(held_out, GeneratorSampledDataset(g, 4, truncation=0.7).render([0])["ws"])


def test_imagenet_weights_file(g, tmp_path):
    missing = tmp_path / "resnet50-0676ba61.pth"
    with pytest.raises(FileNotFoundError) as err:
        regression(g, imagenet_weights=missing)
    assert str(missing) in str(err.value) and "\n" not in str(err.value)
    torch.manual_seed(1)
    trunk = ResNet(BasicBlock, [1, 1, 1, 1]).state_dict()  # torchvision layout (its fc.* is ignored)
    path = tmp_path / "resnet10.pth"
    torch.save(trunk, path)
    module = regression(g, imagenet_weights=path)
    assert torch.equal(module.encoder.layer3[0].conv1.weight, trunk["layer3.0.conv1.weight"])
    torch.save({"layer1.0.conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=f"{path}: not a torchvision resnet10 state dict"):
        regression(g, imagenet_weights=path)


def test_short_training_lowers_the_held_out_error(g):
    module = regression(g, val_samples=32, style_groups=False)
    start, mean = module.held_out_errors()
    assert start == pytest.approx(mean, rel=1e-6)  # untrained: exactly the predict-the-mean baseline
    err, _ = fit(module, 20).held_out_errors()
    assert err < 0.97 * mean  # measured 0.93 (20 steps)


def test_train_py_composes_trains_and_exports(tmp_path):
    cfg = compose_config("train", ["+method=latent_regression", "generator=random", "loss=embedded", "data.size=32",
                                   "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
                                   "method.module.encoder.trunk=resnet10", "method.module.val_samples=8",
                                   "logger=csv"], tmp_path)
    assert cfg.method.module.batch_size == 16 and cfg.method.module.truncation == 0.7
    trainer = train(cfg)
    metrics = trainer.callback_metrics
    assert 0 < metrics["val/w_ratio"] < 1.5 and metrics["val/w_mse_mean"] > 0 and metrics["val/mse"] > 0
    export = load_torch(tmp_path / "export" / "latent_regression.pt")
    assert export["opts"]["encoder_type"] == "RegressionEncoder" and export["opts"]["image_size"] == 32
    assert export["latent_avg"].shape == (8, 512)
    assert {k.split(".")[0] for k in export["state_dict"]} == {"encoder", "decoder"}


@pytest.fixture(scope="module")
def trained(g, tmp_path_factory):
    """100 steps (1600 single-w pairs, ~55 s on one thread), exported and rebuilt from the file as
    a checkpoint loader would (regression_encoder_kwargs + strict load) into an Inverter."""
    module = fit(regression(g, val_samples=64, style_groups=False), 100)
    path = tmp_path_factory.mktemp("latent_regression") / "latent_regression.pt"
    module.export(path)
    ckpt = load_torch(path)
    sd = {k[len("encoder."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("encoder.")}
    encoder = RegressionEncoder(**regression_encoder_kwargs(sd, style_dim=g.style_dim))
    encoder.load_state_dict(sd, strict=True)
    inverter = Inverter(encoder, g, ckpt["latent_avg"], input_size=(32, 32)).eval()
    return module, inverter


@pytest.mark.slow
def test_encoder_beats_predict_the_mean(trained):
    module, inverter = trained
    err, mean = module.held_out_errors()
    assert err < 0.8 * mean  # measured 0.68 (100 steps)
    x, ws = module.sample_pairs(module.held_out, list(range(8)))
    with torch.no_grad():
        torch.testing.assert_close(inverter.encode(x), module.encode(x), atol=1e-5, rtol=0)  # export round trip


@pytest.mark.slow
def test_hybrid_start_reaches_the_mean_start_sooner(g, trained):
    module, inverter = trained
    x, _ = module.sample_pairs(module.held_out, list(range(8, 12)))
    kw = dict(latent_space="w+", steps=60, lr=0.01, w_stats=w_statistics(g, 2000))
    runs = {}
    for init in ("mean", "encoder"):
        run = OptimizationInversion(g, x, init=init, encoder=inverter.encode if init == "encoder" else None, **kw)
        pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False).fit(run)
        runs[init] = run.result["curves"].mean(1)
    goal = runs["mean"][-1].item()
    reached = int((runs["encoder"] <= goal).nonzero()[0])
    assert runs["encoder"][0] < 0.8 * runs["mean"][0]  # measured 0.679 vs 0.984 (0.69)
    assert reached <= 0.7 * len(runs["mean"])  # measured: the 60-step mean-start MSE 0.117 at step 38 (0.63)
