"""Learning curves of the sweep's yardsticks for the encoders (issue 21): one long training run per
method, exported every ``--every`` iterations (``ganinv.methods.snapshots.ExportEvery``), each
export scored exactly as a sweep job scores its final encoder (``sweep.py``: the shared test faces,
invert.py, MSE / PSNR / SSIM, editability, latent-D P(real), code radius).

    python experiments/sweep/curves.py                                     # psp,e4e,idinvert to 2000, every 250
    python experiments/sweep/curves.py --methods psp --steps 600 --every 200 sweep_dir=/tmp/c
    for m in psp e4e idinvert; do python experiments/sweep/curves.py --methods $m --threads 1 & done  # in parallel

Arguments without ``--`` are Hydra overrides of conf/sweep.yaml, as for run.py. Writes
``<sweep_dir>/curves/<method>/`` (train/, step_<n>/ inversions) and into ``--out`` (default
experiments/results) ``curves.json`` (every point) and, by ``curves_report.py``, ``curves.md``
(tables and the papers' orderings at each budget), ``curves.png`` (four panels against iterations)
and ``curves_tradeoff.png`` (MSE vs editability, each method's path over training). IDInvert's
domain-regularised optimisation (job ``opt_domain``) is scored from the IDInvert encoder every
``--follow-every`` iterations, and plain W+ optimisation (``opt_wplus``) once, for its two claims.

One run to ``--steps`` is not the same as separate runs of each length: schedules scaled to
``max_steps`` (e4e's progressive stages at the official 10 % / 1 % proportions, IDInvert's ×0.8 lr
decay every quarter) follow the long run: in a 2000-iteration curve e4e adds its W+ deltas from
iteration 200 to 380 (one every 20), where a 300-iteration sweep job adds them from 30 to 57.
"""
import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import curves_report  # noqa: E402
import sweep  # noqa: E402
import yardsticks  # noqa: E402

from ganinv.methods.snapshots import snapshot_name  # noqa: E402

METHODS = ("psp", "e4e", "idinvert")
# the sweep job that starts from a method's encoder, scored along its curve, and the job it is compared to
FOLLOW = {"idinvert": "opt_domain"}
BASELINES = ("opt_wplus",)


def compose(overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(HERE / "conf"), version_base="1.3"):
        return hydra_compose(config_name="sweep", overrides=list(overrides))


def callback_args(every, folder):
    return ["+callbacks.export_every._target_=ganinv.methods.snapshots.ExportEvery",
            f"+callbacks.export_every.every_n_steps={every}", f"+callbacks.export_every.dirpath={folder}"]


def train(cfg, method_dir, every, stopped=False):
    """One train.py run to budget.train_steps with an export every ``every`` steps (skipped when the
    same run already finished) -> (the snapshot paths in step order, train seconds). ``stopped``:
    no training; the exports a run stopped before its end left (train seconds: from the run's
    start to its last export)."""
    out = method_dir / "train"
    snaps = out / "snapshots"
    args = [*sweep.train_args(cfg, out), *callback_args(every, snaps)]
    record = yardsticks.read_json(out / "train.json")
    final = snaps / snapshot_name(cfg.budget.train_steps)
    if stopped:
        found = sorted(snaps.glob("step_*.pt"))
        if not found:
            raise FileNotFoundError(f"--stopped: no exports in {snaps} (start the run without --stopped)")
        return found, found[-1].stat().st_mtime - (out / "csv" / "hparams.yaml").stat().st_mtime
    if not (record and record.get("args") == args and final.is_file()):
        out.mkdir(parents=True, exist_ok=True)
        print(f"[curves {cfg.job.name}] training to {cfg.budget.train_steps}, export every {every} ...", flush=True)
        seconds = sweep.run_script(cfg.job.name, "train.py", args, method_dir / "train.log")
        if not final.is_file():
            raise FileNotFoundError(f"train.py finished without exporting {final}")
        record = {"args": args, "seconds": seconds}
        yardsticks.write_json(out / "train.json", record)
    return sorted(snaps.glob("step_*.pt")), record["seconds"]


def score(cfg, job_dir, encoder, prep, shared):
    """The sweep job's scores (``sweep.py``) of ``cfg.job`` with ``encoder`` (an export, or None),
    its inversion kept in ``job_dir``/invert."""
    job_dir.mkdir(parents=True, exist_ok=True)
    key = [prep["fingerprint"], str(encoder)] if encoder else [prep["fingerprint"]]
    out = sweep.invert(cfg, job_dir, prep["inputs"], encoder, key)
    rows, result = sweep.image_scores(out)
    result.update(sweep.code_scores(cfg, out, rows, shared))
    return result


def step_of(snapshot):
    return int(snapshot.stem.split("_")[1])


def show(log, what, p):
    log(f"[curves {what}] mse {p['mse']:.4f} editability {p['editability']:.3f} "
        f"P(real) {p['latent_d_p_real']:.3f} radius {p['w_radius_ratio']:.2f}")


def curve(method, steps, every, overrides, follow_every=500, stopped=False, log=print):
    """Train ``method`` once and score every export -> its curve; for a method in FOLLOW, also the
    job that starts from its encoder (IDInvert's optimisation from E(x)) at every ``follow_every``
    iterations and at the last export."""
    cfg = compose([*overrides, f"job={method}", f"budget.train_steps={steps}"])
    sweep_dir = Path(cfg.sweep_dir).resolve()
    shared = sweep_dir / "shared"
    prep = yardsticks.ensure_shared(shared, cfg)
    method_dir = sweep_dir / "curves" / method
    snapshots, seconds = train(cfg, method_dir, every, stopped)
    points = []
    for snap in snapshots:
        points.append({"step": step_of(snap), **score(cfg, method_dir / snap.stem, snap, prep, shared)})
        show(log, f"{method} step {points[-1]['step']}", points[-1])
    result = {"method": method, "label": cfg.job.label, "train_seconds": seconds, "every": every, "steps": steps,
              "budget": {"batch_size": cfg.budget.batch_size}, "n_images": cfg.n_images, "points": points,
              "stopped_at": step_of(snapshots[-1]) if stopped else None}
    if method in FOLLOW and follow_every:
        job = FOLLOW[method]
        fcfg = compose([*overrides, f"job={job}"])
        chosen = [s for s in snapshots if step_of(s) % follow_every == 0 or s == snapshots[-1]]
        follow = []
        for snap in chosen:
            follow.append({"step": step_of(snap), **score(fcfg, method_dir / f"{job}_{snap.stem}", snap, prep, shared)})
            show(log, f"{job} from the step-{follow[-1]['step']} encoder", follow[-1])
        result["follow"] = {"job": job, "label": fcfg.job.label, "points": follow}
    return result


def baseline(job, overrides, log=print):
    """A sweep job that needs no encoder (``opt_wplus``), scored once: the line the follow-ups compare to."""
    cfg = compose([*overrides, f"job={job}"])
    shared = Path(cfg.sweep_dir).resolve() / "shared"
    prep = yardsticks.ensure_shared(shared, cfg)
    result = {"job": job, "label": cfg.job.label, **score(cfg, shared.parent / "curves" / job, None, prep, shared)}
    show(log, job, result)
    return result


def record(out, kind, name, result):
    """Add one result to ``<out>/curves.json`` under ``kind`` (curves | baselines), under a lock:
    one process per method may share ``--out``."""
    with yardsticks.locked(out / ".curves.lock"):
        done = yardsticks.read_json(out / "curves.json") or {}
        done.setdefault(kind, {})[name] = result
        yardsticks.write_json(out / "curves.json", done)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--steps", type=int, default=2000, help="training iterations of each run")
    ap.add_argument("--every", type=int, default=250, help="iterations between exports")
    ap.add_argument("--follow-every", type=int, default=500,
                    help="iterations between the follow-up job's points (IDInvert's optimisation); 0: none")
    ap.add_argument("--baselines", default=None,
                    help=f"jobs without an encoder, scored once (default {','.join(BASELINES)} with a FOLLOW method)")
    ap.add_argument("--stopped", action="store_true",
                    help="no training: score the exports of a run stopped before --steps (e.g. out of time)")
    ap.add_argument("--out", default=str(HERE.parent / "results"))
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: as set in the environment)")
    args, overrides = ap.parse_known_args(argv)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)  # train.py, invert.py
        sweep.torch.set_num_threads(args.threads)  # the scores computed here
    overrides = [*overrides, "wandb=false"]
    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    methods = [m for m in args.methods.split(",") if m]
    for method in methods:
        result = curve(method, args.steps, args.every, overrides, args.follow_every, args.stopped)
        record(out, "curves", method, {**result, "machine": sweep.machine()})
    if args.baselines is None:
        args.baselines = ",".join(BASELINES) if set(methods) & set(FOLLOW) else ""
    for job in [j for j in args.baselines.split(",") if j]:
        record(out, "baselines", job, baseline(job, overrides))
    done = curves_report.write(out)
    print(f"curves.py: {', '.join(done['curves'])} -> {out}/curves.json, curves.md, curves.png, curves_tradeoff.png "
          f"({(time.time() - t0) / 60:.1f} min)")
    return done


if __name__ == "__main__":
    main()
