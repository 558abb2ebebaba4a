"""Learning curves of the sweep's yardsticks for the encoders (issue 21): one long training run per
method, exported every ``--every`` iterations (``ganinv.methods.snapshots.ExportEvery``), each
export scored exactly as a sweep job scores its final encoder (``sweep.py``: the shared test faces,
invert.py, MSE / PSNR / SSIM, editability, latent-D P(real), code radius).

    python experiments/sweep/curves.py                                     # psp,e4e,idinvert to 3000, every 250
    python experiments/sweep/curves.py --methods psp --steps 600 --every 200 sweep_dir=/tmp/c
    for m in psp e4e idinvert; do python experiments/sweep/curves.py --methods $m --threads 1 & done  # in parallel

Arguments without ``--`` are Hydra overrides of conf/sweep.yaml, as for run.py. Writes
``<sweep_dir>/curves/<method>/`` (train/, step_<n>/ inversions) and, with ``--out`` (default
experiments/results), ``curves.json`` (every point) and ``curves.png`` (four panels against
iterations) plus ``curves_tradeoff.png`` (MSE vs editability, each method's path over training).

One run to ``--steps`` is not the same as separate runs of each length: schedules scaled to
``max_steps`` (e4e's progressive stages at the official 10 % / 1 % proportions, IDInvert's ×0.8 lr
decay every quarter) follow the long run, so the point at 300 of a 3000-iteration curve has e4e at
its first stage, where a 300-iteration sweep job would have finished all of them.
"""
import argparse
import os
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import sweep  # noqa: E402
import yardsticks  # noqa: E402
from report import plot_lines  # noqa: E402

from ganinv.methods.snapshots import snapshot_name  # noqa: E402

METHODS = ("psp", "e4e", "idinvert")
PANELS = (("mse", "MSE on [-1, 1] (lower: more faithful)"), ("editability", "editability (higher: edits better)"),
          ("latent_d_p_real", "latent-D P(real) (higher: closer to W)"), ("w_radius_ratio", "code radius / W's"))


def compose(overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(HERE / "conf"), version_base="1.3"):
        return hydra_compose(config_name="sweep", overrides=list(overrides))


def callback_args(every, folder):
    return ["+callbacks.export_every._target_=ganinv.methods.snapshots.ExportEvery",
            f"+callbacks.export_every.every_n_steps={every}", f"+callbacks.export_every.dirpath={folder}"]


def train(cfg, method_dir, every):
    """One train.py run to budget.train_steps with an export every ``every`` steps (skipped when the
    same run already finished) -> (the snapshot paths in step order, train seconds)."""
    out = method_dir / "train"
    snaps = out / "snapshots"
    args = [*sweep.train_args(cfg, out), *callback_args(every, snaps)]
    record = yardsticks.read_json(out / "train.json")
    final = snaps / snapshot_name(cfg.budget.train_steps)
    if not (record and record.get("args") == args and final.is_file()):
        out.mkdir(parents=True, exist_ok=True)
        print(f"[curves {cfg.job.name}] training to {cfg.budget.train_steps}, export every {every} ...", flush=True)
        seconds = sweep.run_script(cfg.job.name, "train.py", args, method_dir / "train.log")
        if not final.is_file():
            raise FileNotFoundError(f"train.py finished without exporting {final}")
        record = {"args": args, "seconds": seconds}
        yardsticks.write_json(out / "train.json", record)
    return sorted(snaps.glob("step_*.pt")), record["seconds"]


def score(cfg, method_dir, snapshot, prep, shared):
    """The sweep job's scores of one exported encoder (its inversion kept in step_<n>/)."""
    (method_dir / snapshot.stem).mkdir(parents=True, exist_ok=True)
    out = sweep.invert(cfg, method_dir / snapshot.stem, prep["inputs"], snapshot, [prep["fingerprint"], str(snapshot)])
    rows, result = sweep.image_scores(out)
    result.update(sweep.code_scores(cfg, out, rows, shared))
    return {"step": int(snapshot.stem.split("_")[1]), **result}


def curve(method, steps, every, overrides, log=print):
    cfg = compose([*overrides, f"job={method}", f"budget.train_steps={steps}"])
    sweep_dir = Path(cfg.sweep_dir).resolve()
    shared = sweep_dir / "shared"
    prep = yardsticks.ensure_shared(shared, cfg)
    method_dir = sweep_dir / "curves" / method
    snapshots, seconds = train(cfg, method_dir, every)
    points = []
    for snap in snapshots:
        points.append(score(cfg, method_dir, snap, prep, shared))
        p = points[-1]
        log(f"[curves {method}] step {p['step']}: mse {p['mse']:.4f} editability {p['editability']:.3f} "
            f"P(real) {p['latent_d_p_real']:.3f} radius {p['w_radius_ratio']:.2f}")
    return {"method": method, "label": cfg.job.label, "train_seconds": seconds, "every": every, "steps": steps,
            "budget": {"batch_size": cfg.budget.batch_size}, "points": points}


def plot(curves, path, size=(1200, 820)):
    """Four panels (PANELS) of each method's yardstick against training iterations."""
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    w, h = size[0] // 2, (size[1] - 40) // 2
    font = ImageFont.load_default(size=16)
    title = "Learning curves on the embedded setting (the sweep's yardsticks, 16 held-out faces)"
    d.text(((size[0] - d.textlength(title, font=font)) / 2, 10), title, fill="black", font=font)
    for i, (key, label) in enumerate(PANELS):
        box = ((i % 2) * w, 40 + (i // 2) * h, (i % 2 + 1) * w, 40 + (i // 2 + 1) * h)
        series = [(c["label"], [(p["step"], p[key]) for p in c["points"] if p.get(key) is not None]) for c in curves]
        plot_lines(d, box, series, label, "training iterations")
    img.save(path)


def plot_tradeoff(curves, path, size=(900, 620)):
    """MSE (x) vs editability (y): each method's path over training, its points labelled by iteration."""
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    series = [(c["label"], [(p["mse"], p["editability"]) for p in c["points"]],
               [str(p["step"]) for p in c["points"]]) for c in curves]
    plot_lines(d, (0, 30, size[0], size[1]), [s[:2] for s in series], "editability (higher is better)",
               "distortion: MSE on [-1, 1] (lower is better)", tags=[s[2] for s in series])
    font = ImageFont.load_default(size=16)
    title = "Distortion vs editability over training (one path per encoder, labels: iterations)"
    d.text(((size[0] - d.textlength(title, font=font)) / 2, 8), title, fill="black", font=font)
    img.save(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--steps", type=int, default=3000, help="training iterations of each run")
    ap.add_argument("--every", type=int, default=250, help="iterations between exports")
    ap.add_argument("--out", default=str(HERE.parent / "results"))
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: as set in the environment)")
    args, overrides = ap.parse_known_args(argv)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    overrides = [*overrides, "wandb=false"]
    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for method in args.methods.split(","):
        result = {**curve(method, args.steps, args.every, overrides), "machine": sweep.machine()}
        with yardsticks.locked(out / ".curves.lock"):  # one process per method may share --out
            done = yardsticks.read_json(out / "curves.json") or {}
            done[method] = result
            yardsticks.write_json(out / "curves.json", done)
    curves = [done[m] for m in METHODS if m in done] + [c for m, c in done.items() if m not in METHODS]
    plot(curves, out / "curves.png")
    plot_tradeoff(curves, out / "curves_tradeoff.png")
    print(f"curves.py: {', '.join(done)} -> {out / 'curves.json'}, curves.png, curves_tradeoff.png "
          f"({(time.time() - t0) / 60:.1f} min)")
    return done


if __name__ == "__main__":
    main()
