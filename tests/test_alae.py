"""StyleALAE (+method=alae): Hydra composition and training on procedural faces, the LOD / fade-in
schedule, official-checkpoint loading (layout written here from podgorskiy/ALAE net.py, not from our
modules), the export round trip, and the refusal of a gadget pickle."""
import csv
import math
import os
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from ganinv.checkpoints import UnsafeCheckpointError
from ganinv.checkpoints.alae import load_alae
from ganinv.data.procedural import ProceduralFaces
from ganinv.methods.alae import ALAE, lod_schedule
from ganinv.nets.alae import ALAEModel
from ganinv.runner import train

TINY = ["method.module.startf=8", "method.module.maxf=32", "method.module.latent_size=32",
        "method.module.mapping_layers=3", "method.module.image_every=0"]
RUN = ["+method=alae", "data=procedural", "data.size=32", "data.batch_size=4", "data.train_length=64",
       "logger=csv", "trainer.log_every_n_steps=1", "+trainer.enable_progress_bar=false",
       "callbacks.model_checkpoint.every_n_train_steps=1000"]


def test_default_config_composes_and_trains_at_32px(compose_train, one_thread):
    """The yaml as shipped (official FFHQ widths: startf 16, maxf 512, 512-d latents, 8 mapping layers)."""
    cfg = compose_train(*RUN, "trainer.max_steps=2", "export=false", "method.module.image_every=0")
    assert cfg.method.module.size == 32 and cfg.method.module.learning_rates[0] == 0.0015
    trainer = train(cfg)
    module = trainer.lightning_module
    assert trainer.global_step == 2
    assert module.config.layer_count == 4 and module.model.decoder.const.shape == (1, 128, 4, 4)
    rows = [r for r in csv.DictReader(open(Path(cfg.paths.output_dir) / "csv" / "metrics.csv")) if r.get("train/lae")]
    assert len(rows) == 2 and all(math.isfinite(float(r["train/loss_d"])) for r in rows)


def test_lod_schedule_matches_lod_driver():
    # 32 images per LOD, 4 levels: lod = images // 32 (capped at 3); fade-in over the first 16
    # images of every cycle after the first, blend = sin(pi*t - pi/2)/2 + 1/2 with t = pos/16.
    got = {i: lod_schedule(i, 32, 4) for i in (0, 31, 32, 36, 40, 44, 47, 48, 64, 72, 96, 104, 127, 128, 136, 999)}
    assert [(i, s.lod) for i, s in got.items()] == [
        (0, 0), (31, 0), (32, 1), (36, 1), (40, 1), (44, 1), (47, 1), (48, 1), (64, 2), (72, 2), (96, 3),
        (104, 3), (127, 3), (128, 3), (136, 3), (999, 3)]
    blends = {i: round(s.blend, 6) for i, s in got.items()}
    assert blends[32] == 0.0 and blends[40] == 0.5 and blends[72] == 0.5 and blends[104] == 0.5
    assert blends[36] == round(0.5 - 0.5 * math.cos(math.pi / 4), 6) == 0.146447
    assert blends[0] == blends[31] == blends[48] == blends[128] == blends[136] == 1.0  # no fade at lod 0 / past the top
    assert [i for i, s in got.items() if s.in_transition] == [32, 36, 40, 44, 47, 64, 72, 96, 104]
    assert lod_schedule(5, 0, 4).lod == 3 and lod_schedule(5, 0, 4).blend == 1.0  # images_per_lod 0: full size


def test_training_follows_lod_schedule_resets_adam_and_exports(compose_train, one_thread):
    # batch 4, 16 images per LOD: LOD 0 at steps 0-3, 1 at 4-7 (fading in over 4-5), 2 at 8-11.
    cfg = compose_train(*RUN, *TINY, "trainer.max_steps=12", "method.module.images_per_lod=16",
                        "method.module.learning_rates=[0.001,0.002,0.003]")
    trainer = train(cfg)
    module = trainer.lightning_module
    rows = [r for r in csv.DictReader(open(Path(cfg.paths.output_dir) / "csv" / "metrics.csv")) if r.get("train/lae")]
    lods = [int(float(r["train/lod"])) for r in rows]
    blends = [round(float(r["train/blend"]), 4) for r in rows]
    assert lods == [0] * 4 + [1] * 4 + [2] * 4
    assert blends == [1.0] * 4 + [0.0, 0.5, 1.0, 1.0, 0.0, 0.5, 1.0, 1.0]
    # Adam state reset at the switch to LOD 2 (step 8): 4 iterations since, two steps per optimiser each
    opt_e, opt_g = (o.optimizer for o in module.optimizers())
    assert opt_g.state[module.model.decoder.const]["step"].item() == 8
    assert opt_e.state[module.model.encoder.encode_block[3].bias_1]["step"].item() == 8
    coefs = {g["lr_coef"]: g["lr"] for g in opt_g.param_groups}
    assert all(lr == pytest.approx(0.003 * c) for c, lr in coefs.items()) and len(coefs) > 3
    # the export is the official layout + config; it loads back as the EMA nets (x -> E(x) -> G(w))
    inv = load_alae(Path(cfg.paths.output_dir) / "export" / "alae.pt")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        w = module.model_s.encoder(x)
        assert torch.equal(inv.encode(x), w) and w.shape == (2, 32)
        assert torch.equal(inv.decode(w, noise=False), module.model_s.decoder(w, noise=False))
        assert inv.forward(x, noise=False).shape == (2, 3, 32, 32)


def _errors(net, x, z, lod):
    """(image MSE of G(E(x)), latent MSE of E(G(F(z))) vs F(z)) at ``lod``, deterministic noise."""
    with torch.no_grad():
        xs = F.avg_pool2d(x, x.shape[-1] // 2 ** (lod + 2))
        image = (net.decoder(net.encoder(xs, lod), lod, noise=False) - xs).pow(2).mean().item()
        w = net.mapping_f(z)
        latent = (net.encoder(net.decoder(w, lod, noise=False), lod) - w[:, 0]).pow(2).mean().item()
    return image, latent


def _short_run(steps, seed=0):
    """(before, after) ``_errors`` of a run at the first LOD (4x4 of the 32 px faces), official lr."""
    torch.manual_seed(seed)
    faces = ProceduralFaces(256, 32, 0, "train")
    x = torch.stack([faces[i][0] for i in range(256)])
    module = ALAE(size=32, startf=8, maxf=32, latent_size=32, mapping_layers=3, images_per_lod=10**8,
                  image_every=0)
    z = torch.randn(32, 32, generator=torch.Generator().manual_seed(1))
    before = _errors(module.model, x[:32], z, 0)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(TensorDataset(x), batch_size=8, shuffle=True, drop_last=True))
    after = _errors(module.model, x[:32], z, 0)
    print(f"ALAE {steps} steps: image {before[0]:.4f} -> {after[0]:.4f}, latent {before[1]:.4f} -> {after[1]:.4f}")
    return before, after


def test_short_run_lowers_latent_reconstruction(one_thread):
    """The reciprocity step (c) alone is a direct regression: the latent error falls fast."""
    (_, latent0), (_, latent1) = _short_run(FAST_STEPS)
    assert latent1 < latent0 / FAST_LATENT_FACTOR, (latent0, latent1)


@pytest.mark.slow
def test_longer_run_lowers_image_and_latent_reconstruction(one_thread):
    """Official losses only (no image loss): the image error G(E(x)) vs x falls too, more slowly.

    The image error is a by-product of the adversarial game, so one run's factor depends on the
    machine's rounding: seed 0 gave 1.31x on an AMX Xeon and 1.05x on an AVX2 EPYC (CI, session 6).
    The test asserts the mean over SEEDS runs (here 1.31, 2.02, 1.60 -> 1.60x; the latent factor
    2.3, 2.0, 2.5); the latent error, a direct regression, must fall in every run."""
    runs = [_short_run(SLOW_STEPS, seed) for seed in SEEDS]
    for (_, latent0), (_, latent1) in runs:
        assert latent1 < latent0 / LATENT_FACTOR, (latent0, latent1)
    image0 = sum(before[0] for before, _ in runs) / len(runs)
    image1 = sum(after[0] for _, after in runs) / len(runs)
    assert image1 < image0 / IMAGE_FACTOR, (image0, image1)


FAST_STEPS, FAST_LATENT_FACTOR = 80, 1.2
SLOW_STEPS, LATENT_FACTOR, IMAGE_FACTOR, SEEDS = 600, 1.8, 1.2, (0, 1, 2)


def _official_layout(startf, maxf, layer_count, latent, mapping_layers):
    """{checkpoint model name: {key: shape}} transcribed from podgorskiy/ALAE net.py (EncoderDefault,
    GeneratorDefault, MappingD with 3 layers, MappingF) and model.py (DLatent)."""
    enc, gen = {}, {}
    inputs = startf
    for i in range(layer_count):
        outputs = min(maxf, startf * 2 ** (i + 1))
        enc[f"from_rgb.{i}.from_rgb.weight"], enc[f"from_rgb.{i}.from_rgb.bias"] = (inputs, 3, 1, 1), (inputs,)
        b = f"encode_block.{i}."
        enc.update({b + "conv_1.weight": (inputs, inputs, 3, 3), b + "bias_1": (1, inputs, 1, 1),
                    b + "blur.weight": (inputs, 1, 3, 3), b + "conv_2.weight": (outputs, inputs, 3, 3),
                    b + "bias_2": (1, outputs, 1, 1), b + "style_1.weight": (latent, 2 * inputs),
                    b + "style_1.bias": (latent,), b + "style_2.weight": (latent, 2 * outputs),
                    b + "style_2.bias": (latent,)})
        inputs = outputs
    inputs = min(maxf, startf * 2 ** (layer_count - 1))
    gen["const"] = (1, inputs, 4, 4)
    for i in range(layer_count):
        outputs = min(maxf, startf * 2 ** (layer_count - 1 - i))
        b = f"decode_block.{i}."
        if i:
            gen[b + "conv_1.weight"] = (inputs, outputs, 3, 3) if 2 ** (i + 2) >= 128 else (outputs, inputs, 3, 3)
        for k in (1, 2):
            gen.update({f"{b}noise_weight_{k}": (1, outputs, 1, 1), f"{b}bias_{k}": (1, outputs, 1, 1),
                        f"{b}style_{k}.weight": (2 * outputs, latent), f"{b}style_{k}.bias": (2 * outputs,)})
        gen[b + "blur.weight"], gen[b + "conv_2.weight"] = (outputs, 1, 3, 3), (outputs, outputs, 3, 3)
        gen[f"to_rgb.{i}.to_rgb.weight"], gen[f"to_rgb.{i}.to_rgb.bias"] = (3, outputs, 1, 1), (3,)
        inputs = outputs
    d_sizes = [latent, latent, latent, 2 * latent]
    mapping_d = {f"map_blocks.{i}.{p}": (d_sizes[i + 1], d_sizes[i]) if p == "weight" else (d_sizes[i + 1],)
                 for i in range(3) for p in ("weight", "bias")}
    mapping_f = {f"map_blocks.{i}.fc.{p}": (latent, latent) if p == "weight" else (latent,)
                 for i in range(mapping_layers) for p in ("weight", "bias")}
    return {"discriminator": enc, "generator": gen, "mapping_tl": mapping_d, "mapping_fl": mapping_f}


def _random_state(layout, seed):
    g = torch.Generator().manual_seed(seed)
    blur = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    return {k: blur.expand(*shape).clone() if k.endswith("blur.weight") else 0.2 * torch.randn(*shape, generator=g)
            for k, shape in layout.items()}


ARCH = dict(startf=4, maxf=16, layer_count=6, latent=16, mapping_layers=2)  # 128 px: the fused-scale blocks too
CONFIG = {"START_CHANNEL_COUNT": 4, "MAX_CHANNEL_COUNT": 16, "LAYER_COUNT": 6, "LATENT_SPACE_SIZE": 16,
          "MAPPING_LAYERS": 2}


def _official_file(path):
    layout = _official_layout(**ARCH)
    models = {name: _random_state(shapes, 1) for name, shapes in layout.items()}  # the training nets
    models.update({f"{name}_s": _random_state(shapes, 2) for name, shapes in layout.items()})  # the EMA nets
    models["dlatent_avg"] = {"buff": torch.randn(12, 16)}
    optimizer = {"state": {0: {"step": 3, "exp_avg_sq": torch.ones(2)}}, "param_groups": [
        {"lr": 0.0015, "beta_2": 0.99, "eps": 1e-8, "weight_decay": 0, "params": [0]}]}
    torch.save({"models": models, "auxiliary": {"encoder_optimizer": optimizer, "decoder_optimizer": optimizer,
                                                "scheduler": {"encoder_optimizer": {"last_epoch": 7}},
                                                "tracker": {"tracks": {"lae": [0.5, 0.25]}, "epochs": [1.0]}}}, path)
    return models


def _ours(models, suffix):
    net = ALAEModel(4, 16, 6, 16, 2)
    for name, attr in (("discriminator", "encoder"), ("generator", "decoder"), ("mapping_tl", "mapping_d"),
                       ("mapping_fl", "mapping_f")):
        getattr(net, attr).load_state_dict(models[name + suffix], strict=True)
    return net.eval()


def test_official_checkpoint_loads_safely_and_matches_our_modules(tmp_path):
    path = tmp_path / "ffhq_like.pth"
    models = _official_file(path)
    inv = load_alae(path, config=CONFIG)  # the EMA (_s) nets, as the official inference scripts
    raw = load_alae(path, config=CONFIG, ema=False)
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        for loaded, suffix in ((inv, "_s"), (raw, "")):
            ours = _ours(models, suffix)
            w = loaded.encode(x)
            assert torch.equal(w, ours.encoder(x)) and w.shape == (2, 16)
            img = loaded.decode(w, noise=False)
            assert torch.equal(img, ours.decoder(w[:, None].expand(-1, 12, -1), noise=False))
            assert img.shape == (2, 3, 128, 128)
            z = torch.randn(3, 16)
            assert torch.equal(loaded.mapping_d(loaded.mapping_f(z)), ours.mapping_d(ours.mapping_f(z)))
        assert not torch.equal(inv.encode(x), raw.encode(x))
        assert torch.equal(inv.dlatent_avg.buff, models["dlatent_avg"]["buff"])
    with pytest.raises(ValueError, match="does not match the ALAE config"):
        load_alae(path, config={**CONFIG, "LAYER_COUNT": 5})
    with pytest.raises(ValueError, match="holds no architecture"):
        load_alae(path)
    with pytest.raises(ValueError, match="unknown ALAE config 'ffhq1024'"):
        load_alae(path, config="ffhq1024")


class Gadget:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_gadget_pickle_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    models = _official_file(path)
    models["generator_s"]["const"] = Gadget(marker)
    torch.save({"models": models, "auxiliary": {}}, path)
    with pytest.raises(UnsafeCheckpointError) as err:
        load_alae(path, config=CONFIG)
    assert "system" in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()
