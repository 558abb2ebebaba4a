"""Score reconstructions against their originals with the papers' protocols: ``python -m ganinv.evaluate``.

    python -m ganinv.evaluate RECONSTRUCTIONS ORIGINALS [--output DIR] [--lpips-random] [--id-weights PTH]
        [--fid] [--inception-weights PTH] [--lec-encoder PT --lec-direction PT --lec-factor 3] [--wandb]

RECONSTRUCTIONS: a folder of images, or an invert.py output folder (its ``reconstructions/<key>.png``, and
its metrics.csv ``seconds``, the per-image inversion time). Pairs match by relative path without extension
(originals keyed as invert.py keys them). Writes ``metrics.csv`` (per image) and ``summary.md`` (mean ± std)
atomically into ``--output`` (default RECONSTRUCTIONS/evaluation). Protocols:

- pSp ``scripts/calc_losses_on_images.py``: both images resized to 256x256 (PIL bilinear, no crop, as
  torchvision's ``Resize((256, 256))``; ``--size 0``: the reconstruction resized to the original's size),
  mapped to [-1, 1]; per image L2 = mean((x̂ − x)²) on [-1, 1] and LPIPS-alex; mean ± numpy's ``np.std``
  (population, ddof 0) over images.
- PSNR, SSIM (torchmetrics, :mod:`ganinv.metrics.image`) on [0, 1] images, data range L = 1: PSNR =
  10·log10(L² / mean((x̂ − x)²)); SSIM = mean over 11x11 Gaussian windows (σ 1.5) of
  (2μμ̂ + C1)(2σ_xx̂ + C2) / ((μ² + μ̂² + C1)(σ² + σ̂² + C2)), C1 = (0.01L)², C2 = (0.03L)².
- ID: cosine similarity of ArcFace IR-SE50 embeddings (pSp's ID loss: crop [35:223, 32:220], pool to 112)
  when ``--id-weights`` or ``$GANINV_WEIGHTS`` (else pretrained_models/) holds ``model_ir_se50.pth``
  (:func:`ganinv.metrics.image.id_weights_path`, as invert.py's own metrics.csv); no ID column otherwise.
  pSp's ``scripts/calc_id_loss_parallel.py`` scores with CurricularFace IR-101 after MTCNN
  alignment: not provided, nor dlib's network (``face-recognition-models``).
- FID / KID (torchmetrics, :class:`ganinv.metrics.DistributionMetrics`): originals the real set,
  reconstructions the fake set, torch-fidelity's Inception from the user's weights file.
- LEC, e4e ``metrics/LEC.py`` (:mod:`ganinv.metrics.lec`): ‖E(x) − f⁻¹(E(G(f(E(x)))))‖_F per original,
  f = w + factor·direction; the score is the mean of batch means (batches of 4) in the 1st-99th percentiles.
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ganinv.checkpoints.inverter import load_inverter
from ganinv.checkpoints.safe import atomic_write
from ganinv.cli import one_line_errors
from ganinv.data.folder import image_keys, walk_images
from ganinv.data.images import open_image, to_tensor
from ganinv.editing.interfacegan import load_direction
from ganinv.losses import IDLoss, LPIPSLoss
from ganinv.metrics import DistributionMetrics, compute_image_metrics, filter_outliers, lec_distances, shift_edit
from ganinv.metrics.image import id_weights_path
from ganinv.outputs import is_output_folder, read_metrics


def _folder(path, what):
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {path}")
    return path


def find_pairs(reconstructions, originals):
    """-> ([(key, reconstruction path, original path)], {key: seconds}) sorted by key."""
    root = _folder(reconstructions, "reconstructions")
    seconds = {}
    if (root / "reconstructions").is_dir():  # an invert.py output folder (metrics.csv may be absent)
        rows, _ = read_metrics(root / "metrics.csv")
        seconds = {k: float(r["seconds"]) for k, r in rows.items() if r.get("seconds", "") != ""}
        root = root / "reconstructions"
    gt_root = _folder(originals, "originals")
    gt = walk_images(gt_root, exclude=[root], is_excluded=is_output_folder).paths
    keys, _ = image_keys([p.relative_to(gt_root).as_posix() for p in gt])
    by_key = dict(zip(keys, gt))
    found = walk_images(root).paths
    pairs = [(k, p, by_key[k]) for p in found if (k := p.relative_to(root).with_suffix("").as_posix()) in by_key]
    if not pairs:
        raise ValueError(f"no matching pairs: none of the {len(found)} images under {root} has an original "
                         f"under {gt_root} (matched by relative path without extension)")
    return sorted(pairs), seconds


def load_pair(recon_path, orig_path, size=256):
    """Both images as [1, 3, H, W] in [-1, 1]: resized to size x size (PIL bilinear), or with size 0 the
    reconstruction resized to the original's size."""
    recon, orig = open_image(recon_path), open_image(orig_path)
    target = (size, size) if size else orig.size
    recon, orig = (im if im.size == target else im.resize(target, Image.BILINEAR) for im in (recon, orig))
    return to_tensor(recon)[None], to_tensor(orig)[None]


def lec_scores(originals, inverter, direction, factor=3.0, batch_size=4):
    """Per-image LEC [N] and e4e's score (per-batch means, 1-99 percentile filter, mean) for originals
    [N, 3, H, W] in [-1, 1], an :class:`~ganinv.checkpoints.inverter.Inverter` and a Direction."""
    n_latent, dim = inverter.generator.n_latent, inverter.generator.style_dim
    delta = torch.zeros(n_latent, dim)
    delta[direction.layers if direction.layers is not None else slice(None)] = direction.vector.float()
    edit, inverse = shift_edit(delta, factor)
    decode = lambda ws: inverter.decode(ws, resize=True)  # noqa: E731 -- e4e decodes with face_pool to 256
    batches = [lec_distances(b, inverter.encode, decode, edit, inverse) for b in originals.split(batch_size)]
    return torch.cat(batches), float(filter_outliers([b.mean().item() for b in batches]).mean())


def evaluate(reconstructions, originals, output=None, size=256, lpips=None, id_loss=None, distribution=None,
             lec=None, wandb=False):
    """Score every pair; write metrics.csv and summary.md into ``output`` (default
    RECONSTRUCTIONS/evaluation). ``lpips`` an LPIPSLoss, ``id_loss`` an IDLoss, ``distribution`` a
    DistributionMetrics, ``lec`` (inverter, direction, factor): each optional. -> (rows, summary) where
    summary maps each metric to (mean, std, n) and FID / KID / LEC score to (value, None, n)."""
    pairs, seconds = find_pairs(reconstructions, originals)
    output = Path(output) if output is not None else Path(reconstructions) / "evaluation"
    rows, gts = [], []
    for key, recon_path, orig_path in pairs:
        y_hat, y = load_pair(recon_path, orig_path, size)
        values = compute_image_metrics(y_hat, y, lpips=lpips, id_loss=id_loss)
        rows.append({"image": key, **{k: float(v[0]) for k, v in values.items()}})
        if key in seconds:
            rows[-1]["seconds"] = seconds[key]
        if distribution is not None:
            distribution.update(y, real=True)
            distribution.update(y_hat, real=False)
        gts.append(y)
    extra = {}
    if lec is not None:
        per_image, score = lec_scores(torch.cat(gts), *lec)
        for row, value in zip(rows, per_image.tolist()):
            row["lec"] = value
        extra["lec_e4e"] = score
    if distribution is not None:
        extra.update(distribution.compute())
    columns = [c for c in ("mse", "psnr", "ssim", "lpips", "id", "lec", "seconds") if any(c in r for r in rows)]
    summary = {}
    for c in columns:
        vals = np.array([r[c] for r in rows if c in r], dtype=np.float64)
        with np.errstate(invalid="ignore"):  # PSNR of identical images is inf: mean inf, std nan
            summary[c] = (float(np.mean(vals)), float(np.std(vals)), len(vals))
    summary.update({k: (v, None, len(rows)) for k, v in extra.items()})
    write_outputs(output, rows, ["image", *columns], summary, reconstructions, originals)
    if wandb:
        log_wandb(output, summary)
    return rows, summary


def write_outputs(output, rows, fields, summary, recon_root, gt_root):
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: repr(v) if isinstance(v, float) else v for k, v in r.items()} for r in rows)
    atomic_write(output / "metrics.csv", lambda f: f.write(text.getvalue().encode()))
    lines = [f"# Evaluation of {recon_root} against {gt_root}", "", "| metric | mean ± std | n |", "|---|---|---|"]
    for name, (mean, std, n) in summary.items():
        lines.append(f"| {name} | {mean:.9g}" + (f" ± {std:.9g}" if std is not None else "") + f" | {n} |")
    atomic_write(output / "summary.md", lambda f: f.write(("\n".join(lines) + "\n").encode()))


def log_wandb(output, summary):
    """An offline W&B run under ``output`` whose summary holds each mean (and ``<name>_std``)."""
    import wandb  # noqa: PLC0415 -- only with --wandb
    run = wandb.init(mode="offline", dir=str(output), job_type="evaluate", name=f"evaluate {output}")
    run.summary.update({name: mean for name, (mean, _, _) in summary.items()})
    run.summary.update({f"{name}_std": std for name, (_, std, _) in summary.items() if std is not None})
    run.finish()


def build(args):
    """The optional networks the CLI flags ask for, each failing with one line when its file is absent."""
    lpips = LPIPSLoss(net="alex", resize=256, pnet_rand=args.lpips_random)
    weights = id_weights_path(args.id_weights)
    id_loss = IDLoss(weights_path=weights) if weights is not None else None
    distribution = DistributionMetrics(weights_path=args.inception_weights) if args.fid else None
    if (args.lec_encoder is None) != (args.lec_direction is None):
        raise ValueError("LEC needs both --lec-encoder and --lec-direction")
    lec = None if args.lec_encoder is None else (
        load_inverter(args.lec_encoder), load_direction(args.lec_direction), args.lec_factor)
    return dict(lpips=lpips, id_loss=id_loss, distribution=distribution, lec=lec)


def main(argv=None):
    p = argparse.ArgumentParser(prog="ganinv.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("reconstructions", help="folder of reconstructions, or an invert.py output folder")
    p.add_argument("originals", help="folder of the original images")
    p.add_argument("--output", help="where metrics.csv and summary.md go (default RECONSTRUCTIONS/evaluation)")
    p.add_argument("--size", type=int, default=256, help="resize both to SIZE x SIZE (pSp: 256; 0: original's)")
    p.add_argument("--lpips-random", action="store_true", help="LPIPS on a random AlexNet trunk (offline tests)")
    p.add_argument("--id-weights", help="model_ir_se50.pth (default: $GANINV_WEIGHTS/ or pretrained_models/)")
    p.add_argument("--fid", action="store_true", help="also FID and KID (torch-fidelity Inception weights)")
    p.add_argument("--inception-weights", help="weights-inception-2015-12-05-6726825d.pth (default: torch hub)")
    p.add_argument("--lec-encoder", help="encoder checkpoint for e4e's LEC")
    p.add_argument("--lec-direction", help="InterFaceGAN direction (.pt / .npy) for LEC")
    p.add_argument("--lec-factor", type=float, default=3.0, help="edit factor for LEC (e4e: 3)")
    p.add_argument("--wandb", action="store_true", help="also write an offline W&B run with the summary")
    args = p.parse_args(argv)
    with one_line_errors("ganinv.evaluate"):
        _folder(args.reconstructions, "reconstructions")
        _folder(args.originals, "originals")
        rows, summary = evaluate(args.reconstructions, args.originals, args.output, args.size, wandb=args.wandb,
                                 **build(args))
        print(f"{len(rows)} pairs: " + ", ".join(
            f"{k} {m:.4g}" + (f" ± {s:.4g}" if s is not None else "") for k, (m, s, _) in summary.items()))


if __name__ == "__main__":
    sys.exit(main())
