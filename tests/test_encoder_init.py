"""encoder.init: the official encoder initialisation (pSp ``load_weights``, ReStyle ResNet-34)."""
import pytest
import torch
import torchvision

from ganinv.nets.e4e_encoder import Encoder4Editing
from ganinv.nets.encoder_init import init_encoder
from ganinv.nets.irse import Backbone
from ganinv.nets.psp_encoders import GradualStyleEncoder
from ganinv.nets.restyle_encoders import ResNetBackboneEncoder


def fill_rule(module_fn, seed):
    """A module's state dict filled by the conformance kit's rule: entry i from seed + i
    (randn·0.1 for floats, zeros for num_batches_tracked), built on the meta device for shapes."""
    with torch.device("meta"):
        shapes = {k: (v.shape, v.dtype) for k, v in module_fn().state_dict().items()}
    out = {}
    for i, (key, (shape, dtype)) in enumerate(shapes.items()):
        g = torch.Generator().manual_seed(seed + i)
        floating = dtype.is_floating_point
        out[key] = torch.randn(shape, generator=g) * 0.1 if floating else torch.zeros(shape, dtype=dtype)
    return out


def official_load_result(encoder_keys, file_keys, label_nc=0):
    """What pSp's ``encoder.load_state_dict(ckpt, strict=False)`` copies, leaves missing and
    reports unexpected (after its ``label_nc != 0`` filter of keys containing 'input_layer').
    torch's BatchNorm never reports its ``num_batches_tracked`` missing (it keeps its own)."""
    if label_nc:
        file_keys = [k for k in file_keys if "input_layer" not in k]
    copied = [k for k in encoder_keys if k in file_keys]
    missing = [k for k in encoder_keys if k not in file_keys and not k.endswith("num_batches_tracked")]
    return copied, missing, [k for k in file_keys if k not in encoder_keys]


@pytest.fixture(scope="module")
def irse50_file(tmp_path_factory):
    sd = fill_rule(lambda: Backbone(112, 50, "ir_se", drop_ratio=0.6, affine=True), 41000)
    path = tmp_path_factory.mktemp("weights") / "model_ir_se50.pth"
    torch.save(sd, path)
    return path, sd


def _encoder(cls, seed, **kwargs):
    with torch.device("meta"):
        enc = cls(50, "ir_se", n_styles=4, **kwargs)
    pre = fill_rule(lambda: cls(50, "ir_se", n_styles=4, **kwargs), seed)
    enc.load_state_dict(pre, strict=True, assign=True)
    return enc, {k: v.clone() for k, v in pre.items()}


@pytest.mark.parametrize("cls, input_nc, label_nc", [
    (GradualStyleEncoder, 3, 0),   # pSp ffhq_encode
    (Encoder4Editing, 3, 0),       # e4e
    (GradualStyleEncoder, 1, 1),   # pSp sketch_to_face: input_layer skipped
    (GradualStyleEncoder, 19, 19),  # pSp seg_to_face
])
def test_irse50_init_copies_exactly_the_official_keys(irse50_file, cls, input_nc, label_nc):
    path, irse50 = irse50_file
    enc, pre = _encoder(cls, 42000, input_nc=input_nc)
    result = init_encoder(enc, "irse50", path, label_nc=label_nc)
    copied, missing, unexpected = official_load_result(list(pre), list(irse50), label_nc)
    assert sorted(result.missing_keys) == sorted(missing)
    assert sorted(result.unexpected_keys) == sorted(unexpected)
    assert {k.split(".")[0] for k in unexpected} == {"output_layer"}
    assert len(unexpected) == 12  # output_layer.{0 BN, 3 Linear, 4 BN1d}
    after = enc.state_dict()
    for key in copied:
        assert torch.equal(after[key], irse50[key]), key
    for key in set(pre) - set(copied):
        assert torch.equal(after[key], pre[key]), key
    heads = {k.split(".")[0] for k in missing}
    if label_nc:
        assert heads == {"input_layer", "styles", "latlayer1", "latlayer2"}
        assert not any(k.startswith("input_layer") for k in copied)
    else:
        assert heads == {"styles", "latlayer1", "latlayer2"}
        assert any(k.startswith("input_layer") for k in copied)


def test_irse50_init_refuses_what_it_cannot_do(irse50_file, tmp_path):
    path, _ = irse50_file
    enc, _ = _encoder(GradualStyleEncoder, 43000)
    missing_file = tmp_path / "nowhere" / "model_ir_se50.pth"
    with pytest.raises(FileNotFoundError) as err:
        init_encoder(enc, "irse50", missing_file)
    message = str(err.value)
    assert "\n" not in message and str(missing_file) in message and "model_ir_se50.pth" in message
    assert "put it there" in message
    small = GradualStyleEncoder(18, "ir_se", n_styles=2, input_size=64, head_channels=32)
    with pytest.raises(ValueError, match="50-layer ir_se trunk"):
        init_encoder(small, "irse50", path)
    with pytest.raises(ValueError, match="encoder.init must be one of"):
        init_encoder(enc, "imagenet", path)
    before = {k: v.clone() for k, v in small.state_dict().items()}
    assert init_encoder(small, "none") is None
    assert all(torch.equal(v, before[k]) for k, v in small.state_dict().items())


def test_resnet34_imagenet_init_copies_the_blocks_and_the_widened_stem(tmp_path):
    """ReStyle's models/psp.py: the torchvision file loaded with strict=False, so the blocks (built from
    resnet34(pretrained=True)) and exactly conv1 (RGB in channels 0-2, torch.randn in 3-5) and bn1."""
    tv = fill_rule(torchvision.models.resnet34, 44000)
    path = tmp_path / "resnet34-b627a593.pth"
    torch.save(tv, path)
    enc = ResNetBackboneEncoder(n_styles=2, input_nc=6)
    pre = {k: v.clone() for k, v in enc.state_dict().items()}
    result = init_encoder(enc, "resnet34_imagenet", path)
    after = enc.state_dict()
    starts = {1: 0, 2: 3, 3: 7, 4: 13}  # layer1..4 -> body.0, 3, 7, 13
    copied = 0
    for key, value in tv.items():
        head, block, rest = key.split(".", 2) if key.startswith("layer") else (key, None, None)
        if block is None:
            continue
        ours = f"body.{starts[int(head[5:])] + int(block)}.{rest}"
        assert torch.equal(after[ours], value), ours
        copied += 1
    assert copied == sum(1 for k in after if k.startswith("body."))
    assert torch.equal(after["conv1.weight"][:, :3], tv["conv1.weight"])
    extra = after["conv1.weight"][:, 3:]
    assert not torch.equal(extra, pre["conv1.weight"][:, 3:])
    assert abs(extra.std().item() - 1.0) < 0.05  # torch.randn: standard normal, as official
    for key in ("bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"):
        assert torch.equal(after[key], tv[key]), key
    assert torch.equal(after["relu.weight"], pre["relu.weight"])  # the PReLU keeps its initialisation
    assert all(k.startswith(("relu", "styles")) for k in result.missing_keys)
    with pytest.raises(ValueError, match="ReStyle ResNet-34"):
        init_encoder(GradualStyleEncoder(18, "ir_se", n_styles=2, input_size=64, head_channels=32),
                     "resnet34_imagenet", path)


@pytest.mark.parametrize("encoder, expected", [("checkpoint", "irse50"), ("embedded", "none"), ("random", "none")])
def test_config_switch_defaults(compose_train, encoder, expected):
    for method in ("psp", "e4e"):
        cfg = compose_train(f"+method={method}", f"encoder={encoder}")
        assert cfg.encoder.init == expected
        assert cfg.method.module.encoder_init == expected
        assert cfg.method.module.label_nc == 0
        if expected == "irse50":
            assert cfg.method.module.encoder_init_weights.endswith("model_ir_se50.pth")


def test_init_from_the_official_e4e_checkpoint_starts_with_its_codes(vector, tmp_path):
    """Fine-tuning (init_from): the official e4e full-checkpoint vector's encoder, decoder and
    latent_avg are loaded, so the module's first codes are the file's (official inference codes);
    a fresh latent D and optimizers, step 0."""
    from ganinv.checkpoints import load_generator
    from ganinv.methods.e4e import E4E

    v = vector("e4e_full_checkpoint_256")
    sd = v.state_dict()
    latent_avg = sd.pop("latent_avg")
    path = tmp_path / "e4e_ffhq_encode.pt"
    torch.save({"state_dict": sd, "latent_avg": latent_avg, "opts": v.config["checkpoint_opts"]}, path)
    g_path = tmp_path / "g.pt"
    torch.save({"g_ema": {k[8:]: t for k, t in sd.items() if k.startswith("decoder.")},
                "latent_avg": torch.zeros(512)}, g_path)
    generator = load_generator(g_path)
    with torch.device("meta"):
        encoder = Encoder4Editing(50, "ir_se", n_styles=generator.n_latent)
    module = E4E(generator, encoder, lpips_lambda=0.0, init_from=str(path), progressive_start=None)
    assert torch.equal(module.latent_avg, latent_avg)  # not the generator file's zeros
    module.eval()
    with torch.no_grad():
        v.check("codes", module.encode(v.tensors["x"]))
    assert module.init_latent_discriminator is None and module.global_step == 0
    bad = tmp_path / "not_a_checkpoint.pt"
    torch.save({"g_ema": {}}, bad)
    with pytest.raises(ValueError, match="not a pSp/e4e checkpoint"):
        E4E(generator, encoder, lpips_lambda=0.0, init_from=str(bad))
