"""pSp/e4e encoders, e4e latent discriminator and ArcFace ID loss against the official code's vectors."""
import gc

import pytest
import torch

from ganinv.losses.id_loss import IDLoss
from ganinv.nets.e4e_encoder import Encoder4Editing
from ganinv.nets.irse import Backbone
from ganinv.nets.latent_discriminator import LatentCodesDiscriminator
from ganinv.nets.psp_encoders import GradualStyleEncoder


@pytest.fixture(autouse=True)
def _release_memory():
    # Each filled IR-SE50 encoder is ~0.8 GB; free it before the next test builds another.
    yield
    gc.collect()


def _loaded(cls, v, *args, **kwargs):
    # Built on the meta device and filled with assign=True: skips initialising ~200M parameters
    # that the official state dict overwrites anyway (construction is covered by the shape tests).
    with torch.device("meta"):
        module = cls(*args, **kwargs)
    module.load_state_dict(v.state_dict(), strict=True, assign=True)
    return module.eval()


@torch.no_grad()
def test_psp_gradual_style_encoder(vector):
    v = vector("psp_gradual_style_encoder")
    cfg, opts = v.config, v.config["opts"]
    enc = _loaded(GradualStyleEncoder, v, cfg["num_layers"], cfg["mode"], opts["n_styles"], opts["input_nc"])
    v.check("codes", enc(v.tensors["x"]))


@torch.no_grad()
def test_e4e_encoder_every_stage(vector):
    v = vector("e4e_encoder4editing")
    size = v.config["opts"]["stylegan_size"]
    n_styles = 2 * size.bit_length() - 4  # 2*log2(size) - 2
    enc = _loaded(Encoder4Editing, v, v.config["num_layers"], v.config["mode"], n_styles)
    assert enc.progressive_stage == "all"
    assert v.tensors["stages"].tolist() == [0, 5, 18]
    # The IR-SE trunk is the same at every stage: compute it once (through the module's own
    # method) and let the three forwards re-run only the stage-dependent heads.
    feats = enc.trunk(v.tensors["x"])
    enc.trunk = lambda x: feats
    for stage in (0, 5, 18):
        # Official stage 18 is ProgressiveStage.Inference: every delta.
        enc.progressive_stage = "all" if stage == 18 else stage
        v.check(f"codes_stage{stage}", enc(v.tensors["x"]))


@torch.no_grad()
def test_e4e_latent_discriminator(vector):
    v = vector("e4e_latent_discriminator")
    d = _loaded(LatentCodesDiscriminator, v, **v.config)
    v.check("logits", d(v.tensors["w"]))


@torch.no_grad()
def test_irse50_backbone_and_id_loss(vector):
    v = vector("irse50_backbone")
    t = v.tensors
    net = _loaded(Backbone, v, **v.config)
    v.check("feats", net(t["x112"]))
    id_loss = IDLoss(backbone=net)
    for name in ("y_hat", "y", "x"):
        v.check(f"{name}_feats", id_loss.extract_feats(t[name]))
    loss, sim_improvement, id_logs = id_loss(t["y_hat"], t["y"], t["x"])
    assert loss.dtype == torch.float32 and isinstance(sim_improvement, float)
    v.check("loss", loss)
    v.check("sim_improvement", torch.tensor(sim_improvement, dtype=torch.float64))
    logs = [[d["diff_target"], d["diff_input"], d["diff_views"]] for d in id_logs]
    v.check("id_logs", torch.tensor(logs, dtype=torch.float64))
