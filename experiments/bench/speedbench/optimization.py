"""Part ``optimization``: steps/s of ``OptimizationInversion`` (Image2StyleGAN recipe: W+, Adam 0.01,
MSE + VGG16 conv1_1/1_2/3_2/4_2 on a random trunk) for 4 images, embedded G at 64 px and
Generator(S, 512, 8, 2) at other sizes; w statistics precomputed, excluded. Steps timed and the
first (warm-up) step's FLOPs counted by the Trainer step timer."""
import tempfile

import torch

from .build import BIG, make_generator, nhwc, trainer_for
from .timing import step_timer


def specs(sizes, add):
    for s in sizes:
        add("optimization", f"optimization/w+_{s}", f"Image2StyleGAN W+ {s} px, 4 images", "optimization", s,
            generator="embedded" if s == 64 else dict(size=s, **BIG))


def run_optimization(spec, device):
    from ganinv.losses import VGG16Features
    from ganinv.methods.optimization import OptimizationInversion
    from ganinv.methods.targets import w_statistics

    g = make_generator(spec, "cpu").requires_grad_(False)  # the Trainer moves the module to the device
    with torch.no_grad():
        targets = g(torch.randn(spec["batch"], g.style_dim), noise_mode="const")
    vgg = VGG16Features(["conv1_1", "conv1_2", "conv3_2", "conv4_2"], pretrained=False)
    module = OptimizationInversion(g, targets, latent_space="w+", lr=0.01, mse_lambda=1.0, vgg_lambda=1.0,
                                   vgg=vgg, steps=spec["warmup"] + spec["repeats"], w_stats=w_statistics(g))
    nhwc(spec, module)
    timer = step_timer(count_flops=True)
    with tempfile.TemporaryDirectory() as tmp:
        trainer_for(spec, [timer], tmp).fit(module)
    return {"times_s": timer.step_times(spec["warmup"]), "flops": timer.flops}


KINDS = {"optimization": run_optimization}
