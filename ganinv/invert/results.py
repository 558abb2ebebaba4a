"""invert.py's results: per-image scores, the files of each inverted image, ``grid.png`` and the
summary line. The folder layout and its atomic writers are :mod:`ganinv.outputs`.

Outputs are written at the generator resolution, or at 256 px with ``resize_outputs`` as the
official pSp scripts save them (``scripts/inference.py`` / ``style_mixing.py``:
``result.resize((256, 256))``); side-by-side files (``couples/``, ``multimodal/``) show the input
picture resized to the output (nearest neighbour for label maps and the low-resolution input).
"""
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..data.images import load_image
from ..losses import IDLoss, LPIPSLoss
from ..methods.base import image_grid
from ..methods.targets import fit_to
from ..metrics.image import compute_image_metrics, id_weights_path
from ..report import write_loss_curves

OFFICIAL_OUTPUT_SIZE = 256  # pSp scripts/inference.py and style_mixing.py save result.resize((256, 256))
BLANK = dict.fromkeys(("mse", "psnr", "ssim", "lpips", "id"), "")  # no RGB target to score against


@dataclass
class Tally:
    """What a run did: files that could not be used (``errors``, one line each), keys whose
    inversion diverged (non-finite latent or image, nothing written) and the number inverted."""

    errors: list = field(default_factory=list)
    diverged: list = field(default_factory=list)
    inverted: int = 0


class ImageMetrics:
    """Per-image MSE, PSNR, SSIM (:mod:`ganinv.metrics.image`), LPIPS when its pretrained network is
    available (else blank, with the reason kept for the summary) and ``id``, pSp/e4e's ArcFace IR-SE50
    cosine similarity (:func:`~ganinv.metrics.image.id_similarity`), when ``model_ir_se50.pth`` is
    where :func:`~ganinv.metrics.image.id_weights_path` looks (in ``weights_dir``, invert.py's
    ``paths.weights_dir``; ``id_weights``: a file instead; with neither, no ``id`` key and no
    metrics.csv column). Scored at the target's resolution (the
    generator's): IDLoss pools or upsamples to 256 before pSp's face crop, unlike ``ganinv.evaluate``,
    which resizes both images to 256 first."""

    def __init__(self, lpips_net, device, id_weights=None, weights_dir=None):
        self.device, self.lpips, self.lpips_missing = device, None, None
        try:
            self.lpips = LPIPSLoss(net=lpips_net, pnet_rand=False).to(device)
        except FileNotFoundError as e:
            self.lpips_missing = str(e)
        weights, self.id_loss = id_weights_path(id_weights, weights_dir), None
        if weights is not None:
            with torch.random.fork_rng(devices=[]):  # building the net draws (then loads) random weights:
                self.id_loss = IDLoss(weights_path=weights).to(device)  # the inversion's RNG is left as it was

    def __call__(self, recon, target):
        """Reconstructions [B, 3, R, R] (pooled to the target size) and targets [B, 3, S, S] ->
        one dict of floats per image."""
        target = target.to(self.device)
        recon = fit_to(recon.to(self.device), target.shape[-2:])
        out = compute_image_metrics(recon, target, lpips=self.lpips, id_loss=self.id_loss)
        return [{k: float(v[i]) for k, v in out.items()} for i in range(len(target))]


def resize_output(img, size=OFFICIAL_OUTPUT_SIZE):
    """Outputs [B, 3, S, S] at ``size`` px, as the official scripts save them: larger images average-
    pooled (pSp's ``face_pool``), smaller ones upsampled bilinearly (PIL ``resize`` of ``tensor2im``)."""
    if img.shape[-1] == size:
        return img
    if img.shape[-1] > size:
        return F.adaptive_avg_pool2d(img, (size, size))
    return F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False).clamp(-1, 1)


def panel(img, like, nearest=False):
    """An input picture [3, h, w] resized to the size of ``like`` [3, H, W], for side-by-side files."""
    if tuple(img.shape[-2:]) == tuple(like.shape[-2:]):
        return img
    mode = dict(mode="nearest") if nearest else dict(mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(img[None], size=tuple(like.shape[-2:]), **mode)[0].clamp(-1, 1)


def mean(rows, name):
    """The mean of a metrics.csv column over rows (blank values left out; nan when none)."""
    values = [float(r[name]) for r in rows if r.get(name) not in (None, "")]
    return sum(values) / len(values) if values else math.nan


def write_batch(cfg, run, outputs, batch, result, metrics, seconds, tally):
    """Score and write one inverted :class:`~ganinv.invert.inputs.Batch` (its
    :class:`~ganinv.invert.run.InversionResult`); a diverged image is tallied, not written. -> rows."""
    scores = metrics(result.images, batch.targets) if batch.targets is not None else [BLANK] * len(batch.keys)
    mixed = run.multimodal(result.latents, batch.keys) if run.latent_mask else None
    rows = []
    for i, key in enumerate(batch.keys):
        if not (torch.isfinite(result.latents[i]).all() and torch.isfinite(result.images[i]).all()):
            tally.diverged.append(key)
            continue
        write_image(cfg, run, outputs, batch, result, i, mixed[i] if mixed is not None else None)
        generator = result.generators[i] if result.generators else ""
        rows.append({"image": key, **scores[i], "seconds": seconds, "generator": generator})
    if rows:
        outputs.add_rows(rows)
        for curve in result.curves:  # after the images' files: a failed batch leaves no curve
            write_loss_curves(outputs.root / "curves" / f"{curve.name}.png", curve.values, curve.keys,
                              title=curve.name)
    tally.inverted += len(rows)
    return rows


def write_image(cfg, run, outputs, batch, result, i, mixed=None):
    """Every file of image i of the batch: reconstruction, codes, noise maps, aligned input,
    multimodal outputs (``mixed``: (images [K, 3, R, R], codes [K, n_latent, D])), couples, edits."""
    key, picture = batch.keys[i], batch.pictures[i]
    sized = resize_output if cfg.get("resize_outputs") else (lambda img: img)
    out = sized(result.images[i:i + 1])[0]
    outputs.write_image(key, out, result.latents[i], None if result.noises is None else result.noises[i],
                        batch.x[i] if cfg.align else None)
    kind = run.transform.kind if run.transform is not None else "rgb"
    if mixed is not None:
        images = sized(mixed[0])
        outputs.write_multimodal(key, panel(picture, images[0], kind == "labels"), images, mixed[1])
    if cfg.get("couple_outputs"):
        panels = [panel(picture, out, kind == "labels"), out]
        if kind == "superres":  # official: original | down-sampled (nearest) | output
            panels = [panel(batch.targets[i], out), panel(picture, out, nearest=True), out]
        outputs.write_couple(key, panels)
    for tag, strip in result.strips.items():
        outputs.write_edit(tag, key, strip[i])
    if result.steps is not None:  # save_steps: pass 1 ... N | input, and the codes [N, n_latent, D]
        shown = sized(result.step_images[i])
        outputs.write_picture("steps", key, torch.cat([*shown, panel(picture, shown[0], kind == "labels")], dim=-1))
        outputs.write_codes("steps", key, result.steps[i])
    if result.composites is not None:
        outputs.write_picture("composites", key, sized(result.composites[i:i + 1])[0])


def write_grid(outputs, inputs, size, limit, align, transform=None):
    """``grid.png``: input | reconstruction for the first ``limit`` finished images (read back from
    the files, so a re-run shows earlier images too) -> the number shown."""
    size = tuple(size) if not isinstance(size, int) else (size, size)
    rows = []
    for path, key in zip(inputs.paths, inputs.keys):
        if len(rows) >= limit:
            break
        if key not in outputs.rows or not outputs.path("reconstructions", key, ".png").is_file():
            continue
        source = outputs.path("aligned", key, ".png") if align else path
        try:
            target = transform.load(source).shown if transform is not None else load_image(source, size)
            recon = load_image(outputs.path("reconstructions", key, ".png"))
        except (ValueError, OSError):  # changed or removed since it was inverted
            continue
        rows.append((target, fit_to(recon[None], size)[0]))
    if rows:
        grid = image_grid([torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])])
        outputs.write_grid(grid * 2 - 1)
    return len(rows)


def summarize(cfg, inputs, outputs, tally, skipped, metrics, shown):
    """The run's summary dict (``id``, the mean ArcFace similarity, only when it was measured), also
    printed as one line (the last line on stdout)."""
    rows = list(outputs.rows.values())
    notes = inputs.notes + ([f"{outputs.csv}: {len(outputs.bad_rows)} bad rows ignored and dropped "
                             f"({'; '.join(outputs.bad_rows)})"] if outputs.bad_rows else [])
    errors, diverged, inverted = tally.errors, tally.diverged, tally.inverted
    summary = {"inverted": inverted, "skipped": skipped, "unreadable": errors, "diverged": diverged,
               "images": len(rows), "mse": mean(rows, "mse"), "psnr": mean(rows, "psnr"), "ssim": mean(rows, "ssim"),
               "lpips": mean(rows, "lpips"), "grid": shown, "output": str(outputs.root), "notes": notes,
               "keys": dict(zip(map(str, inputs.paths), inputs.keys))}
    lpips = f"{summary['lpips']:.4f}" if metrics.lpips is not None else f"blank ({metrics.lpips_missing})"
    if metrics.id_loss is not None:
        summary["id"] = mean(rows, "id")
    id_text = f" id {summary['id']:.4f}" if "id" in summary else ""
    bad = f" ({'; '.join(errors)})" if errors else ""
    diverged_text = f"{len(diverged)} diverged ({', '.join(diverged)}), nothing written; " if diverged else ""
    notes_text = f"; notes: {'; '.join(notes)}" if notes else ""
    print(f"invert.py: {inverted} inverted, {skipped} already done, {len(errors)} unreadable{bad}; {diverged_text}"
          f"over {len(rows)} images mse {summary['mse']:.4f} psnr {summary['psnr']:.2f} "
          f"ssim {summary['ssim']:.4f} lpips {lpips}{id_text} -> {outputs.root}{notes_text}")
    return summary
