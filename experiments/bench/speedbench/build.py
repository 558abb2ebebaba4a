"""What the parts measure: ganinv's nets, inputs, Trainers and train.py configs, built from a spec."""
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
CONF = ROOT / "conf"
BIG = dict(style_dim=512, n_mlp=8, channel_multiplier=2)  # Generator(S, 512, 8, 2) beyond the embedded 64 px


def nhwc(spec, *modules):
    """With ``layout: nhwc``, store the modules' 4-D parameters and buffers channels_last, as
    ``train.py channels_last=true`` does (same math, NHWC kernels)."""
    if spec.get("layout") == "nhwc":
        from ganinv.runner import to_channels_last

        for m in modules:
            to_channels_last(m)


def nhwc_input(spec, x):
    return x.contiguous(memory_format=torch.channels_last) if spec.get("layout") == "nhwc" else x


def autocast(spec, device):
    bf16 = spec["precision"] == "bf16"
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if bf16 else nullcontext()


def make_generator(spec, device):
    """spec['generator']: 'embedded' (ganinv/assets/procedural64.pt) or Generator kwargs."""
    from ganinv.checkpoints import load_generator
    from ganinv.nets.stylegan2 import Generator

    g = spec["generator"]
    g = load_generator(str(ROOT / "ganinv/assets/procedural64.pt")) if g == "embedded" else Generator(**g)
    return g.to(device).eval()


ENCODER_SHAPE = ("num_layers", "mode", "input_size", "head_channels")  # FPN encoder kwargs in conf/encoder/*.yaml


def encoder_kwargs(spec):
    """spec['encoder']: a conf/encoder/*.yaml name ('embedded', 'checkpoint'; its architecture keys,
    the nets are measured from their random initialisation) or FPN encoder kwargs."""
    from omegaconf import OmegaConf

    e = spec["encoder"]
    if not isinstance(e, str):
        return dict(e)
    conf = OmegaConf.load(CONF / "encoder" / f"{e}.yaml")
    return {k: conf[k] for k in ENCODER_SHAPE}


def make_encoder(kind, spec, g, device):
    from ganinv.nets.e4e_encoder import Encoder4Editing
    from ganinv.nets.idinvert_encoder import IDInvertEncoder
    from ganinv.nets.psp_encoders import GradualStyleEncoder

    if kind == "idinvert":  # conf/method/idinvert.yaml
        return IDInvertEncoder(g.size, encoder_channels_base=64, encoder_channels_max=1024).to(device)
    cls = Encoder4Editing if kind == "e4e" else GradualStyleEncoder
    return cls(n_styles=g.n_latent, **encoder_kwargs(spec)).to(device)


def random_images(batch, size, device):
    """[batch, 3, size, size] uniform in [-1, 1]: the cost of the nets does not depend on content, and
    the procedural renderer would import Lightning (ganinv.data) into measurements that do not use it."""
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1


def procedural_batches(n, batch, size, device="cpu"):
    """n distinct procedural-face batches [batch, 3, size, size] in [-1, 1] (fixed seed)."""
    from ganinv.data.procedural import FACTORS, render_batch

    gen = torch.Generator().manual_seed(0)
    return [render_batch(torch.rand(batch, len(FACTORS), generator=gen), size).to(device) for _ in range(n)]


def trainer_for(spec, callbacks, root):
    import pytorch_lightning as pl

    return pl.Trainer(
        accelerator="gpu" if spec["device"] == "cuda" else "cpu",
        devices=1,
        precision="bf16-mixed" if spec["precision"] == "bf16" else "32-true",
        max_steps=spec["warmup"] + spec["repeats"],
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        default_root_dir=root,
    )


def compose_train(overrides, output_dir):
    """The train.py config for ``overrides``, composed as the CLI does (run dir ``output_dir``)."""
    from ganinv.config import compose

    return compose("train", overrides, output_dir)
