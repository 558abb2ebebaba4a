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
``max_steps`` (e4e's progressive stages at the official 10 % / 1 % proportions, IDInvert's continuous
×0.8 lr decay per quarter) follow the long run: in a 2000-iteration curve e4e adds its W+ deltas from
iteration 200 to 360 (one every 20), where a 300-iteration sweep job adds them from 30 to 54. An e4e
export taken before its last stage is inverted as the official loader runs every checkpoint (all
deltas, the later heads still at their initialisation): its 250-iteration point has 6 such heads.
"""
import argparse
import contextlib
import fcntl
import os
import shutil
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import curves_report  # noqa: E402
import sweep  # noqa: E402
import yardsticks  # noqa: E402
from report import fmt  # noqa: E402

from ganinv.methods.snapshots import snapshot_name  # noqa: E402
from ganinv.runner import one_line_errors  # noqa: E402

METHODS = ("psp", "e4e", "idinvert")
# the sweep job that starts from a method's encoder, scored along its curve, and the job it is compared to
FOLLOW = {"idinvert": "opt_domain"}
BASELINES = ("opt_wplus",)
SHOWN = (("mse", "{:.4f}"), ("editability", "{:.3f}"), ("latent_d_p_real", "{:.3f}"), ("w_radius_ratio", "{:.2f}"))


def compose(overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(HERE / "conf"), version_base="1.3"):
        return hydra_compose(config_name="sweep", overrides=list(overrides))


@contextlib.contextmanager
def exclusive(path, what):
    """A lock held for the block; a second process asking for it stops with one line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"{what} is already running (lock {path})") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def callback_args(every, folder):
    return ["+callbacks.export_every._target_=ganinv.methods.snapshots.ExportEvery",
            f"+callbacks.export_every.every_n_steps={every}", f"+callbacks.export_every.dirpath={folder}"]


def grid(snaps, steps, every):
    """The exports of this run's grid (every ``every``-th step and the last) found in ``snaps``."""
    wanted = {snapshot_name(k) for k in range(every, steps + 1, every)} | {snapshot_name(steps)}
    return sorted(p for p in snaps.glob("step_*.pt") if p.name in wanted)


def train(cfg, method_dir, every, stopped=False):
    """One train.py run to budget.train_steps with an export every ``every`` steps (skipped when the
    same run already finished; a run with other arguments first clears the method's folder) ->
    (the train record, the exports in step order). ``stopped``: no training; the exports that the
    run with these same arguments left when it was stopped before its end."""
    out = method_dir / "train"
    snaps = out / "snapshots"
    steps = int(cfg.budget.train_steps)
    args = [*sweep.train_args(cfg, out), *callback_args(every, snaps)]
    record = yardsticks.read_json(out / "train.json") or {}
    done = record.get("args") == args and record.get("seconds") is not None and (snaps / snapshot_name(steps)).is_file()
    if stopped and not done:
        found = grid(snaps, steps, every)
        if record.get("args") != args or not found:
            raise FileNotFoundError(f"--stopped: no exports of a run with these arguments in {snaps} "
                                    "(start it without --stopped)")
        record = {**record, "seconds": found[-1].stat().st_mtime - record["started"], "stopped_at": step_of(found[-1])}
        return record, found
    if not done:
        if method_dir.exists():
            shutil.rmtree(method_dir)  # another run: its exports and their inversions would mix in
        out.mkdir(parents=True)
        record = {"args": args, "started": time.time(), "seconds": None}  # --stopped reads it
        yardsticks.write_json(out / "train.json", record)
        print(f"[curves {cfg.job.name}] training to {steps}, export every {every} ...", flush=True)
        seconds = sweep.run_script(cfg.job.name, "train.py", args, method_dir / "train.log")
        if not (snaps / snapshot_name(steps)).is_file():
            raise FileNotFoundError(f"train.py finished without exporting {snaps / snapshot_name(steps)}")
        record = {**record, "seconds": seconds}
        yardsticks.write_json(out / "train.json", record)
    return {**record, "stopped_at": None}, grid(snaps, steps, every)


def score(cfg, job_dir, encoder, prep, shared, trained=None):
    """The sweep job's scores (``sweep.py``) of ``cfg.job`` with ``encoder`` (an export, or None),
    its inversion kept in ``job_dir``/invert and redone when the export or its training changed."""
    job_dir.mkdir(parents=True, exist_ok=True)
    key = [prep["fingerprint"]]
    if encoder:
        key += [str(encoder), encoder.stat().st_size, encoder.stat().st_mtime_ns, trained]
    out = sweep.invert(cfg, job_dir, prep["inputs"], encoder, key)
    rows, result = sweep.image_scores(out)
    result.update(sweep.code_scores(cfg, out, rows, shared))
    return {**result, "n_images": len(rows)}


def step_of(snapshot):
    return int(snapshot.stem.split("_")[1])


def show(log, what, p):
    log(f"[curves {what}] " + ", ".join(f"{key} {fmt(p.get(key), spec)}" for key, spec in SHOWN))


def curve(method, steps, every, overrides, follow_every=500, stopped=False, log=print):
    """Train ``method`` once and score every export -> its curve; for a method in FOLLOW, also the
    job that starts from its encoder (IDInvert's optimisation from E(x)) at every ``follow_every``
    iterations and at the last export."""
    # setting.train_steps={}: a setting's per-method step counts (the GPU recipes) would override --steps
    cfg = compose([*overrides, f"job={method}", f"budget.train_steps={steps}", "setting.train_steps={}"])
    sweep_dir = Path(cfg.sweep_dir).resolve()
    shared = sweep_dir / "shared"
    prep = yardsticks.ensure_shared(shared, cfg)
    method_dir = sweep_dir / "curves" / method
    with exclusive(sweep_dir / "curves" / f".{method}.lock", f"a curves.py run of {method} in {sweep_dir}"):
        trained, snapshots = train(cfg, method_dir, every, stopped)
        points = []
        for snap in snapshots:
            points.append({"step": step_of(snap), **score(cfg, method_dir / snap.stem, snap, prep, shared, trained)})
            show(log, f"{method} step {points[-1]['step']}", points[-1])
        result = {"method": method, "label": cfg.job.label, "setting": cfg.setting.name, "sweep_dir": str(sweep_dir),
                  "train_seconds": trained["seconds"], "every": every, "steps": steps,
                  "budget": OmegaConf.to_container(cfg.budget, resolve=True), "points": points,
                  "stopped_at": trained["stopped_at"]}
        if method in FOLLOW and follow_every:
            job = FOLLOW[method]
            fcfg = compose([*overrides, f"job={job}"])
            chosen = [s for s in snapshots if step_of(s) % follow_every == 0 or s == snapshots[-1]]
            follow = []
            for snap in chosen:
                where = method_dir / f"{job}_{snap.stem}"
                follow.append({"step": step_of(snap), **score(fcfg, where, snap, prep, shared, trained)})
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
    with yardsticks.locked(out / ".curves.lock"):
        done = curves_report.write(out)
    print(f"curves.py: {', '.join(done['curves'])} -> {out}/curves.json, curves.md, curves.png, curves_tradeoff.png "
          f"({(time.time() - t0) / 60:.1f} min)")
    return done


if __name__ == "__main__":
    with one_line_errors("curves.py"):
        main()
