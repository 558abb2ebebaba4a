"""StyleGAN2 training module: iteration counting, regularisation schedule, EMA, export."""
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from ganinv.checkpoints import load_discriminator, load_generator
from ganinv.methods.stylegan2 import StyleGAN2
from ganinv.nets.stylegan2 import Discriminator, Generator


def _module(**kw):
    torch.manual_seed(0)
    g = Generator(16, style_dim=32, n_mlp=2, channel_max=16)
    d = Discriminator(16, channel_max=16)
    return StyleGAN2(g, d, image_every=0, **kw)


def _fit(module, steps, tmp_path):
    data = TensorDataset(torch.rand(64, 3, 16, 16) * 2 - 1)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(data, batch_size=8, shuffle=True))
    return trainer


def test_global_step_counts_iterations_and_regularisers_run(tmp_path):
    module = _module(d_reg_every=2, g_reg_every=2, path_regularize=2.0)
    calls = {"d": 0, "g": 0}
    opt_steps = {}

    def count(name, opt):
        orig = opt.step

        def step(*a, **k):
            calls[name] += 1
            return orig(*a, **k)
        opt.step = step

    module.configure_optimizers_orig = module.configure_optimizers

    def configure():
        opt_g, opt_d = module.configure_optimizers_orig()
        count("g", opt_g)
        count("d", opt_d)
        opt_steps["g"], opt_steps["d"] = opt_g, opt_d
        return [opt_g, opt_d]

    module.configure_optimizers = configure
    trainer = _fit(module, 6, tmp_path)
    assert trainer.global_step == 6
    # D: 6 main steps + R1 at iterations 0, 2, 4; G: 6 main + path reg at 0, 2, 4.
    assert calls == {"d": 9, "g": 9}
    assert module.mean_path_length > 0


def test_ema_tracks_generator_and_export_loads(tmp_path):
    module = _module(ema_kimg=0.001)  # tiny half-life: g_ema follows g closely
    g0 = [p.clone() for p in module.g_ema.parameters()]
    _fit(module, 3, tmp_path)
    moved = sum((p - q).abs().sum() for p, q in zip(module.g_ema.parameters(), g0))
    assert moved > 0
    for pe, pg in zip(module.g_ema.parameters(), module.generator.parameters()):
        assert torch.allclose(pe, pg, atol=1e-3)
    path = tmp_path / "gan.pt"
    module.export(path, n_mean=100)
    g = load_generator(path)
    d = load_discriminator(path)
    z = torch.randn(2, 32)
    with torch.no_grad():
        assert torch.allclose(g(z, noise_mode="const"), module.g_ema(z, noise_mode="const"), atol=1e-6)
        img = torch.randn(2, 3, 16, 16)
        assert torch.allclose(d(img), module.discriminator(img), atol=1e-6)
    assert g.latent_avg.shape == (32,)


def test_bf16_mixed_runs_d_in_bf16_and_r1_in_fp32(tmp_path):
    """Under trainer.precision=bf16-mixed the D logits are bf16, except the R1 forward (every
    ``d_reg_every`` iterations), which ``fp32_region`` keeps fp32 for the double backward."""
    module = _module(d_reg_every=2)
    dtypes = []
    module.discriminator.register_forward_hook(lambda m, i, out: dtypes.append((i[0].requires_grad, out.dtype)))
    data = TensorDataset(torch.rand(64, 3, 16, 16) * 2 - 1)
    trainer = pl.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, default_root_dir=tmp_path, precision="bf16-mixed")
    trainer.fit(module, DataLoader(data, batch_size=8))
    # per iteration: D(real), D(fake) [, D(real) for R1 at iterations 0 and 2], D(G(z)) for G's loss
    r1 = [dt for needs_grad, dt in dtypes if needs_grad and dt == torch.float32]
    assert len(dtypes) == 4 * 3 + 2 and len(r1) == 2
    assert sum(dt == torch.bfloat16 for _, dt in dtypes) == 12
    assert all(torch.isfinite(p).all() for p in module.discriminator.parameters())
