"""ReStyle training (+method=restyle_psp | restyle_e4e, ganinv.methods.restyle) on the tiny random
generator and procedural faces: the official passes, the per-pass update, the export and encoder
bootstrapping."""
import csv
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from test_methods import tiny

from ganinv.checkpoints import load_inverter
from ganinv.checkpoints.inverter import Inverter
from ganinv.checkpoints.safe import load_torch
from ganinv.methods.restyle import bootstrap_passes, refine
from ganinv.runner import train

METHODS = ["restyle_psp", "restyle_e4e"]


def build(compose_train, method, *extra):
    cfg = compose_train(*tiny(method, *extra))
    return cfg, instantiate(cfg.method.module)


def fit(model, cfg, steps, callbacks=()):
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, callbacks=list(callbacks))
    trainer.fit(model, datamodule=instantiate(cfg.data))
    return trainer


def inverter(model, n_iters):
    """The trained module's nets as an Inverter (what load_inverter builds from its export)."""
    size = (model.generator.size,) * 2
    return Inverter(model.encoder, model.generator, model.latent_avg, input_size=size, restyle=True,
                    n_iters=n_iters).eval()


@pytest.mark.parametrize("method", METHODS)
def test_compose_train_export(compose_train, method):
    """train.py's body: 3 iterations (Lightning counts one optimizer step per iteration, not one
    per pass), finite losses, and the official ReStyle layout in export/<name>.pt."""
    cfg = compose_train(*tiny(method, "trainer.max_steps=3", "method.module.n_iters_per_batch=2", "export=true"))
    trainer = train(cfg)
    assert trainer.global_step == 3
    rows = list(csv.DictReader(open(Path(cfg.paths.output_dir) / "csv" / "metrics.csv")))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    ckpt = load_torch(Path(cfg.paths.output_dir) / "export" / f"{method}.pt", "export")
    opts = ckpt["opts"]
    encoder = "BackboneEncoder" if method == "restyle_psp" else "ProgressiveBackboneEncoder"
    assert (opts["encoder_type"], opts["input_nc"], opts["n_iters_per_batch"]) == (encoder, 6, 2)
    assert opts["start_from_latent_avg"] is True and opts["n_styles"] == 8
    assert ckpt["latent_avg"].shape == (8, 512)
    assert {k.split(".")[0] for k in ckpt["state_dict"]} == {"encoder", "decoder"}
    assert ckpt["state_dict"]["encoder.input_layer.0.weight"].shape[1] == 6


class _Passes:
    """Records, during training, every encoder input and every decoded image."""

    def __init__(self, model):
        self.inputs, self.input_grads, self.images = [], [], []
        model.encoder.register_forward_pre_hook(self.record_input)
        decode = model.decode

        def recording(*args, **kwargs):
            out = decode(*args, **kwargs)
            self.images.append(out)
            return out
        model.decode = recording

    def record_input(self, module, args):
        self.inputs.append(args[0].detach().clone())
        self.input_grads.append(args[0].requires_grad)


@pytest.mark.parametrize("method", METHODS)
def test_training_step_runs_the_official_passes(compose_train, method):
    """One iteration = n_iters_per_batch passes, each on a 6-channel cat[x, ŷ_{t-1}], the first with
    ŷ_0 = G(latent_avg) (constant noise), the others with the previous pass's image, detached;
    one backward per pass, then one optimizer step. ReStyle-e4e's latent D first sees
    E(cat[x, ŷ_0]) (one more encoder call, without gradient)."""
    n = 3
    cfg, model = build(compose_train, method, f"method.module.n_iters_per_batch={n}")
    rec = _Passes(model)
    backward = []
    real = model.manual_backward
    model.manual_backward = lambda loss, *a, **k: backward.append(loss.detach()) or real(loss, *a, **k)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    trainer = fit(model, cfg, 1)
    assert trainer.global_step == 1
    e4e = method == "restyle_e4e"
    assert len(backward) == n + (2 if e4e else 0)  # e4e: the latent D's loss and R1 (iteration 0) first
    extra = 1 if e4e else 0  # the latent D's fake codes
    assert len(rec.inputs) == n + extra
    avg = model.generator.synthesis(model.latent_avg[None], noise_mode="const").detach()  # 32 px: no pooling
    x = rec.inputs[0][:, :3]
    passes = rec.inputs[extra:]
    images = rec.images[-n:]  # the n pass images (after the avg-image decodes)
    if e4e:  # the latent D's fakes come from the first pass's input
        torch.testing.assert_close(rec.inputs[0][:, 3:], avg.expand(4, -1, -1, -1), rtol=0, atol=1e-6)
    for t, inp in enumerate(passes):
        assert inp.shape == (4, 6, 32, 32)
        assert torch.equal(inp[:, :3], x)
        assert not rec.input_grads[extra + t]  # ŷ_{t-1} (and w_{t-1}) detached between passes
        previous = avg.expand(4, -1, -1, -1) if t == 0 else images[t - 1].detach()
        torch.testing.assert_close(inp[:, 3:], previous, rtol=0, atol=1e-6)
    assert all(img.requires_grad for img in images)  # each pass's loss reaches the encoder
    # every weight and BN statistic moved, except the style heads past e4e's progressive stage (0 here)
    after = model.encoder.state_dict()
    moved = {k for k, v in before.items() if v.is_floating_point() and not torch.equal(v, after[k])}
    # BatchNorm counts one train-mode forward per pass (+ the latent D's), as the official
    assert int(after["input_layer.1.num_batches_tracked"]) == n + extra
    used = {k for k, v in before.items() if v.is_floating_point() and not (
        k.startswith("styles.") and int(k.split(".")[1]) > model.encoder.n_deltas)}
    assert model.encoder.n_deltas == (0 if e4e else 7)
    assert moved == used, (sorted(moved - used), sorted(used - moved))


def test_encoder_step_gradient_is_the_sum_of_the_pass_gradients(compose_train):
    """The official update: grads of Σ_t loss_t with the inputs of pass t detached (what per-pass
    backward accumulates), not the gradient through the chain of passes."""
    cfg, model = build(compose_train, "restyle_psp", "method.module.n_iters_per_batch=3",
                       "method.module.train_noise_mode=const")
    model.eval()  # fixed BatchNorm statistics: the same forward twice
    model.manual_backward = lambda loss: loss.backward()
    data = instantiate(cfg.data)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))

    class Opt:
        def zero_grad(self, set_to_none=True):
            model.encoder.zero_grad(set_to_none=True)

        def step(self):
            self.grads = [p.grad.clone() for p in model.encoder.parameters()]
    opt = Opt()
    model.encoder_step(batch, opt, lambda x, y, y_hat, codes: model.reconstruction_loss(x, y, y_hat, codes))
    model.encoder.zero_grad(set_to_none=True)
    x, y = batch["x"], batch["y"]
    y_hat, codes, total = model.avg_image((32, 32)).expand(4, -1, -1, -1), model.latent_avg, 0
    for _ in range(3):
        codes = refine(model.encoder, x, y_hat.detach(), codes.detach())
        y_hat = model.decode(codes, size=(32, 32))
        total = total + model.reconstruction_loss(x, y, y_hat, codes)[0]
    total.backward()
    for got, p in zip(opt.grads, model.encoder.parameters()):
        torch.testing.assert_close(got, p.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("method, override, message", [
    ("restyle_psp", "method.module.n_iters_per_batch=0", "method.n_iters_per_batch must be >= 1, got 0"),
    ("restyle_e4e", "method.module.start_from_latent_avg=false", "method.start_from_latent_avg: ReStyle's first"),
])
def test_bad_settings_are_one_line_errors(compose_train, method, override, message):
    """A ValueError naming the field (train.py's one_line_errors prints it alone)."""
    with pytest.raises(InstantiationException) as info:
        build(compose_train, method, override)
    cause = info.value.__cause__
    assert isinstance(cause, ValueError) and str(cause).startswith(message) and "\n" not in str(cause)


def test_bootstrapping_passes(compose_train):
    """Official encoder_bootstrapping_inference: the first model's one pass, then the second's
    passes from its codes and image. The same ReStyle model twice = that model's n+1 passes
    (and the training module's); a pSp first pass is its encode + decode."""
    _, model = build(compose_train, "restyle_psp", "method.module.n_iters_per_batch=3")
    _, psp = build(compose_train, "psp")
    model.eval()
    psp.eval()
    restyle = inverter(model, 3)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        same = bootstrap_passes(restyle, restyle, x, n_iters=2)
        steps = restyle.encode(x, n_iters=3, return_steps=True)
        trained = model.passes(x, n_iters=3)
    assert len(same) == 3
    for a, b, c in zip(same, steps, trained):
        torch.testing.assert_close(a.codes, b, rtol=0, atol=1e-5)
        torch.testing.assert_close(a.codes, c.codes, rtol=0, atol=1e-5)
        torch.testing.assert_close(a.image, c.image, rtol=0, atol=1e-5)  # 32 px generator: no pooling
    first = Inverter(psp.encoder, psp.generator, psp.latent_avg, input_size=(32, 32)).eval()
    with torch.no_grad():
        out = bootstrap_passes(first, restyle, x)  # n_iters: the second model's (3)
        codes0 = first.encode(x)
        codes1 = codes0 + restyle.encoder(torch.cat([x, first.decode(codes0)], dim=1))
    assert len(out) == 4 and out[0].image.shape == (2, 3, 32, 32)
    torch.testing.assert_close(out[0].codes, codes0, rtol=0, atol=0)
    torch.testing.assert_close(out[1].codes, codes1, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="second model must be a ReStyle"):
        bootstrap_passes(restyle, first, x)


def test_export_loads_with_load_inverter(compose_train, tmp_path):
    """The export of a trained ReStyle-pSp (the tiny heads: load_inverter reads their geometry from
    the state dict) read back by load_inverter gives the training module's codes and images at every pass."""
    cfg, model = build(compose_train, "restyle_psp", "method.module.n_iters_per_batch=2")
    fit(model, cfg, 2)
    model.eval()
    model.export(tmp_path / "restyle.pt")
    inv = load_inverter(tmp_path / "restyle.pt")
    assert (inv.restyle, inv.n_iters, inv.input_size) == (True, 2, (32, 32))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        ours = model.passes(x)
        theirs = inv.encode(x, return_steps=True)
        image = inv.decode(theirs[-1])
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.codes, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours[-1].image, image, rtol=0, atol=1e-6)


def per_pass_mse(model, cfg, n_iters):
    data = instantiate(cfg.data)
    data.setup("fit")
    errors = torch.zeros(n_iters)
    with torch.no_grad():
        for batch in data.val_dataloader():
            for t, step in enumerate(model.passes(batch["x"], n_iters=n_iters)):
                errors[t] += F.mse_loss(step.image, batch["y"]) / len(data.val_dataloader())
    return errors


def test_passes_lower_the_error_on_an_overfit_batch(compose_train):
    """Fast variant: 10 iterations on one batch of 4 faces (2 passes): the second pass's MSE is
    < 0.85x the first's, and the first beats the average image (measured on one thread: avg 0.768,
    passes 0.567, 0.429)."""
    cfg, model = build(compose_train, "restyle_psp", "method.module.n_iters_per_batch=2", "method.module.lr=1e-3",
                       "data.train_length=4")
    fit(model, cfg, 10)
    model.eval()
    data = instantiate(cfg.data)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    with torch.no_grad():
        errors = [F.mse_loss(step.image, batch["y"]).item() for step in model.passes(batch["x"])]
        avg = F.mse_loss(model.avg_image((32, 32)).expand_as(batch["y"]), batch["y"]).item()
    print(f"avg image {avg:.3f}, passes {[round(e, 3) for e in errors]}")
    assert errors[0] < avg
    assert errors[1] < 0.85 * errors[0], errors


@pytest.mark.slow
def test_passes_lower_the_error_on_held_out_faces(compose_train):
    """40 iterations on 8 faces (3 passes, Ranger 1e-3), per-pass MSE on 8 held-out faces: passes
    2 and 3 are < 0.8x pass 1 (measured on one thread: 0.218, 0.148, 0.148)."""
    cfg, model = build(compose_train, "restyle_psp", "method.module.n_iters_per_batch=3", "method.module.lr=1e-3")
    fit(model, cfg, 40)
    model.eval()
    errors = per_pass_mse(model, cfg, 3)
    print("per-pass MSE", errors.tolist())
    assert errors[1] < 0.8 * errors[0] and errors[2] < 0.8 * errors[0], errors
