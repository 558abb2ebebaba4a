"""Optimisation inversion on CPU: seconds per step and final MSE / LPIPS after N steps, printed as
a markdown table.

    python experiments/bench/optimization_speed.py [--sizes 64 256] [--steps 100 500 1000]
        [--preset projector] [--images 1] [--threads 2] [--generator PATH]

Each (size, steps) pair is one ``trainer.fit`` of :class:`OptimizationInversion` with the
preset's recipe (its schedule depends on the step count, so every count is its own run) on
targets G(w*) of known random codes. Without ``--generator`` the generator is a randomly
initialised ``Generator(size, 512, 8, channel_multiplier=2)``; LPIPS (loss and metric) runs on
a random VGG trunk (``pnet_rand``), as no ImageNet weights are available offline. Seconds per
step are the fit's wall time over its steps (w statistics precomputed, so excluded).
"""
import argparse
import json
import logging
import platform
import time
import warnings

import pytorch_lightning as pl
import torch

from ganinv.checkpoints import load_generator
from ganinv.losses import LPIPSLoss, VGG16Features
from ganinv.methods.optimization import OptimizationInversion
from ganinv.methods.targets import w_statistics
from ganinv.nets.stylegan2 import Generator

PRESETS = {
    # conf/invert/inversion/projector.yaml (rosinality/NVIDIA projector)
    "projector": dict(latent_space="w", schedule="projector", lr=0.1, latent_noise=0.05, noise_init="random",
                      optimize_noise=True, noise_regularize=1e5, mse_lambda=0.0, lpips_lambda=1.0),
    # conf/invert/inversion/image2stylegan.yaml
    "image2stylegan": dict(latent_space="w+", lr=0.01, mse_lambda=1.0, vgg_lambda=1.0),
}


def run(g, size, steps, preset, n_images, stats, lpips, vgg):
    torch.manual_seed(1)
    with torch.no_grad():
        x = g.synthesis(g.broadcast(g.mapping(torch.randn(n_images, g.style_dim))))
    module = OptimizationInversion(g, x, steps=steps, lpips=lpips, vgg=vgg, w_stats=stats, **PRESETS[preset])
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    t0 = time.perf_counter()
    trainer.fit(module)
    seconds = (time.perf_counter() - t0) / steps
    rec = module.result["images"]
    with torch.no_grad():
        return {"size": size, "steps": steps, "images": n_images, "s_per_step": seconds,
                "mse": (rec - x).pow(2).mean().item(), "lpips": lpips(rec, x).item()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--steps", type=int, nargs="+", default=[100, 500, 1000])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="projector")
    ap.add_argument("--images", type=int, default=1, help="images inverted together (one batch)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--generator", default=None, help="a checkpoint instead of random generators (one size)")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    lpips = LPIPSLoss(net="vgg", pnet_rand=True)
    vgg = VGG16Features(["conv1_1", "conv1_2", "conv3_2", "conv4_2"], pretrained=False)
    rows = []
    for size in args.sizes:
        torch.manual_seed(0)
        if args.generator:
            g = load_generator(args.generator)
        else:
            g = Generator(size, 512, 8, channel_multiplier=2).eval()
        stats = w_statistics(g)
        for steps in args.steps:
            rows.append(run(g, g.size, steps, args.preset, args.images, stats, lpips, vgg))
            print(json.dumps(rows[-1]), flush=True)
        if args.generator:
            break
    machine = platform.processor() or platform.machine()
    print(f"\nOptimisation inversion ({args.preset}), CPU fp32, {args.threads} threads, "
          f"torch {torch.__version__}, {machine}; generator: {args.generator or 'random'}; "
          "LPIPS-VGG with a random trunk\n")
    print("| size | steps | images | s / step | final MSE | final LPIPS |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['steps']} | {r['images']} | {r['s_per_step']:.3f} | {r['mse']:.4f} | "
              f"{r['lpips']:.4f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
