"""pSp / e4e / ReStyle encoder checkpoints and ganinv exports -> Inverter: the official e4e
checkpoint vector, pSp variants (W+, learn_in_w, label inputs), ReStyle's iterative refinement,
our own export, and one-line errors for files that do not fit."""
import gc

import pytest
import torch
import torch.nn.functional as F

from ganinv.checkpoints import load_inverter
from ganinv.checkpoints.inverter import SUPPORTED_TYPES, Inverter
from ganinv.methods.encoder import EncoderMethod
from ganinv.nets.e4e_encoder import Encoder4Editing
from ganinv.nets.idinvert_encoder import IDInvertEncoder
from ganinv.nets.psp_encoders import (
    BackboneEncoderUsingLastLayerIntoW,
    BackboneEncoderUsingLastLayerIntoWPlus,
    GradualStyleEncoder,
)
from ganinv.nets.restyle_encoders import (
    BackboneEncoder,
    ProgressiveBackboneEncoder,
    ResNetBackboneEncoder,
    ResNetGradualStyleEncoder,
    ResNetProgressiveBackboneEncoder,
)
from ganinv.nets.stylegan2 import Generator

G_SIZE, N_STYLES = 16, 6  # tiny decoder: 2*log2(16) - 2 styles
SMALL = 32  # encoder input for the tiny pSp/ReStyle models (the IR-SE heads pool any size in [16, 256])


@pytest.fixture(autouse=True)
def _release_memory():
    yield
    gc.collect()


pytestmark = pytest.mark.usefixtures("module_one_thread")


@pytest.fixture(scope="module")
def g():
    torch.manual_seed(1)
    g = Generator(G_SIZE, 512, n_mlp=2, channel_max=64).eval()
    with torch.no_grad():  # random init leaves biases and noise strengths at constants
        for name, p in g.named_parameters():
            if name.endswith(("bias", "noise.weight")):
                p.add_(0.1 * torch.randn_like(p))
    return g


def _save(tmp_path, encoder, g, opts, latent_avg=None, name="model.pt"):
    """The official layout: state_dict with encoder./decoder. prefixes, opts, top-level latent_avg."""
    sd = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    sd.update({f"decoder.{k}": v for k, v in g.state_dict().items()})
    ckpt = {"state_dict": sd, "opts": opts}
    if latent_avg is not None:
        ckpt["latent_avg"] = latent_avg
    torch.save(ckpt, tmp_path / name)
    return tmp_path / name


def _images(c=3, size=SMALL, seed=0):
    return torch.rand(1, c, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _tiny_idinvert(**kw):
    torch.manual_seed(2)
    return IDInvertEncoder(G_SIZE, encoder_channels_base=8, encoder_channels_max=16, **kw).eval()


# --- official e4e checkpoint (conformance vector) -------------------------------------------

@torch.no_grad()
def test_e4e_full_checkpoint_matches_official(vector, tmp_path):
    v = vector("e4e_full_checkpoint_256")
    sd = v.state_dict()
    assert list(sd)[-1] == "latent_avg"  # top level in the file, not in state_dict
    latent_avg = sd.pop("latent_avg")
    path = tmp_path / "e4e_256.pt"
    torch.save({"state_dict": sd, "latent_avg": latent_avg, "opts": dict(v.config["checkpoint_opts"])}, path)
    del sd
    inv = load_inverter(path)
    assert not inv.training and not inv.restyle
    assert type(inv.encoder).__name__ == "Encoder4Editing" and inv.encoder.progressive_stage == "all"
    assert (inv.n_styles, inv.size, inv.input_nc, inv.input_size) == (14, 256, 3, (256, 256))
    assert torch.equal(inv.latent_avg, latent_avg)

    # One encoder pass: record the encoder's own output on the way through encode().
    seen = []
    hook = inv.encoder.register_forward_hook(lambda m, i, out: seen.append(out))
    codes = inv.encode(v.tensors["x"])
    hook.remove()
    v.check("encoder_codes", seen[0])
    v.check("codes", codes)
    v.check("result_latent", codes)  # pSp.forward's latent is the codes it decoded
    image = inv.decode(codes)
    v.check("image_inference", image)
    v.check("image", inv.fit(image))  # pSp.forward(resize=True): face_pool, identity at 256
    v.check("real_w", inv.generator.mapping(v.tensors["z"]))


# --- pSp layouts ------------------------------------------------------------------------------

@torch.no_grad()
def test_psp_gradual_style_checkpoint_round_trip(tmp_path, g):
    torch.manual_seed(3)
    enc = GradualStyleEncoder(50, "ir_se", N_STYLES).eval()
    avg = torch.randn(N_STYLES, 512)
    opts = {"encoder_type": "GradualStyleEncoder", "output_size": G_SIZE, "n_styles": N_STYLES,
            "start_from_latent_avg": True, "learn_in_w": False, "input_nc": 3, "label_nc": 0,
            "dataset_type": "ffhq_encode"}
    inv = load_inverter(_save(tmp_path, enc, g, opts, avg), input_size=SMALL)
    assert (inv.n_styles, inv.size, inv.input_nc, inv.input_size) == (N_STYLES, G_SIZE, 3, (SMALL, SMALL))
    assert inv.opts == opts and torch.equal(inv.latent_avg, avg)
    assert torch.equal(inv.generator.latent_avg, avg[0])

    x = _images()
    codes = inv.encode(x)
    assert codes.shape == (1, N_STYLES, 512)
    torch.testing.assert_close(codes, enc(x) + avg, rtol=0, atol=1e-5)
    image = inv.decode(codes)
    assert image.shape == (1, 3, G_SIZE, G_SIZE)
    torch.testing.assert_close(image, g.synthesis(codes, noise_mode="const"), rtol=0, atol=1e-5)
    # resize=True pools (here: spreads) to the encoder's input size, like pSp's face_pool.
    torch.testing.assert_close(inv.decode(codes, resize=True), F.adaptive_avg_pool2d(image, SMALL))
    assert inv.decode(codes, noise_mode="random").shape == image.shape

    # Other input sizes go through the official Resize (antialiased bilinear) first.
    big = F.interpolate(x, size=2 * SMALL, mode="nearest")
    resized = F.interpolate(big, size=SMALL, mode="bilinear", antialias=True, align_corners=False)
    torch.testing.assert_close(inv.encode(big), inv.encode(resized), rtol=0, atol=0)
    with pytest.raises(ValueError, match="n_iters applies to ReStyle"):
        inv.encode(x, n_iters=2)


@pytest.fixture(scope="module")
def w_encoder():
    torch.manual_seed(4)
    return BackboneEncoderUsingLastLayerIntoW(50, "ir_se").eval()


@pytest.mark.parametrize("avg_shape", [(1, 512), (512,)])
@torch.no_grad()
def test_psp_learn_in_w_adds_latent_avg_and_broadcasts(tmp_path, g, w_encoder, avg_shape):
    # pSp saves latent_avg [1, 512] when learn_in_w (rosinality's [512] repeated once).
    avg = torch.randn(avg_shape)
    opts = {"encoder_type": "BackboneEncoderUsingLastLayerIntoW", "output_size": G_SIZE,
            "start_from_latent_avg": True, "learn_in_w": True, "input_nc": 3, "label_nc": 0}
    inv = load_inverter(_save(tmp_path, w_encoder, g, opts, avg), input_size=SMALL)
    assert inv.latent_avg.shape == (N_STYLES, 512)
    x = _images(seed=1)
    w = w_encoder(x) + avg.reshape(1, 512)
    codes = inv.encode(x)
    assert codes.shape == (1, N_STYLES, 512)
    torch.testing.assert_close(codes, w[:, None].expand(-1, N_STYLES, -1), rtol=0, atol=1e-5)
    # decode also takes a single w
    torch.testing.assert_close(inv.decode(w), inv.decode(codes), rtol=0, atol=0)


@torch.no_grad()
def test_psp_w_plus_baseline(tmp_path, g):
    torch.manual_seed(11)
    enc = BackboneEncoderUsingLastLayerIntoWPlus(50, "ir_se", N_STYLES).eval()
    avg = torch.randn(N_STYLES, 512)
    opts = {"encoder_type": "BackboneEncoderUsingLastLayerIntoWPlus", "output_size": G_SIZE,
            "start_from_latent_avg": True, "learn_in_w": False, "input_nc": 3, "label_nc": 0}
    inv = load_inverter(_save(tmp_path, enc, g, opts, avg), input_size=SMALL)
    x = _images(seed=12)
    torch.testing.assert_close(inv.encode(x), enc(x) + avg, rtol=0, atol=1e-5)


@pytest.mark.parametrize("input_nc,label_nc", [(1, 1), (19, 19), (3, 19)])
@torch.no_grad()
def test_psp_label_and_sketch_inputs_build_the_input_conv(tmp_path, g, input_nc, label_nc):
    # Sketches (label_nc=1) and segmentation maps (19): the first conv takes label_nc channels;
    # a file whose opts kept input_nc=3 next to label_nc=19 still loads from its weights.
    channels = label_nc
    torch.manual_seed(5)
    enc = BackboneEncoderUsingLastLayerIntoW(50, "ir_se", input_nc=channels).eval()
    opts = {"encoder_type": "BackboneEncoderUsingLastLayerIntoW", "output_size": G_SIZE,
            "start_from_latent_avg": False, "learn_in_w": True, "input_nc": input_nc, "label_nc": label_nc}
    inv = load_inverter(_save(tmp_path, enc, g, opts), input_size=SMALL)
    assert inv.input_nc == channels and inv.encoder.input_layer[0].weight.shape == (64, channels, 3, 3)
    assert inv.latent_avg is None
    labels = torch.randint(channels, (1, 2 * SMALL, 2 * SMALL), generator=torch.Generator().manual_seed(6))
    x = F.one_hot(labels, channels).permute(0, 3, 1, 2).float()
    # one-hot maps are resized with nearest neighbour (they stay one-hot); sketches bilinearly
    if label_nc > 1:
        small = F.interpolate(x, size=SMALL, mode="nearest")
    else:
        small = F.interpolate(x, size=SMALL, mode="bilinear", antialias=True, align_corners=False)
    expected = enc(small)[:, None].expand(-1, N_STYLES, -1)
    torch.testing.assert_close(inv.encode(x), expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=rf"expects images \[B, {channels}, H, W\]"):
        inv.encode(_images(c=channels + 1))


def test_psp_input_channels_must_agree_with_opts(tmp_path, g):
    with torch.device("meta"):  # only names and shapes are read before the error
        enc = BackboneEncoderUsingLastLayerIntoW(50, "ir_se", input_nc=19)
    sd = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in enc.state_dict().items()}
    enc = type("Stub", (), {"state_dict": lambda self: sd})()
    opts = {"encoder_type": "BackboneEncoderUsingLastLayerIntoW", "input_nc": 3, "label_nc": 0}
    msg = r"model\.pt: the encoder's first conv takes 19 channels, but opts give input_nc=3, label_nc=0"
    with pytest.raises(ValueError, match=msg):
        load_inverter(_save(tmp_path, enc, g, opts))


# --- ReStyle ----------------------------------------------------------------------------------

@torch.no_grad()
def test_restyle_e4e_checkpoint_iterates_on_image_and_reconstruction(tmp_path, g):
    torch.manual_seed(7)
    enc = ProgressiveBackboneEncoder(50, "ir_se", N_STYLES, input_nc=6).eval()
    avg = torch.randn(N_STYLES, 512)
    opts = {"encoder_type": "ProgressiveBackboneEncoder", "output_size": G_SIZE, "input_nc": 6,
            "n_iters_per_batch": 3, "start_from_latent_avg": True, "dataset_type": "ffhq_encode"}
    inv = load_inverter(_save(tmp_path, enc, g, opts, avg), input_size=SMALL)
    assert inv.restyle and inv.n_iters == 3 and inv.input_nc == 3
    assert inv.encoder.progressive_stage == "all"
    # y_hat_0: the average latent's image at the input size (ReStyle's get_avg_image + face_pool)
    avg_image = F.adaptive_avg_pool2d(g.synthesis(avg[None], noise_mode="const"), SMALL)
    torch.testing.assert_close(inv.avg_image, avg_image, rtol=0, atol=1e-6)

    x = _images(seed=8)
    inputs = []
    hook = inv.encoder.register_forward_pre_hook(lambda m, args: inputs.append(args[0]))
    steps = inv.encode(x, return_steps=True)
    hook.remove()
    assert len(steps) == 3 and len(inputs) == 3
    # official run_on_batch: codes_1 = E([x, y_hat_0]) + latent_avg,
    # codes_t = E([x, y_hat_{t-1}]) + codes_{t-1}
    y_hat, prev = avg_image, avg
    for step, seen in zip(steps, inputs):
        assert seen.shape == (1, 6, SMALL, SMALL)
        torch.testing.assert_close(seen[:, :3], x, rtol=0, atol=0)
        torch.testing.assert_close(seen[:, 3:], y_hat, rtol=0, atol=1e-5)
        expected = enc(torch.cat([x, y_hat], 1)) + prev
        torch.testing.assert_close(step, expected, rtol=0, atol=1e-4)
        prev, y_hat = step, F.adaptive_avg_pool2d(g.synthesis(step, noise_mode="const"), SMALL)
    for a, b in zip(steps, steps[1:]):
        assert (b - a).abs().mean() > 1e-3  # every step moves the codes
    torch.testing.assert_close(inv.encode(x), steps[-1], rtol=0, atol=0)
    torch.testing.assert_close(inv.encode(x, n_iters=1), steps[0], rtol=0, atol=0)
    # ReStyle-e4e: every row is w0 + its delta; at stage 0 all rows are w0
    inv.encoder.progressive_stage = 0
    w0 = inv.encode(x, n_iters=1) - avg
    torch.testing.assert_close(w0, w0[:, :1].expand_as(w0), rtol=0, atol=1e-6)


@torch.no_grad()
def test_restyle_psp_fpn_checkpoint_for_cars(tmp_path, g):
    # ReStyle-pSp with pSp's FPN encoder: same encoder_type as pSp, told apart by n_iters_per_batch.
    torch.manual_seed(13)
    enc = GradualStyleEncoder(50, "ir_se", N_STYLES, input_nc=6).eval()
    avg = torch.randn(N_STYLES, 512)
    opts = {"encoder_type": "GradualStyleEncoder", "output_size": G_SIZE, "input_nc": 6,
            "n_iters_per_batch": 5, "dataset_type": "cars_encode"}
    inv = load_inverter(_save(tmp_path, enc, g, opts, avg))
    assert inv.restyle and inv.n_iters == 5 and inv.input_size == (192, 256)
    # official cars: rows 32:224 of the 256x256 pooled image (here the 16 px output's rows 2:14)
    official = F.adaptive_avg_pool2d(g.synthesis(avg[None], noise_mode="const")[:, :, 2:14], (192, 256))
    torch.testing.assert_close(inv.avg_image, official, rtol=0, atol=1e-6)
    x = torch.rand(1, 3, 192, 256, generator=torch.Generator().manual_seed(14)) * 2 - 1
    torch.testing.assert_close(inv.encode(x, n_iters=1), enc(torch.cat([x, official], 1)) + avg,
                               rtol=0, atol=1e-4)


def test_fit_matches_restyle_pooling_and_cars_crop(g):
    enc = _tiny_idinvert()
    img = torch.randn(1, 3, 512, 512)
    inv = Inverter(enc, g, input_size=(192, 256))
    # inference_utils.run_on_batch, cars without resize_outputs: crop rows 64:448, pool to (192, 256)
    torch.testing.assert_close(inv.fit(img), F.adaptive_avg_pool2d(img[:, :, 64:448], (192, 256)))
    # get_average_image: face_pool to 256, then rows 32:224
    torch.testing.assert_close(inv.fit(img), F.adaptive_avg_pool2d(img, 256)[:, :, 32:224])
    square = Inverter(enc, g, input_size=(256, 256))
    torch.testing.assert_close(square.fit(img), F.adaptive_avg_pool2d(img, 256))  # pSp's face_pool
    tall = Inverter(enc, g, input_size=(256, 128))
    torch.testing.assert_close(tall.fit(img), F.adaptive_avg_pool2d(img[..., 128:384], (256, 128)))


def test_restyle_encoders_official_names_and_shapes():
    # Built on the meta device: names and output shapes at ReStyle's 256x256 input, no compute.
    with torch.device("meta"):
        resnet = ResNetBackboneEncoder(n_styles=18)
        x = torch.empty(2, 6, 256, 256)
        for enc in (resnet, ResNetProgressiveBackboneEncoder(18), ResNetGradualStyleEncoder(18),
                    BackboneEncoder(50, "ir_se", 18)):
            assert enc(x).shape == (2, 18, 512)
    keys = set(resnet.state_dict())
    # torchvision's BasicBlock names under body.N (ReStyle's RESNET_MAPPING of layer1..layer4)
    assert {"conv1.weight", "bn1.running_var", "relu.weight", "body.0.conv1.weight",
            "body.3.downsample.0.weight", "body.7.downsample.1.running_mean", "body.15.bn2.weight",
            "styles.17.linear.bias"} <= keys
    assert not any(k.startswith(("body.0.downsample", "body.16", "fc.", "maxpool")) for k in keys)
    assert resnet.conv1.weight.shape == (64, 6, 7, 7)
    fpn = set(ResNetGradualStyleEncoder(18).state_dict())
    assert {"latlayer1.weight", "latlayer2.bias", "styles.17.convs.10.weight"} <= fpn
    with pytest.raises(ValueError, match="progressive encoders only"):
        resnet.progressive_stage = 0


# --- ganinv's own export ------------------------------------------------------------------------

@torch.no_grad()
def test_encoder_method_export_loads(tmp_path, g):
    enc = _tiny_idinvert()
    method = EncoderMethod(g, enc, start_from_latent_avg=False, lpips_lambda=0.0)
    method.export(tmp_path / "idinvert.pt")
    inv = load_inverter(tmp_path / "idinvert.pt")
    assert type(inv.encoder).__name__ == "IDInvertEncoder" and not inv.restyle
    assert (inv.n_styles, inv.input_size, inv.opts["generator"]["channel_max"]) == (N_STYLES, (16, 16), 64)
    assert inv.latent_avg is None  # IDInvert predicts W+ directly
    torch.testing.assert_close(inv.generator.latent_avg, method.latent_avg[0])  # truncation centre
    x = _images(size=G_SIZE, seed=9)
    codes = inv.encode(x)
    torch.testing.assert_close(codes, enc(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(inv(x), method.decode(method.encode(x)), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="only takes 16x16"):
        load_inverter(tmp_path / "idinvert.pt", input_size=32)


@torch.no_grad()
def test_small_e4e_export_infers_depth_heads_and_input_size(tmp_path, g):
    # ganinv's small FPN encoders: IR-SE18 trunk, heads sized for 32 px inputs, 32 wide
    torch.manual_seed(15)
    enc = Encoder4Editing(18, "ir", N_STYLES, input_size=SMALL, head_channels=32).eval()
    enc.progressive_stage = 2  # training state; the loaded model runs every delta
    method = EncoderMethod(g, enc, start_from_latent_avg=True, lpips_lambda=0.0)
    method.export(tmp_path / "e4e.pt")
    inv = load_inverter(tmp_path / "e4e.pt")
    e = inv.encoder
    assert (e.num_layers, e.mode, e.input_size, e.progressive_stage) == (18, "ir", SMALL, "all")
    assert e.styles[0].linear.weight.shape == (512, 32) and inv.input_size == (SMALL, SMALL)
    enc.progressive_stage = "all"
    x = _images(seed=16)
    torch.testing.assert_close(inv.encode(x), enc(x) + method.latent_avg, rtol=0, atol=1e-5)
    torch.testing.assert_close(inv(x), method.decode(method.encode(x)), rtol=0, atol=1e-5)


@torch.no_grad()
def test_hand_made_export_with_latent_avg_and_generator_dict(tmp_path, g):
    enc = _tiny_idinvert(use_bn=False)
    avg = torch.randn(N_STYLES, 512)
    arch = {"size": G_SIZE, "style_dim": 512, "n_mlp": 2, "channel_multiplier": 2, "channel_max": 64}
    opts = {"encoder_type": "IDInvertEncoder", "output_size": G_SIZE, "stylegan_size": G_SIZE,
            "n_styles": N_STYLES, "start_from_latent_avg": True, "learn_in_w": False, "input_nc": 3,
            "label_nc": 0, "encoder_num_layers": 50, "encoder_mode": "ir_se", "generator": arch}
    inv = load_inverter(_save(tmp_path, enc, g, opts, avg))
    x = _images(size=G_SIZE, seed=10)
    torch.testing.assert_close(inv.encode(x), enc(x) + avg, rtol=0, atol=1e-6)
    bad = _save(tmp_path, enc, g, {**opts, "generator": {**arch, "n_mlp": 8}}, avg, name="bad.pt")
    with pytest.raises(ValueError, match=r"bad\.pt: opts generator \{'n_mlp': \(8, 2\)\}"):
        load_inverter(bad)


# --- files that are not (or not quite) encoder checkpoints ------------------------------------

def test_stylegan_generator_file_is_refused(tmp_path, g):
    torch.save({"g_ema": g.state_dict(), "latent_avg": torch.zeros(512)}, tmp_path / "ffhq.pt")
    msg = r"ffhq\.pt: not a pSp/e4e/ReStyle checkpoint .*'g_ema'.*load_generator"
    with pytest.raises(ValueError, match=msg):
        load_inverter(tmp_path / "ffhq.pt")


def test_unknown_encoder_type_lists_supported(tmp_path, g):
    path = _save(tmp_path, _tiny_idinvert(), g, {"encoder_type": "HyperStyle"})
    with pytest.raises(ValueError, match="unknown encoder_type 'HyperStyle'; supported: ") as err:
        load_inverter(path)
    assert all(t in str(err.value) for t in SUPPORTED_TYPES)


def test_state_dict_mismatch_is_summarised(tmp_path, g):
    sd = _tiny_idinvert().state_dict()
    sd["block1.conv_1.weight"] = sd.pop("block1.conv1.weight")
    sd["block0.conv.weight"] = sd["block0.conv.weight"][:, :, :1]
    enc = type("Stub", (), {"state_dict": lambda self: sd})()
    path = _save(tmp_path, enc, g, {"encoder_type": "IDInvertEncoder"})
    with pytest.raises(ValueError) as err:
        load_inverter(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: encoder 'IDInvertEncoder' does not match")
    assert "1 missing (block1.conv1.weight)" in msg and "1 unexpected (block1.conv_1.weight)" in msg
    assert "1 with another shape (file vs model) (block0.conv.weight (8, 3, 1, 3) vs (8, 3, 3, 3))" in msg


@pytest.mark.parametrize("opts,avg,match", [
    ({"output_size": 1024}, None, r"opts output_size=1024 means 18 styles, but the decoder is a 16 px"),
    ({"n_styles": 18}, None, r"opts n_styles give 18 styles, but the decoder is a 16 px generator with 6"),
    ({"start_from_latent_avg": True}, None, r"no latent_avg in the file, but opts start_from_latent_avg"),
    ({}, torch.zeros(3, 512), r"latent_avg is \(3, 512\), expected \[6, 512\], \[1, 512\] or \[512\]"),
])
def test_inconsistent_files_are_refused(tmp_path, g, opts, avg, match):
    path = _save(tmp_path, _tiny_idinvert(), g, {"encoder_type": "IDInvertEncoder", **opts}, avg)
    with pytest.raises(ValueError, match=r"model\.pt: " + match):
        load_inverter(path)


def test_encoder_styles_must_match_the_generator(tmp_path, g):
    torch.manual_seed(2)
    enc = IDInvertEncoder(32, encoder_channels_base=8, encoder_channels_max=16)  # 8 styles
    path = _save(tmp_path, enc, g, {"encoder_type": "IDInvertEncoder"})
    with pytest.raises(ValueError, match="the encoder's weights give 8 styles, but the decoder is a 16 px "
                                         "generator with 6"):
        load_inverter(path)
