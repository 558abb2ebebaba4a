"""The end-to-end demo on the embedded default (``make demo``), fully offline on a CPU.

1. trains e4e on procedural faces against the shipped 64 px StyleGAN2 (``train.py``);
2. inverts held-out faces by the trained encoder and by optimisation (``invert.py``);
3. fits an InterFaceGAN hair-tone boundary on encoder codes of labelled faces and applies it;
4. writes ``report.html`` + ``report.png`` (input | reconstructions | edits, metrics table) and each
   inversion's ``index.html`` (:func:`ganinv.report.write_index`).

    python -m ganinv.demo [--out outputs/demo] [--train-steps 300] [--opt-steps 300] [--n-images 8] [--max-mse 0.05]

It exits non-zero unless both reconstructions' mean held-out MSE (on [-1, 1]) is below ``--max-mse``.
"""
import argparse
import base64
import html
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torchvision

from . import outputs
from .checkpoints.safe import atomic_write
from .config import ASSETS
from .data.images import load_image, save_image
from .data.procedural import ProceduralFaces
from .outputs import writing
from .report import STYLE, html_table, link, write_html, write_index

ROOT = Path(__file__).resolve().parent.parent
# Hair tone: a factor the 64 px generator and a short-trained encoder both capture (boundary accuracy
# ~0.9 on e4e codes); experiments/embedded_generator/README.md has every factor's boundary.
EDIT_FACTOR = "hair_tone"
DEMO_STYLE = STYLE.replace("max-width:1100px", "max-width:900px")


def run(script, *overrides, log, prog="demo"):
    """Run train.py / invert.py as a user would; its output goes to ``log``; a failure exits with
    ``<prog>: <script> failed ...`` and the log's last lines."""
    t0 = time.time()
    with open(log, "w") as f:
        r = subprocess.run([sys.executable, str(ROOT / script), *overrides], stdout=f, stderr=subprocess.STDOUT,
                           cwd=ROOT, env={**os.environ, "WANDB_SILENT": "true"})
    if r.returncode != 0:
        tail = Path(log).read_text().strip().splitlines()[-5:]
        raise SystemExit(f"{prog}: {script} failed (exit {r.returncode}), see {log}:\n" + "\n".join(tail))
    return time.time() - t0


def read_metrics(path):
    """An invert.py metrics.csv -> (rows [dict of strings], {mse, psnr, ssim, seconds: mean over the
    rows}). Read by :func:`ganinv.outputs.read_metrics` (a file ganinv did not write is refused in one
    line; garbage rows are left out); a file without rows is one line naming it."""
    rows = list(outputs.read_metrics(path)[0].values())
    if not rows:
        raise ValueError(f"{path}: no metrics rows (missing or empty)")
    mean = {k: sum(float(r[k]) for r in rows) / len(rows) for k in ("mse", "psnr", "ssim", "seconds")}
    return rows, mean


@torch.no_grad()
def factor_edit(encoder_ckpt, inputs, sigmas=(-4.0, 4.0)):
    """The shipped InterFaceGAN boundary of EDIT_FACTOR (``ganinv/assets/procedural64_<factor>.pt``,
    fitted in the generator's W with sklearn's linear SVC by ``python -m ganinv.editing fit-boundary``;
    its record is ``procedural64_directions.json``) applied to the trained encoder's codes.

    Strengths are in units of the spread of the generator's W along the boundary normal (``sigmas``
    standard deviations, the recorded ``sigma``), since a unit step means little in this W. Returns the
    edited images (one [B, 3, 64, 64] tensor per strength), the boundary's validation accuracy and the
    strengths.
    """
    from .checkpoints import load_inverter
    from .editing import apply_direction, load_direction

    record = json.loads((ASSETS / "procedural64_directions.json").read_text())["factors"][EDIT_FACTOR]
    direction = load_direction(ASSETS / record["file"])
    strengths = [k * record["sigma"] for k in sigmas]
    inv = load_inverter(encoder_ckpt)
    edited = apply_direction(inv.encode(inputs), direction, strengths)  # [S, B, L, D], every row
    return [inv.decode(e) for e in edited], record["val_accuracy"], strengths


def report(out, inputs, rows, metrics, edits, timings, accuracy, strengths, pages=()):
    """report.png: one row per image (input | e4e | optimisation | edit − | edit +); report.html:
    it, the metrics table and links to ``pages`` (the invert runs' index.html, relative to ``out``)."""
    columns = [inputs, *rows, *edits]
    grid = torch.stack([c.clamp(-1, 1) for c in columns], 1).flatten(0, 1)
    with writing(out / "report.png"):
        atomic_write(out / "report.png", lambda f: torchvision.utils.save_image(
            grid, f, format="png", nrow=len(columns), normalize=True, value_range=(-1, 1), padding=2))
    png = base64.b64encode((out / "report.png").read_bytes()).decode()
    table = html_table(["method", "MSE", "PSNR", "SSIM", "s / image"],
                       [[name, f"{m['mse']:.4f}", f"{m['psnr']:.2f}", f"{m['ssim']:.3f}", f"{m['seconds']:.3f}"]
                        for name, m in metrics.items()])
    steps = "".join(f"<li>{html.escape(k)}: {v:.0f} s</li>" for k, v in timings.items())
    links = "".join(f'<li><a href="{link(p, out)}">{html.escape(Path(p).parent.name)}</a></li>' for p in pages)
    body = f"""<h1>ganinv demo — embedded default</h1>
<p>Held-out procedural faces inverted into the shipped 64 px StyleGAN2. Columns: input | e4e (encoder, one
forward pass) | optimisation (W+ projector) | {EDIT_FACTOR} {strengths[0]:+.1f} | {EDIT_FACTOR}
{strengths[1]:+.1f} (the shipped InterFaceGAN boundary, fitted in the generator's W; validation accuracy
{accuracy:.2f}; strengths are ±4 standard deviations of the generator's W along the boundary normal).</p>
<img src="data:image/png;base64,{png}" alt="input, reconstructions and edits" style="width:100%">
<h2>Reconstruction (mean over {len(inputs)} held-out images; MSE on [-1, 1])</h2>
{table}
<h2>Per-image pages (metrics.csv, loss curves)</h2><ul>{links}</ul>
<h2>Time</h2><ul>{steps}</ul>"""
    write_html(out / "report.html", "ganinv demo", body, style=DEMO_STYLE)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="outputs/demo")
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--opt-steps", type=int, default=300)
    ap.add_argument("--n-images", type=int, default=8)
    ap.add_argument("--max-mse", type=float, default=0.05,
                    help="fail unless every method's held-out MSE (on [-1, 1]) is below this bound")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    if not (ASSETS / "procedural64.pt").is_file():
        raise SystemExit(f"demo: the embedded generator is missing: {ASSETS / 'procedural64.pt'}")
    out.mkdir(parents=True, exist_ok=True)
    timings = {}

    print(f"[1/4] training e4e for {args.train_steps} iterations on procedural faces ...", flush=True)
    timings["train e4e"] = run(
        "train.py", "+method=e4e", f"trainer.max_steps={args.train_steps}", "method.module.progressive_start=null",
        "method.module.lr=3e-4", "logger=csv", f"trainer.val_check_interval={args.train_steps}",
        "+trainer.enable_progress_bar=false", f"hydra.run.dir={out / 'train'}", log=out / "train.log")
    encoder = out / "train" / "export" / "e4e.pt"

    print(f"[2/4] inverting {args.n_images} held-out faces by encoder and by optimisation ...", flush=True)
    test = ProceduralFaces(args.n_images, 64, seed=0, split="test")
    for i in range(args.n_images):
        save_image(test[i][0], out / "inputs" / f"face_{i:02d}.png")
    timings["invert e4e"] = run("invert.py", f"input={out / 'inputs'}", f"output={out / 'e4e'}", f"method={encoder}",
                                log=out / "invert_e4e.log")
    timings["invert optimisation"] = run(
        "invert.py", f"input={out / 'inputs'}", f"output={out / 'optimisation'}", "method=optimize",
        "inversion.latent_space=w+", f"inversion.steps={args.opt_steps}", "inversion.mse_lambda=1.0",
        f"batch_size={args.n_images}", log=out / "invert_optimisation.log")

    print(f"[3/4] editing {EDIT_FACTOR} with the shipped boundary ...", flush=True)
    t0 = time.time()
    names = [f"face_{i:02d}" for i in range(args.n_images)]
    inputs = torch.stack([load_image(out / "inputs" / f"{n}.png") for n in names])
    edits, accuracy, strengths = factor_edit(encoder, inputs)
    timings["edit"] = time.time() - t0

    print("[4/4] writing the report ...", flush=True)
    metrics, recons = {}, []
    for name, folder in (("e4e", "e4e"), ("optimisation (W+)", "optimisation")):
        metrics[name] = read_metrics(out / folder / "metrics.csv")[1]
        recons.append(torch.stack([load_image(out / folder / "reconstructions" / f"{n}.png") for n in names]))
    pages = [write_index(out / folder, {n: out / "inputs" / f"{n}.png" for n in names}, title=f"demo: {name}")
             for name, folder in (("e4e", "e4e"), ("optimisation (W+)", "optimisation"))]
    report(out, inputs, recons, metrics, edits, timings, accuracy, strengths, pages)
    for name, m in metrics.items():
        print(f"  {name:18s} MSE {m['mse']:.4f}  PSNR {m['psnr']:.2f}  SSIM {m['ssim']:.3f}  {m['seconds']:.3f} s/img")
    print(f"report: {out / 'report.html'} (and report.png)")
    worst = max(metrics, key=lambda name: metrics[name]["mse"])
    if metrics[worst]["mse"] >= args.max_mse:
        raise SystemExit(f"demo: {worst} held-out MSE {metrics[worst]['mse']:.4f} is not below the bound "
                         f"--max-mse {args.max_mse}")


if __name__ == "__main__":
    main()
