"""pSp and e4e training steps against the official coaches' recorded iterations.

Vectors: ``tests/conformance/training/`` (copied from shared/conformance/training; its README
says what was recorded and how). Each test builds ganinv's PSP / E4E from the fill-rule initial
states, applies ganinv's own IR-SE50 initialisation to a pre-load encoder (the init check), then
trains two iterations through Lightning exactly as ``train.py`` does (in its default layout:
conf/train.yaml's ``channels_last``), and compares every
official ``loss_dict`` value, the ID logs, y_hat, the latents, the latent-D inputs, and the
digests of the updated encoder / latent D with the vectors' tolerances. The vectors' stated
deviations are configured, not patched: constant generator noise (``train_noise_mode=const``),
pools off (e4e ``w_pool_size=0``), a fixed batch, and the official z injected through E4E's
``z_sampler`` seam. Observation is by hooks and a recording logger, as the official harness
wrapped calc_loss / optimizer.step.
"""
import copy
import gc
import importlib.util
import json
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from pytorch_lightning.loggers.logger import Logger

from ganinv.checkpoints import load_generator
from ganinv.losses.lpips import LPIPSLoss
from ganinv.methods.e4e import E4E
from ganinv.methods.psp import PSP
from ganinv.nets.e4e_encoder import Encoder4Editing
from ganinv.nets.psp_encoders import GradualStyleEncoder
from ganinv.runner import to_channels_last

TRAINING = Path(__file__).parent / "conformance" / "training"
DEFAULT_CHANNELS_LAST = OmegaConf.load(Path(__file__).parent.parent / "conf" / "train.yaml").channels_last
_spec = importlib.util.spec_from_file_location("conformance_fill", TRAINING.parent / "fill.py")
fill = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fill)

pytestmark = pytest.mark.slow  # two 256 px iterations of an IR-SE50 encoder each (~1 min)


class TrainingVector:
    def __init__(self, name):
        self.name = name
        self.m = json.loads((TRAINING / f"{name}.json").read_text())
        self.t = torch.load(TRAINING / f"{name}.pt", weights_only=True)
        self.worst = {}  # key -> max error / tolerance (reported on failure and in -s runs)

    def fill(self, name, seed=None):
        manifest = dict(self.m["state_dicts"][name])
        if seed is not None:
            manifest["seed"] = seed
        return fill.fill_state_dict(manifest)

    def check(self, key, actual):
        ref = self.t[key]
        actual = torch.as_tensor(actual, dtype=torch.float64).reshape(ref.shape)
        tol = self.m["tensors"][key]["tolerance"]
        err = (actual - ref.double()).abs()
        bound = tol["atol"] + tol["rtol"] * ref.double().abs()
        self.worst[key] = (err / bound).max().item(), err.max().item()
        assert self.worst[key][0] <= 1.0, f"{self.name}/{key}: max error {err.max().item():.3g} is " \
                                          f"{self.worst[key][0]:.2f}x the tolerance {tol}"

    def check_digest(self, key, state, state0):
        """The digest within its atol array. Entries with atol 0 (no gradient reached them, and
        integer buffers) must be bit-identical: checked on the tensors themselves, since the
        float64 sums of an unchanged tensor still depend on the reduction order (threads, SIMD)
        by up to n·eps64·Σ|v|, which is allowed in the sum and sumsq columns there."""
        d = digest(state, state0)
        ref, atol = self.t[key], self.t[f"{key}_atol"].clone()
        assert d.shape == ref.shape
        rows = self.m["tensors"][key]["rows"]
        for name in self.m["tensors"][key]["exact_entries"]:
            i = rows.index(name)
            assert (atol[i] == 0).all(), name
            t, t0 = state[name], state0[name]
            if t.is_floating_point() and float(ref[i, 2]) == 0:  # unchanged by the step
                assert torch.equal(t.to(t0.dtype), t0), f"{self.name}/{key}: {name} changed; no gradient reaches it"
            v = t.detach().double().abs().flatten()
            eps_n = v.numel() * torch.finfo(torch.float64).eps
            atol[i, 0], atol[i, 1] = eps_n * v.sum(), eps_n * (v * v).sum()
        err = (d - ref).abs()
        bad = err > atol
        assert not bad.any(), f"{self.name}/{key}: {int(bad.sum())} digest elements off, first in " \
                              f"{rows[bad.nonzero()[0, 0]]} (err {err[bad].max().item():.3g})"
        ratio = torch.where(atol > 0, err / atol.clamp_min(1e-300), torch.zeros_like(err))
        self.worst[key] = ratio.max().item(), err.max().item()


def digest(sd, sd0):
    """The kit's digest (training/README.md): per entry sum, sumsq, ||t - t0||, 8 samples."""
    rows = []
    for key, t0 in sd0.items():
        t = sd[key].detach()
        if t.is_floating_point():
            t, t0 = t.to(torch.float32), t0.to(torch.float32)
        v, v0 = t.double().flatten(), t0.double().flatten()
        n = v.numel()
        rows.append(torch.cat([torch.stack([v.sum(), (v * v).sum(), (v - v0).norm()]),
                               v[[((2 * i + 1) * n) // 16 for i in range(8)]]]))
    return torch.stack(rows)


def official_lpips(sd):
    """LPIPSLoss (pip lpips) with the official criteria/lpips alex state (the manifest's key map)."""
    net = LPIPSLoss(net="alex", resize=256, pretrained=False, pnet_rand=True)
    slices = {"0": 1, "3": 2, "6": 3, "8": 4, "10": 5}
    mapped = {"scaling_layer.shift": sd["net.mean"], "scaling_layer.scale": sd["net.std"]}
    for key, value in sd.items():
        parts = key.split(".")
        if parts[:2] == ["net", "layers"]:
            mapped[f"net.slice{slices[parts[2]]}.{parts[2]}.{parts[3]}"] = value
        elif parts[0] == "lin":
            mapped[f"lin{parts[1]}.model.1.weight"] = value
            mapped[f"lins.{parts[1]}.model.1.weight"] = value
    net.model.load_state_dict(mapped, strict=True)
    return net


class Recorder(Logger):
    """Keeps every logged metrics dict, in order (one per iteration with log_every_n_steps=1)."""

    def __init__(self):
        super().__init__()
        self.rows = []

    name = "recorder"
    version = 0

    def log_hyperparams(self, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.rows.append(dict(metrics))


class Observe(pl.Callback):
    """Encoder (and latent D) state after each iteration, for the digests."""

    def __init__(self, v, enc0, d0=None):
        self.v, self.enc0, self.d0 = v, enc0, d0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        k = trainer.global_step  # iteration k has made k counted steps
        self.v.check_digest(f"it{k}/encoder_digest", module.encoder.state_dict(), self.enc0)
        if self.d0 is not None:
            self.v.check_digest(f"it{k}/d_digest_after_r1", module.latent_discriminator.state_dict(), self.d0)


def build(v, cls, encoder_cls, tmp_path, **kwargs):
    """(module, encoder_init state) with ganinv's irse50 init applied to a pre-load encoder and
    checked against the manifest's init_check; then the encoder holds ``encoder_init``."""
    opts = v.m["config"]["opts"]
    g_path, irse50_path = tmp_path / "stylegan2.pt", tmp_path / "model_ir_se50.pth"
    torch.save({"g_ema": v.fill("decoder"), "latent_avg": v.fill("latent_avg")["latent_avg"]}, g_path)
    irse50 = v.fill("irse50")
    torch.save(irse50, irse50_path)
    generator = load_generator(g_path)
    pre = v.fill("encoder_init", seed=v.m["init_check"]["pre_load_seed"])
    with torch.device("meta"):
        encoder = encoder_cls(50, "ir_se", n_styles=generator.n_latent)
    encoder.load_state_dict(pre, strict=True, assign=True)
    pre = {k: t.clone() for k, t in pre.items()}
    module = cls(generator, encoder, start_from_latent_avg=opts["start_from_latent_avg"], lr=opts["learning_rate"],
                 optimizer=opts["optim_name"], l2_lambda=opts["l2_lambda"], lpips_lambda=opts["lpips_lambda"],
                 id_lambda=opts["id_lambda"], lpips=official_lpips(v.fill("lpips")), id_weights=str(irse50_path),
                 train_noise_mode="const", image_every=0, encoder_init="irse50",
                 encoder_init_weights=str(irse50_path), label_nc=opts.get("label_nc", 0), **kwargs)
    # init check: copied = the irse50 file, kept = the pre-load state, exactly
    check = v.m["init_check"]
    after = module.encoder.state_dict()
    assert set(check["copied_from_irse50"]) | set(check["kept_at_initialisation"]) == set(after)
    for key in check["copied_from_irse50"]:
        assert torch.equal(after[key], irse50[key]), key
    for key in check["kept_at_initialisation"]:
        assert torch.equal(after[key], pre[key]), key
    del pre, irse50
    init = v.fill("encoder_init")
    module.encoder.load_state_dict(init, strict=True)
    if DEFAULT_CHANNELS_LAST:  # train.py's default layout (conf/train.yaml channels_last), as train() applies it
        to_channels_last(module)
    return module, init


def fit(module, v, callbacks, tmp_path):
    x, y = v.t["x"], v.t["y"]
    batch = {"x": x, "y": y}
    loader = torch.utils.data.DataLoader([batch, batch], batch_size=None)  # the same batch twice
    logger = Recorder()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=2, logger=logger, log_every_n_steps=1,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=tmp_path,
                         callbacks=callbacks)
    trainer.fit(module, train_dataloaders=loader)
    assert trainer.global_step == 2
    return logger.rows


def spy_on_losses(module):
    """Record (y_hat, codes) as reconstruction_loss gets them and the ID loss's id_logs."""
    seen = {"y_hat": [], "latent": [], "id_logs": []}
    original = module.reconstruction_loss

    def reconstruction_loss(x, y, y_hat, codes, **kwargs):
        seen["y_hat"].append(y_hat.detach().clone())
        seen["latent"].append(codes.detach().clone())
        return original(x, y, y_hat, codes, **kwargs)

    module.reconstruction_loss = reconstruction_loss
    module.id_loss.register_forward_hook(lambda mod, args, out: seen["id_logs"].append(
        [[d["diff_target"], d["diff_input"], d["diff_views"]] for d in out[2]]))
    return seen


def check_iterations(v, rows, seen):
    assert len(rows) == 2 and len(seen["y_hat"]) == 2
    for k, it in enumerate(v.m["iterations"], 1):
        logged = rows[k - 1]
        for key in it["loss_dict_keys"]:
            assert f"train/{key}" in logged, f"{v.name}: iteration {k} does not log {key} (has {sorted(logged)})"
            v.check(f"it{k}/loss_dict/{key}", logged[f"train/{key}"])
        v.check(f"it{k}/id_logs", seen["id_logs"][k - 1])
        v.check(f"it{k}/y_hat", seen["y_hat"][k - 1])
        v.check(f"it{k}/latent", seen["latent"][k - 1])
    v.check("it2/y_hat_change", seen["y_hat"][1] - seen["y_hat"][0])
    v.check("it2/latent_change", seen["latent"][1] - seen["latent"][0])


@pytest.fixture(autouse=True)
def _release_memory():
    yield
    gc.collect()


def test_psp_training_steps_match_official_coach(tmp_path):
    start = time.time()
    v = TrainingVector("psp_train_ffhq_encode_256")
    opts = v.m["config"]["opts"]
    module, init = build(v, PSP, GradualStyleEncoder, tmp_path, w_norm_lambda=opts["w_norm_lambda"])
    seen = spy_on_losses(module)
    rows = fit(module, v, [Observe(v, init)], tmp_path)
    check_iterations(v, rows, seen)
    assert {f"it{k}/encoder_digest" for k in (1, 2)} <= set(v.worst)
    print(f"\n{v.name} ({time.time() - start:.0f} s): " + ", ".join(
        f"{k} {r:.2f}x (max |d| {e:.2g})" for k, (r, e) in v.worst.items()))


def test_e4e_training_steps_match_official_coach(tmp_path):
    start = time.time()
    v = TrainingVector("e4e_train_step_256")
    o = v.m["config"]["opts"]
    z_calls = []

    def official_z(module, n):  # the torch.randn the official run drew (the README: inject it)
        z_calls.append(module.global_step)
        return v.t[f"it{module.global_step + 1}/z"][:n]

    module, init = build(v, E4E, Encoder4Editing, tmp_path, w_discriminator_lambda=o["w_discriminator_lambda"],
                         w_discriminator_lr=o["w_discriminator_lr"], r1=o["r1"], d_reg_every=o["d_reg_every"],
                         w_pool_size=o["w_pool_size"], delta_norm=o["delta_norm"],
                         delta_norm_lambda=o["delta_norm_lambda"], progressive_start=o["progressive_start"],
                         progressive_step_every=o["progressive_step_every"], z_sampler=official_z)
    assert "z_sampler" not in module.hparams
    d0 = v.fill("latent_discriminator_init")
    module.latent_discriminator.load_state_dict(d0, strict=True)
    d0 = copy.deepcopy(d0)
    seen = spy_on_losses(module)
    d_calls = {}

    def d_inputs(mod, args):  # per iteration: real_w, fake_w, R1's real_w, then the encoder's rows
        k = module.global_step + 1
        calls = d_calls.setdefault(k, [])
        calls.append(args[0].detach().clone())
        if len(calls) == 3:  # R1 runs on the D after the logistic step
            v.check_digest(f"it{k}/d_digest_after_d_step", mod.state_dict(), d0)

    module.latent_discriminator.register_forward_pre_hook(d_inputs)
    stages = []
    module.encoder.register_forward_pre_hook(lambda mod, args: stages.append(mod.progressive_stage))
    rows = fit(module, v, [Observe(v, init, d0)], tmp_path)
    assert z_calls == [0, 1]
    for k, it in enumerate(v.m["iterations"], 1):
        assert int(v.t[f"it{k}/stage"]) == it["stage"] == stages[2 * k - 1] == stages[2 * k - 2]
        assert rows[k - 1]["train/stage"] == it["stage"]
        v.check(f"it{k}/d_real_w", d_calls[k][0])
        v.check(f"it{k}/d_fake_w", d_calls[k][1])
        assert len(d_calls[k]) == 3 + it["stage"] + 1  # D, R1, one adversarial call per enabled row
    check_iterations(v, rows, seen)
    digests = {f"it{k}/{n}" for k in (1, 2) for n in ("encoder_digest", "d_digest_after_d_step", "d_digest_after_r1")}
    assert digests <= set(v.worst)
    print(f"\n{v.name} ({time.time() - start:.0f} s): " + ", ".join(
        f"{k} {r:.2f}x (max |d| {e:.2g})" for k, (r, e) in v.worst.items()))
