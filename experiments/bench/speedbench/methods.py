"""Part ``methods``: training iterations/s of the pSp, e4e and IDInvert LightningModules composed
from ``conf/`` as ``train.py`` does (``loss=embedded``; e4e at stage 'all', ``progressive_start=null``;
image grids off): at 64 px the embedded generator with the embedded encoder config, at other sizes
Generator(S, 512, 8, 2) random with the checkpoint encoder config (IR-SE50, 512-wide heads) and a
random D for IDInvert. A Lightning Trainer runs warm-up + repeats steps on pre-rendered procedural
faces; a callback times each step from ``on_train_batch_start`` to ``on_train_batch_end`` (the
whole training_step, backward and optimizer steps, without data loading), warm-up steps dropped.
Timing the Trainer's own steps keeps manual optimisation, precision plugins and logging as in a
run. The callback counts the FLOPs of the first (warm-up) step for pSp only: FlopCounterMode's
module tracker fails inside ``torch.autograd.grad`` (the R1 penalties of e4e's latent D and
IDInvert's D).
"""
import tempfile

import torch

from .build import compose_train, nhwc, nhwc_input, procedural_batches, trainer_for
from .timing import step_timer

METHODS = ("psp", "e4e", "idinvert")


def train_overrides(size):
    """64 px: the embedded G and encoder config; other sizes: Generator(size, 512, 8, 2) random and
    the checkpoint encoder config at that input size, randomly initialised (``encoder.init=none``:
    the cost is the same, and no ArcFace file is needed offline)."""
    if size == 64:
        return []
    return ["generator=random", f"generator.size={size}", "generator.n_mlp=8", "generator.channel_max=512",
            "encoder=checkpoint", f"encoder.input_size={size}", "encoder.init=none"]


def specs(sizes, add):
    for s in sizes:
        for m in METHODS:
            extra = ["method.module.progressive_start=null"] if m == "e4e" else []
            add("methods", f"methods/{m}_{s}", f"{m} {s} px", "method", s, count_flops=m == "psp",
                overrides=[f"+method={m}", *train_overrides(s), "method.module.image_every=0", *extra])


def run_method(spec, device):
    """spec['overrides']: train.py overrides (``+method=...`` first) composing the module."""
    from hydra.utils import instantiate

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_train(spec["overrides"], tmp)
        module = instantiate(cfg.method.module)
        nhwc(spec, module)
        n = spec["warmup"] + spec["repeats"]
        imgs = [nhwc_input(spec, x) for x in procedural_batches(min(n, 4), spec["batch"], module.generator.size)]
        batches = [{"x": imgs[i % len(imgs)], "y": imgs[i % len(imgs)]} for i in range(n)]
        timer = step_timer(count_flops=spec.get("count_flops", True))
        loader = torch.utils.data.DataLoader(batches, batch_size=None)  # the ready batches as they are
        trainer_for(spec, [timer], tmp).fit(module, train_dataloaders=loader)
    return {"times_s": timer.step_times(spec["warmup"]), "flops": timer.flops}


KINDS = {"method": run_method}
