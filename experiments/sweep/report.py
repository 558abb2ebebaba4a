"""Collect a sweep's result.json files into one table, one plot and one W&B report run.

    python experiments/sweep/report.py outputs/sweep/embedded [--out experiments/results] [--no-wandb]

Writes ``sweep.md`` (one row per method, the machine and budget, and whether the orderings the
papers report hold), ``tradeoff.png`` (distortion vs editability, one labelled point per method)
and ``sweep.json`` into ``--out``. A ``## Notes`` section written by hand into an existing
``sweep.md`` is kept when the report is regenerated. W&B (offline, nothing leaves the machine):
one run with group = the sweep's name and job_type = report, holding the table and the plot, under
``<sweep_dir>/wandb`` next to the jobs' runs (``wandb sync`` uploads them).
"""
import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from sweep import JOBS  # noqa: E402
from yardsticks import write_json  # noqa: E402

from ganinv.checkpoints.safe import atomic_write  # noqa: E402
from ganinv.runner import write_text_atomic  # noqa: E402

NOTES = "## Notes"
# (claim, paper, metric, a, b, sign): the claim holds when sign·(metric[a] − metric[b]) < 0
CLAIMS = [
    ("pSp reconstructs better than e4e", "e4e", "mse", "psp", "e4e", 1),
    ("e4e edits better than pSp", "e4e", "editability", "e4e", "psp", -1),
    ("e4e codes are closer to W than pSp's", "e4e", "latent_d_p_real", "e4e", "psp", -1),
    ("IDInvert's optimisation stays closer to W than plain W+ optimisation", "IDInvert", "latent_d_p_real",
     "opt_domain", "opt_wplus", -1),
    ("IDInvert's optimisation edits better than plain W+ optimisation", "IDInvert", "editability",
     "opt_domain", "opt_wplus", -1),
    ("W+ optimisation is more faithful than W optimisation", "Image2StyleGAN", "mse", "opt_wplus", "opt_w", 1),
    ("W optimisation is more editable than W+ optimisation", "e4e / PTI", "editability", "opt_w", "opt_wplus", -1),
    ("W+ optimisation is more faithful than every encoder", "ReStyle / e4e", "mse", "opt_wplus",
     ("psp", "e4e", "idinvert"), 1),
    ("PTI improves on its pivots' fidelity", "PTI", "mse", "e4e_pti", "e4e", 1),
    ("ReStyle's passes reconstruct better than pSp's one pass", "ReStyle", "mse", "restyle_psp", "psp", 1),
    ("ReStyle's passes reconstruct better than e4e's one pass", "ReStyle", "mse", "restyle_e4e", "e4e", 1),
    ("ReStyle-e4e edits better than ReStyle-pSp", "ReStyle", "editability", "restyle_e4e", "restyle_psp", -1),
    ("The learned initialisation makes the perceptual optimisation more faithful", "stylegan-encoder", "mse",
     "hybrid", "sge", 1),
]
COLUMNS = [("MSE ↓", "mse", "{:.4f}"), ("PSNR ↑", "psnr", "{:.2f}"), ("SSIM ↑", "ssim", "{:.3f}"),
           ("LPIPS ↓", "lpips", "{:.3f}"), ("editability ↑", "editability", "{:.3f}"),
           ("target shift ↑", "target_shift", "{:.3f}"), ("identity drift ↓", "identity_drift", "{:.3f}"),
           ("latent-D acc ↓", "latent_d_acc", "{:.2f}"), ("latent-D P(real) ↑", "latent_d_p_real", "{:.3f}"),
           ("radius ÷ W's", "w_radius_ratio", "{:.2f}")]
REFERENCE_KEYS = ("editability", "target_shift", "identity_drift", "latent_d_acc", "latent_d_p_real",
                  "w_radius_ratio")


# matplotlib's tab10, one colour per method
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127)]


def collect(sweep_dir):
    """result.json of every job under ``sweep_dir``, in the sweep's job order, then by name."""
    results = [json.loads(p.read_text()) for p in sorted(Path(sweep_dir).glob("*/result.json"))]
    if not results:
        raise SystemExit(f"report.py: no */result.json under {sweep_dir} (run the sweep first)")
    rank = {j: i for i, j in enumerate(JOBS)}
    return sorted(results, key=lambda r: (rank.get(r["job"], len(JOBS)), r["job"]))


def fmt(value, spec):
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else spec.format(value)


def check(claim, by_job):
    """-> (measured text, 'yes' | 'no' | 'n/a')."""
    text, _, metric, a, b, sign = claim
    others = b if isinstance(b, tuple) else (b,)
    rows = [by_job.get(j) for j in (a, *others)]
    if any(r is None or r.get(metric) is None for r in rows):
        return "not in this sweep", "n/a"
    va, vb = rows[0][metric], [r[metric] for r in rows[1:]]
    holds = all(sign * (va - v) < 0 for v in vb)
    measured = f"{metric} {va:.4g} ({a}) vs " + ", ".join(f"{v:.4g} ({j})" for v, j in zip(vb, others))
    return measured, "yes" if holds else "**no**"


def budget_line(r):
    b = r["budget"]
    return (f"encoders {b['train_steps']} iterations at batch {b['batch_size']} ({b['train_steps'] * b['batch_size']} "
            f"images); optimisation {b['opt_steps']} steps per image (batches of {b['invert_batch']}); IDInvert "
            f"domain-regularised optimisation {b['domain_steps']} steps; PTI {b['pti_steps']} steps per image")


def markdown(results, sweep_dir, notes, reference=None):
    r0, by_job = results[0], {r["job"]: r for r in results}
    m = r0["machine"]
    device = m.get("cuda") or f"{m['processor']}, {m['cpus']} CPUs, {m['torch_threads']} torch threads"
    head = ["method", *(c[0] for c in COLUMNS), "train s", "invert s / image"]
    lines = [f"# Cross-method sweep: {r0['sweep']}", "",
             f"Generated by `python experiments/sweep/report.py {sweep_dir}` on {time.strftime('%Y-%m-%d')} from "
             f"{len(results)} jobs.", "",
             f"- Machine: {device}; {m['platform']}; torch {m['torch']}.",
             f"- Setting: `{r0['setting']}`; {r0['n_images']} held-out test images, the same for every method.",
             f"- Budget: {budget_line(r0)}.",
             *(f"- **Warning**: job {r['job']} ran with another budget: {budget_line(r)}." for r in results
               if r["budget"] != r0["budget"]), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        train = "–" if not r["train_seconds"] else f"{r['train_seconds']:.0f}"
        if r.get("train_shared_with"):
            train = f"({r['train_shared_with']})"
        cells = [r["label"], *(fmt(r.get(k), spec) for _, k, spec in COLUMNS), train,
                 fmt(r["invert_seconds_per_image"], "{:.3f}")]
        lines.append("| " + " | ".join(cells) + " |")
    if reference:
        cells = ["*sampled w (reference: in W, no inversion)*",
                 *(fmt(reference.get(k), spec) if k in REFERENCE_KEYS else "–" for _, k, spec in COLUMNS), "–", "–"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "MSE on [-1, 1] images; LPIPS (pretrained AlexNet) is n/a when its weights are not on the machine. "
              "Editability = mean target shift − mean identity drift of InterFaceGAN edits (boundaries fitted once "
              "in W, ± 2σ along each normal, read by the factor regressor; factors "
              f"{', '.join((r0.get('editability_per_factor') or {}).keys()) or 'n/a'}). Latent-D acc = balanced "
              "held-out accuracy of a latent discriminator telling the method's W+ rows from w = mapping(z) "
              "(0.5 = indistinguishable); P(real) = its mean held-out probability that the method's rows are "
              "sampled w (graded where the accuracy saturates; the closeness-to-W claims below use it); radius ÷ "
              "W's = mean norm of the standardised rows over sampled w's (< 1: collapsed toward the mean w). "
              "Train s = wall time of train.py ((job) = that job's encoder); invert s / image excludes model "
              "loading. Definitions: experiments/sweep/yardsticks.py.", "",
              "## Orderings the papers report", "", "| claim | paper | measured | holds |", "|---|---|---|---|"]
    for claim in CLAIMS:
        measured, holds = check(claim, by_job)
        lines.append(f"| {claim[0]} | {claim[1]} | {measured} | {holds} |")
    lines += ["", notes or f"{NOTES}\n\n(Why an ordering does or does not hold here: written after the run; "
              "this section is kept when the report is regenerated.)", ""]
    return "\n".join(lines)


def span(values):
    """(low, high) axis limits around ``values`` with a 12 % margin."""
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.12 or abs(hi) * 0.1 or 1e-3
    return lo - pad, hi + pad


def ticks(lo, hi):
    """Six (value, label) ticks from lo to hi, with enough decimals to tell them apart."""
    places = max(0, 1 - math.floor(math.log10((hi - lo) / 5)))
    return [(lo + (hi - lo) * i / 5, f"{lo + (hi - lo) * i / 5:.{places}f}") for i in range(6)]


def draw_axes(d, frame, xlim, ylim, font):
    """Ticks and grid lines of the plot area ``frame`` (left, top, right, bottom) for the data ranges
    ``xlim``, ``ylim`` -> (px, py): data x / y to pixels."""
    left, top, right, bottom = frame
    (x0, x1), (y0, y1) = xlim, ylim
    px = lambda x: left + (x - x0) / (x1 - x0) * (right - left)  # noqa: E731
    py = lambda y: bottom - (y - y0) / (y1 - y0) * (bottom - top)  # noqa: E731
    for xv, text in ticks(x0, x1):
        d.line([px(xv), bottom, px(xv), bottom + 5], fill="black")
        d.text((px(xv) - d.textlength(text, font=font) / 2, bottom + 8), text, fill="black", font=font)
    for yv, text in ticks(y0, y1):
        d.line([left - 5, py(yv), left, py(yv)], fill="black")
        d.text((left - 8 - d.textlength(text, font=font), py(yv) - 7), text, fill="black", font=font)
        d.line([left + 1, py(yv), right - 1, py(yv)], fill=(232, 232, 232))
    return px, py


def plot_lines(d, box, series, ylabel, xlabel, tags=None, refs=()):
    """Draw on ``d`` (ImageDraw) inside ``box`` (x0, y0, x1, y1) one line with dots per series
    ``(label, [(x, y), ...])``, in COLOURS order, with a legend; ``tags``: per series, a text per
    point (e.g. the iteration) written next to it; ``refs``: ``(label, y)`` dashed grey lines."""
    font, small = ImageFont.load_default(size=14), ImageFont.load_default(size=12)
    left, top, right, bottom = box[0] + 75, box[1] + 30, box[2] - 20, box[3] - 50
    d.text((left - 60, top - 22), ylabel, fill="black", font=font)
    d.rectangle([left, top, right, bottom], outline="black")
    xs = [x for _, pts in series for x, _ in pts]
    ys = [y for _, pts in series for _, y in pts] + [y for _, y in refs]
    if not xs:
        return
    (x0, x1), (y0, y1) = span(xs), span(ys)
    px, py = draw_axes(d, (left, top, right, bottom), (x0, x1), (y0, y1), small)
    d.text(((left + right - d.textlength(xlabel, font=font)) / 2, bottom + 26), xlabel, fill="black", font=font)
    for label, y in refs:
        for x in range(left + 2, right - 2, 12):
            d.line([x, py(y), min(x + 6, right - 2), py(y)], fill=(110, 110, 110), width=2)
        d.text((left + 8, py(y) - 16), label, fill=(90, 90, 90), font=small)
    legend_x = right - 35 - max(d.textlength(label, font=small) for label, _ in series)
    for i, (label, pts) in enumerate(series):
        c = COLOURS[i % len(COLOURS)]
        xy = [(px(x), py(y)) for x, y in pts]
        if len(xy) > 1:
            d.line(xy, fill=c, width=2)
        for j, (x, y) in enumerate(xy):
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=c)
            if tags:
                d.text((x + 5, y - 14), tags[i][j], fill=c, font=small)
        d.line([legend_x, top + 12 + 16 * i, legend_x + 20, top + 12 + 16 * i], fill=c, width=3)
        d.text((legend_x + 25, top + 5 + 16 * i), label, fill=c, font=small)


def plot(results, path, reference=None, size=(900, 620)):
    """Distortion (MSE) vs editability, one labelled point per method (PIL; no matplotlib needed); a
    dashed line at the editability of sampled w (``reference``), when given. Without editability
    scores (real faces) the y axis is the latent D's P(real)."""
    pts = [(r["mse"], r["editability"], r["label"]) for r in results if r.get("editability") is not None]
    ylabel = "editability (higher is better)"
    if not pts:  # real faces (GPU settings): no ground-truth edits; closeness to W stands in for it
        pts = [(r["mse"], r["latent_d_p_real"], r["label"]) for r in results if r.get("latent_d_p_real") is not None]
        ylabel, reference = "latent-D P(real) (closer to W is better)", None
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    font, small = ImageFont.load_default(size=16), ImageFont.load_default(size=13)
    left, top, right, bottom = 90, 70, size[0] - 40, size[1] - 70
    title = f"Distortion vs {ylabel.split(' (')[0]}: {results[0]['sweep']} (one point per method)"
    d.text(((size[0] - d.textlength(title, font=font)) / 2, 12), title, fill="black", font=font)
    d.text((left - 80, top - 28), ylabel, fill="black", font=font)
    d.rectangle([left, top, right, bottom], outline="black")
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]

    (x0, x1), (y0, y1) = span(xs), span(ys + ([reference] if reference is not None else []))
    x0 = max(x0, 0.0)  # MSE
    px, py = draw_axes(d, (left, top, right, bottom), (x0, x1), (y0, y1), small)
    xlabel = "distortion: MSE on [-1, 1] (lower is better)"
    d.text(((left + right - d.textlength(xlabel, font=font)) / 2, bottom + 35), xlabel, fill="black", font=font)
    if reference is not None:
        for x in range(left + 2, right - 2, 12):
            d.line([x, py(reference), min(x + 6, right - 2), py(reference)], fill=(110, 110, 110), width=2)
        d.text((left + 8, py(reference) - 18), "sampled w (in W, no inversion)", fill=(90, 90, 90), font=small)
    for i, (x, y, label) in enumerate(pts):
        c = COLOURS[i % len(COLOURS)]
        d.ellipse([px(x) - 6, py(y) - 6, px(x) + 6, py(y) + 6], fill=c, outline="black")
        tx = px(x) + 10 if px(x) < right - 180 else px(x) - 10 - d.textlength(label, font=small)
        d.text((tx, py(y) - 8), label, fill=c, font=small)
    atomic_write(path, lambda f: img.save(f, format="PNG"))


def log_wandb(results, out, sweep_dir):
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    sweep = results[0]["sweep"]
    keys = ["job", "label", "mse", "psnr", "ssim", "lpips", "editability", "target_shift", "identity_drift",
            "latent_d_acc", "train_seconds", "invert_seconds_per_image"]
    run = wandb.init(project="ganinv", group=sweep, job_type="report", name=f"{sweep}/report", dir=str(sweep_dir),
                     mode="offline", config={"budget": results[0]["budget"], "machine": results[0]["machine"]})
    run.log({"sweep_table": wandb.Table(columns=keys, data=[[r.get(k) for k in keys] for r in results]),
             "tradeoff": wandb.Image(str(out / "tradeoff.png"))})
    run.finish()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir")
    ap.add_argument("--out", default=str(HERE.parent / "results"))
    ap.add_argument("--no-wandb", action="store_true")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = collect(args.sweep_dir)
    prep = Path(args.sweep_dir) / "shared" / "prepare.json"
    reference = json.loads(prep.read_text()).get("reference") if prep.is_file() else None
    old = out / "sweep.md"
    notes = None
    if old.is_file() and NOTES in old.read_text():
        notes = NOTES + old.read_text().split(NOTES, 1)[1].rstrip()
    write_text_atomic(out / "sweep.md", markdown(results, args.sweep_dir, notes, reference))
    plot(results, out / "tradeoff.png", (reference or {}).get("editability"))
    write_json(out / "sweep.json", {"jobs": results, "reference_sampled_w": reference})
    if not args.no_wandb:
        log_wandb(results, out, Path(args.sweep_dir).resolve())
    print(f"report: {out / 'sweep.md'}, {out / 'tradeoff.png'}, {out / 'sweep.json'} ({len(results)} methods)")


if __name__ == "__main__":
    main()
