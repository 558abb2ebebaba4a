"""Encoders, latent discriminator/pool and ID loss: shapes for every generator size, e4e stage
semantics, input_nc != 3, loading IR-SE50 weights, pool behaviour, ID-loss plumbing."""
import gc
import random

import pytest
import torch
import torch.nn.functional as F

from ganinv.losses.id_loss import IDLoss
from ganinv.nets.e4e_encoder import Encoder4Editing
from ganinv.nets.idinvert_encoder import IDInvertEncoder
from ganinv.nets.irse import Backbone, get_blocks, make_body
from ganinv.nets.latent_discriminator import LatentCodesDiscriminator, LatentCodesPool
from ganinv.nets.psp_encoders import (
    BackboneEncoderUsingLastLayerIntoW,
    BackboneEncoderUsingLastLayerIntoWPlus,
    GradualStyleEncoder,
    load_irse50_into_encoder,
)

SIZES = {64: 10, 256: 14, 1024: 18}  # generator size -> n_styles = 2*log2(size) - 2
FPN_ENCODERS = (GradualStyleEncoder, Encoder4Editing)


@pytest.fixture(autouse=True)
def _release_memory():
    yield
    gc.collect()


@pytest.fixture(scope="module")
def facenet():
    torch.manual_seed(2)
    return Backbone(112, 50, "ir_se", drop_ratio=0.6, affine=True).eval()


def _images(b, c, h, w):
    return torch.rand(b, c, h, w) * 2 - 1


# --- IR-SE trunk ---------------------------------------------------------------------------

def test_irse_unit_counts_and_stage_ends():
    assert [len(b) for b in get_blocks(50)] == [3, 4, 14, 3]
    assert [len(b) for b in get_blocks(100)] == [3, 13, 30, 3]
    assert [len(b) for b in get_blocks(152)] == [3, 8, 36, 3]
    assert [b[0] for b in get_blocks(50)] == [(64, 64, 2), (64, 128, 2), (128, 256, 2), (256, 512, 2)]
    assert make_body(50, "ir_se")[1] == (2, 6, 20, 23)  # pSp's FPN taps are units 6/20/23
    assert [len(b) for b in get_blocks(18)] == [2, 2, 2, 2]  # small models (embedded default)
    assert make_body(18, "ir_se")[1] == (1, 3, 5, 7)
    with pytest.raises(ValueError, match="num_layers"):
        get_blocks(20)
    with pytest.raises(ValueError, match="mode"):
        make_body(50, "se")


def test_ir_and_ir_se_state_dict_names(facenet):
    ir_se = make_body(50, "ir_se")[0].state_dict()
    ir = make_body(50, "ir")[0].state_dict()
    se_keys = {k for k in ir_se if ".res_layer.5." in k}
    assert se_keys and set(ir_se) - se_keys == set(ir)
    assert ir_se["0.res_layer.5.fc1.weight"].shape == (4, 64, 1, 1)  # SE reduction 16
    assert "3.shortcut_layer.0.weight" in ir_se and not any(k.startswith("0.shortcut") for k in ir_se)
    full = facenet.state_dict()
    assert list(full)[:7] == [
        "input_layer.0.weight", "input_layer.1.weight", "input_layer.1.bias", "input_layer.1.running_mean",
        "input_layer.1.running_var", "input_layer.1.num_batches_tracked", "input_layer.2.weight",
    ]
    assert full["output_layer.3.weight"].shape == (512, 512 * 7 * 7)
    assert full["output_layer.4.weight"].shape == (512,)  # affine BatchNorm1d
    assert {k for k in full if k.startswith("body.")} == {"body." + k for k in ir_se}


@torch.no_grad()
def test_backbone_embeddings_are_unit_norm(facenet):
    feats = facenet(_images(2, 3, 112, 112))
    assert feats.shape == (2, 512)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(2))


# --- encoder shapes --------------------------------------------------------------------------

@pytest.mark.parametrize("cls", FPN_ENCODERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("size", SIZES)
@torch.no_grad()
def test_fpn_encoders_give_one_code_per_generator_layer(cls, size):
    enc = cls(50, "ir_se", n_styles=SIZES[size]).eval()
    assert len(enc.styles) == SIZES[size]
    x = _images(2, 3, 64, 64)
    codes = enc(x)
    assert codes.shape == (2, SIZES[size], 512)
    assert torch.isfinite(codes).all()
    # Eval mode: each sample's codes depend on that sample only (no batch mixing in the heads).
    torch.testing.assert_close(codes[1:], enc(x[1:]), rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_non_square_input_and_e4e_all_stage_is_w0_plus_psp_heads():
    psp = GradualStyleEncoder(50, "ir_se", n_styles=10).eval()
    e4e = Encoder4Editing(50, "ir_se", n_styles=10).eval()
    e4e.load_state_dict(psp.state_dict(), strict=True)
    x = _images(2, 3, 192, 256)
    assert e4e.progressive_stage == "all"
    heads, codes = psp(x), e4e(x)
    assert heads.shape == codes.shape == (2, 10, 512)
    torch.testing.assert_close(codes[:, 0], heads[:, 0])
    torch.testing.assert_close(codes[:, 1:], heads[:, :1] + heads[:, 1:])


@torch.no_grad()
def test_fpn_encoder_rejects_bad_inputs():
    enc = GradualStyleEncoder(50, "ir_se", n_styles=4).eval()
    with pytest.raises(ValueError, match="1x1"):
        enc(_images(1, 3, 512, 32))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        enc(_images(1, 6, 32, 32))


@torch.no_grad()
def test_deeper_trunk_taps_stage_ends():
    enc = GradualStyleEncoder(100, "ir_se", n_styles=8).eval()
    assert enc.taps == (15, 45, 48)
    assert enc(_images(1, 3, 32, 32)).shape == (1, 8, 512)


@torch.no_grad()
def test_backbone_w_and_wplus_encoders():
    # Global pooling makes any input size work; a small non-square one keeps this cheap.
    square, non_square = _images(2, 3, 64, 64), _images(2, 3, 48, 64)
    into_w = BackboneEncoderUsingLastLayerIntoW(50, "ir_se").eval()
    assert into_w(square).shape == into_w(non_square).shape == (2, 512)
    for size, n in SIZES.items():
        into_wplus = BackboneEncoderUsingLastLayerIntoWPlus(50, "ir_se", n_styles=n).eval()
        assert into_wplus.linear.weight.shape == (512 * n, 512)
        assert into_wplus(square).shape == into_wplus(non_square).shape == (2, n, 512), size


def _tiny_idinvert(size, **kw):
    return IDInvertEncoder(size, encoder_channels_base=8, encoder_channels_max=16, **kw)


@pytest.mark.parametrize("size", SIZES)
@torch.no_grad()
def test_idinvert_encoder_wplus_per_generator_size(size):
    enc = _tiny_idinvert(size).eval()
    assert enc.n_latent == SIZES[size]
    codes = enc(_images(2, 3, size, size))
    assert codes.shape == (2, SIZES[size], 512)
    assert torch.isfinite(codes).all()


def test_idinvert_encoder_layout_matches_official():
    enc = IDInvertEncoder(64, encoder_channels_base=16, encoder_channels_max=64)
    sd = enc.state_dict()
    # 64 px: block0 First (16 ch), blocks 1-4 Res (32, 64, 64, 64) down to 4x4, block5 fc.
    assert sd["block0.conv.weight"].shape == (16, 3, 3, 3)
    assert sd["block1.conv.weight"].shape == (32, 16, 1, 1)  # widening shortcut
    assert sd["block1.conv1.weight"].shape == (16, 16, 3, 3)  # hidden = min(in, out)
    assert sd["block1.wscale1.bias"].shape == (16,) and sd["block1.bn2.bn.running_var"].shape == (32,)
    assert "block3.conv.weight" not in sd  # 64 -> 64: identity shortcut
    assert sd["block5.fc.weight"].shape == (10 * 512, 64 * 4 * 4)
    assert sd["block5.bn.bn.running_mean"].shape == (10 * 512,)
    # BN as the official TF training: scale and shift learnable.
    assert enc.block0.bn.bn.weight.requires_grad and enc.block0.bn.bn.bias.requires_grad
    no_bn = IDInvertEncoder(64, encoder_channels_base=16, encoder_channels_max=64, use_bn=False)
    assert not any(".bn" in k for k in no_bn.state_dict())


def test_idinvert_encoder_starts_as_the_official_tf_training():
    """genforce/idinvert training/networks_encoder.py: weights N(0, 0.02) (no wscale), biases 0."""
    torch.manual_seed(0)
    enc = IDInvertEncoder(64, encoder_channels_base=16, encoder_channels_max=64)
    fc = enc.block5.fc.weight
    assert fc.std().item() == pytest.approx(0.02, rel=0.01) and abs(fc.mean().item()) < 2e-4
    for name, w in enc.named_parameters():
        if name.endswith("conv.weight") or name.endswith("conv1.weight") or name.endswith("conv2.weight"):
            assert w.std().item() == pytest.approx(0.02, rel=0.15), name
        elif name.endswith("wscale1.bias") or name.endswith("bn.bias"):
            assert not w.any(), name
        elif name.endswith("bn.weight"):
            assert torch.equal(w, torch.ones_like(w)), name


def test_idinvert_encoder_codes_spread_is_the_last_bn_scale():
    """In training, the last BN sets each W+ coordinate's batch spread: with its scale frozen at 1
    (the inference port's gamma=False) no update of its shift changes the spread; with the scale
    learnable (the official TF training) 40 Adam steps on the spread halve it."""
    x = _images(8, 3, 32, 32)

    def spread_after(train_scale):
        torch.manual_seed(0)
        enc = _tiny_idinvert(32)
        last = enc.block4.bn.bn
        last.weight.requires_grad_(train_scale)
        opt = torch.optim.Adam([p for p in last.parameters() if p.requires_grad], lr=1e-2)
        start = enc(x).var(0).mean().item()
        for _ in range(40):
            loss = enc(x).var(0).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return start, enc(x).var(0).mean().item()

    start, frozen = spread_after(False)
    assert frozen == pytest.approx(start, rel=1e-4)
    start, learned = spread_after(True)
    assert learned < 0.5 * start


def test_idinvert_encoder_trains_and_rejects_other_shapes():
    enc = _tiny_idinvert(64)
    codes = enc(_images(2, 3, 64, 64))
    codes.square().mean().backward()
    assert enc.block0.conv.weight.grad.abs().sum() > 0
    assert enc.block0.bn.bn.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"\[B, 3, 64, 64\]"):
        enc(_images(2, 3, 48, 64))
    with pytest.raises(ValueError, match="power of two"):
        IDInvertEncoder(96)


# --- e4e progressive stages ------------------------------------------------------------------

def test_e4e_stage_k_repeats_w0_and_only_runs_heads_up_to_k():
    enc = Encoder4Editing(50, "ir_se", n_styles=8)  # train mode: BN batch statistics
    enc.input_layer.requires_grad_(False)
    enc.body.requires_grad_(False)
    x = _images(2, 3, 32, 32)
    for stage in range(8):
        enc.zero_grad(set_to_none=True)
        enc.progressive_stage = stage
        codes = enc(x)
        assert codes.shape == (2, 8, 512)
        for j in range(1, 8):
            assert torch.equal(codes[:, j], codes[:, 0]) == (j > stage), (stage, j)
        if stage not in (0, 3, 7):  # gradients at the FPN boundaries suffice
            continue
        codes.sum().backward()
        for j, head in enumerate(enc.styles):
            assert (head.linear.weight.grad is not None) == (j <= stage), (stage, j)
        assert (enc.latlayer1.weight.grad is not None) == (stage >= 3)
        assert (enc.latlayer2.weight.grad is not None) == (stage >= 7)


def test_e4e_rejects_unknown_stage():
    enc = Encoder4Editing(50, "ir_se", n_styles=4)
    for bad in (4, -1, "inference"):
        with pytest.raises(ValueError, match="progressive_stage"):
            enc.progressive_stage = bad


# --- input_nc != 3 and IR-SE50 initialisation -----------------------------------------------

@torch.no_grad()
def test_six_channel_encoders():
    x = _images(2, 6, 64, 64)
    for cls in FPN_ENCODERS:
        enc = cls(50, "ir_se", n_styles=4, input_nc=6).eval()
        assert enc.input_layer[0].weight.shape == (64, 6, 3, 3)
        assert enc(x).shape == (2, 4, 512)


def test_load_irse50_rgb_and_widened_input(facenet):
    sd = facenet.state_dict()
    rgb = GradualStyleEncoder(50, "ir_se", n_styles=4)
    heads_before = rgb.styles[0].linear.weight.clone()
    result = load_irse50_into_encoder(rgb, sd)
    assert all(k.startswith(("styles.", "latlayer")) for k in result.missing_keys)
    trunk = {k: v for k, v in rgb.state_dict().items() if k.startswith(("input_layer", "body"))}
    assert all(torch.equal(v, sd[k]) for k, v in trunk.items())
    assert torch.equal(rgb.styles[0].linear.weight, heads_before)

    six = Encoder4Editing(50, "ir_se", n_styles=4, input_nc=6)
    load_irse50_into_encoder(six, sd, generator=torch.Generator().manual_seed(7))
    stem = six.input_layer[0].weight
    # ReStyle: RGB filters in channels 0-2, torch.randn(64, 6, 3, 3) elsewhere.
    expected = torch.randn(64, 6, 3, 3, generator=torch.Generator().manual_seed(7))
    assert torch.equal(stem[:, :3], sd["input_layer.0.weight"])
    assert torch.equal(stem[:, 3:], expected[:, 3:])
    assert torch.equal(six.input_layer[1].running_var, sd["input_layer.1.running_var"])
    assert torch.equal(six.body[23].res_layer[5].fc2.weight, sd["body.23.res_layer.5.fc2.weight"])


def test_load_irse50_label_input_keeps_input_layer(facenet):
    sd = facenet.state_dict()
    sketch = GradualStyleEncoder(50, "ir_se", n_styles=4, input_nc=1)
    stem_before = sketch.input_layer[0].weight.clone()
    prelu_before = sketch.input_layer[2].weight.clone()
    with pytest.raises(ValueError, match="input_is_label"):
        load_irse50_into_encoder(sketch, sd)
    load_irse50_into_encoder(sketch, sd, input_is_label=True)
    assert torch.equal(sketch.input_layer[0].weight, stem_before)
    assert torch.equal(sketch.input_layer[2].weight, prelu_before)
    assert torch.equal(sketch.body[0].res_layer[1].weight, sd["body.0.res_layer.1.weight"])
    partial = {k: v for k, v in sd.items() if not k.startswith("body.23.")}
    with pytest.raises(ValueError, match="model_ir_se50.pth"):
        load_irse50_into_encoder(sketch, partial, input_is_label=True)


# --- latent discriminator and pool -----------------------------------------------------------

def test_latent_discriminator_layout_and_shapes():
    d = LatentCodesDiscriminator(512, 4)
    assert [k for k in d.state_dict() if k.endswith("weight")] == [f"mlp.{i}.weight" for i in (0, 2, 4, 6)]
    assert d.mlp[1].negative_slope == 0.2
    assert d(torch.randn(8, 512)).shape == (8, 1)
    assert d(torch.randn(2, 14, 512)).shape == (2, 14, 1)


def _codes(start, n, dim=4):
    return torch.arange(start, start + n, dtype=torch.float32)[:, None].repeat(1, dim)


def test_pool_returns_inputs_while_filling_then_mixes():
    pool = LatentCodesPool(pool_size=6, rng=random.Random(0))
    for step in range(3):
        w = _codes(10 * step, 2)
        assert torch.equal(pool.query(w), w)
    assert len(pool.ws) == 6
    seen, swapped, passed = {0, 1, 10, 11, 20, 21}, 0, 0
    for step in range(3, 203):
        w = _codes(10 * step, 2)
        out = pool.query(w)
        assert out.shape == (2, 4) and len(pool.ws) == 6
        for row_in, row_out in zip(w[:, 0].tolist(), out[:, 0].tolist()):
            if row_out == row_in:
                passed += 1
            else:
                assert row_out in seen  # an older code that was in the pool
                swapped += 1
            seen.add(row_in)
        assert {c[0].item() for c in pool.ws} <= seen
    assert 0.4 < swapped / (swapped + passed) < 0.6  # coin flip with p = 1/2


def test_pool_wplus_keeps_one_random_row_per_sample():
    pool = LatentCodesPool(pool_size=50, rng=random.Random(3))
    ws = torch.stack([_codes(0, 14), _codes(100, 14)]).requires_grad_(True)  # [2, 14, 4]
    out = pool.query(ws)
    assert out.shape == (2, 4)
    assert 0 <= out[0, 0] < 14 and 100 <= out[1, 0] < 114
    out.sum().backward()  # while filling, the current codes keep their graph
    assert ws.grad.sum() == 2 * 4
    assert not any(w.requires_grad for w in pool.ws)
    assert LatentCodesPool(pool_size=0).query(ws) is ws


# --- ID loss plumbing ------------------------------------------------------------------------

def test_id_loss_missing_weights_message(tmp_path):
    path = tmp_path / "model_ir_se50.pth"
    with pytest.raises(FileNotFoundError) as err:
        IDLoss(path)
    msg = str(err.value)
    assert str(path) in msg and "pixel2style2pixel" in msg and "\n" not in msg
    with pytest.raises(ValueError, match="exactly one"):
        IDLoss()


def test_id_loss_from_file_matches_backbone_and_is_frozen(tmp_path, facenet):
    path = tmp_path / "model_ir_se50.pth"
    torch.save(facenet.state_dict(), path)
    from_file = IDLoss(path)
    assert all(torch.equal(v, facenet.state_dict()[k]) for k, v in from_file.facenet.state_dict().items())
    id_loss = IDLoss(backbone=facenet).train()
    assert not id_loss.facenet.training and not any(p.requires_grad for p in id_loss.parameters())
    y, x = _images(2, 3, 256, 256), _images(2, 3, 256, 256)
    y_hat = y.clone().requires_grad_(True)
    loss, sim_improvement, id_logs = id_loss(y_hat, y, x)
    assert loss.shape == () and abs(loss.item()) < 1e-5  # y_hat == y: cosine 1
    assert len(id_logs) == 2 and all(d["diff_target"] == pytest.approx(1, abs=1e-5) for d in id_logs)
    assert all(d["diff_input"] == pytest.approx(d["diff_views"], abs=1e-5) for d in id_logs)
    expected = sum(d["diff_target"] - d["diff_views"] for d in id_logs) / 2
    assert isinstance(sim_improvement, float) and sim_improvement == pytest.approx(expected, abs=1e-12)
    loss.backward()
    assert y_hat.grad is not None and torch.isfinite(y_hat.grad).all()


@torch.no_grad()
def test_id_loss_pools_larger_images_to_256_first(facenet):
    id_loss = IDLoss(backbone=facenet)
    x = _images(1, 3, 256, 256)
    big = F.interpolate(x, scale_factor=4, mode="nearest")  # 1024 px, exact 4x4 replicas
    torch.testing.assert_close(id_loss.extract_feats(big), id_loss.extract_feats(x))


@pytest.mark.parametrize("cls", [GradualStyleEncoder, Encoder4Editing])
def test_small_encoder_knobs(cls):
    """input_size sizes the heads to the tap maps, head_channels narrows them; defaults are official."""
    official = cls(50, "ir_se", n_styles=10)
    assert [len(s.convs) // 2 for s in official.styles] == [4] * 3 + [5] * 4 + [6] * 3
    small = cls(18, "ir_se", n_styles=10, input_size=64, head_channels=64)
    assert [len(s.convs) // 2 for s in small.styles] == [2] * 3 + [3] * 4 + [4] * 3
    assert small(torch.randn(2, 3, 64, 64)).shape == (2, 10, 512)
    assert sum(p.numel() for p in small.parameters()) < 0.15 * sum(p.numel() for p in official.parameters())
