"""Quality of the shipped embedded generator (ganinv/assets/procedural64.pt).

A factor regressor trained on real procedural faces predicts the 12 rendering factors of
(a) real dataset images and (b) generator samples; the per-factor gap between the two
distributions (mean and std) says how well the samples cover the factors. Also writes a
sample grid. Then the InterFaceGAN boundary of every factor, fitted as the shipped directions are
(``python -m ganinv.editing fit-boundary --procedural all``: ``--boundary-samples`` w = mapping(z),
regressor labels of G(w), the official selection of the top/bottom 2 %, 70/30 split, linear SVC):
its validation accuracy (what the official ``train_boundary`` logs) and its accuracy on the samples
not chosen (labelled by the mid score), which says how linearly the factor is laid out in W.

    python experiments/embedded_generator/evaluate.py [--n 2000] [--generator PT] [--out DIR]

Prints markdown tables and writes results.json (and samples.png) to ``--out`` (default: beside
this script); ``--generator`` (default the shipped asset) evaluates a candidate checkpoint.
"""
import argparse
import json
from pathlib import Path

import torch
import torchvision

from ganinv.checkpoints import load_generator
from ganinv.config import ASSETS
from ganinv.data.procedural import FACTORS, render_batch
from ganinv.editing.boundary import train_boundary
from ganinv.editing.labels import procedural_scores
from ganinv.metrics.editability import train_factor_regressor


@torch.no_grad()
def predict(regressor, images, chunk=256):
    return torch.cat([regressor(images[i:i + chunk]) for i in range(0, len(images), chunk)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--regressor-steps", type=int, default=600)
    ap.add_argument("--boundary-samples", type=int, default=20000)
    ap.add_argument("--generator", default=str(ASSETS / "procedural64.pt"))
    ap.add_argument("--out", default=str(Path(__file__).parent))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    regressor, stats = train_factor_regressor(steps=args.regressor_steps, seed=0)
    g = load_generator(args.generator)
    gen = torch.Generator().manual_seed(1)
    real = render_batch(torch.rand(args.n, len(FACTORS), generator=gen), 64)
    z = torch.randn(args.n, g.style_dim, generator=gen)
    with torch.no_grad():
        fake = torch.cat([g(z[i:i + 200], noise_mode="random").clamp(-1, 1) for i in range(0, args.n, 200)])
    pr, pf = predict(regressor, real), predict(regressor, fake)
    rows = []
    for i, name in enumerate(FACTORS):
        rows.append({"factor": name, "real_mean": pr[:, i].mean().item(), "fake_mean": pf[:, i].mean().item(),
                     "real_std": pr[:, i].std().item(), "fake_std": pf[:, i].std().item()})
    print(f"regressor validation MSE {stats['val_mse']:.4f} (predict-the-mean {stats['baseline_mse']:.4f})\n")
    print("| factor | real mean | sample mean | abs gap | real std | sample std | abs gap |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        mgap, sgap = abs(r["real_mean"] - r["fake_mean"]), abs(r["real_std"] - r["fake_std"])
        print(f"| {r['factor']} | {r['real_mean']:.3f} | {r['fake_mean']:.3f} | {mgap:.3f} "
              f"| {r['real_std']:.3f} | {r['fake_std']:.3f} | {sgap:.3f} |")
    mean_gap = sum(abs(r["real_mean"] - r["fake_mean"]) for r in rows) / len(rows)
    std_gap = sum(abs(r["real_std"] - r["fake_std"]) for r in rows) / len(rows)
    print(f"\nmean |mean gap| {mean_gap:.3f}, mean |std gap| {std_gap:.3f} (factors are uniform on [0, 1]: std 0.289)")
    w, scores = procedural_scores(g, regressor, args.boundary_samples, seed=0)
    print(f"\nInterFaceGAN boundaries ({args.boundary_samples} samples, top/bottom 2 %):\n")
    print("| factor | validation accuracy | accuracy on the rest |")
    print("|---|---|---|")
    for i, r in enumerate(rows):
        fit = train_boundary(w, scores[:, i])
        r["boundary_val_accuracy"], r["boundary_remaining_accuracy"] = fit.val_accuracy, fit.remaining_accuracy
        print(f"| {r['factor']} | {fit.val_accuracy:.3f} | {fit.remaining_accuracy:.3f} |")
    (out / "results.json").write_text(json.dumps({"generator": args.generator, "regressor": stats, "factors": rows,
                                                  "mean_gap": mean_gap, "std_gap": std_gap,
                                                  "boundary_samples": args.boundary_samples}, indent=1))
    torchvision.utils.save_image(fake[:64], out / "samples.png", nrow=8, normalize=True, value_range=(-1, 1))


if __name__ == "__main__":
    main()
