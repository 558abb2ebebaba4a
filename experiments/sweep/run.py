"""The whole cross-method sweep in one command: prepare -> Hydra multirun over the methods -> report.

    python experiments/sweep/run.py                  # embedded default: ~45 min on 2 CPU cores (README.md)
    python experiments/sweep/run.py --jobs opt_w,opt_wplus budget.opt_steps=50 sweep_dir=/tmp/sw
    python experiments/sweep/run.py setting=ffhq1024 setting.generator=stylegan2-ffhq-config-f.pt ...

Arguments without ``--`` are Hydra overrides for every job (see conf/sweep.yaml). ``--threads``
sets OMP_NUM_THREADS / MKL_NUM_THREADS (torch's thread count) for every step, ``--out`` where the
report goes (default experiments/results), ``--no-wandb`` turns the offline W&B runs off.
"""
import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
from sweep import JOBS as JOB_ORDER  # noqa: E402  (dependencies first: the basic launcher runs them in order)

JOBS = ",".join(JOB_ORDER)


def sweep_dir(overrides):
    """The sweep dir the jobs will use, composed from conf/ with the same overrides."""
    from hydra import compose, initialize_config_dir

    from ganinv.config import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(HERE / "conf"), version_base="1.3"):
        cfg = compose(config_name="sweep", overrides=list(overrides))
    return Path(cfg.sweep_dir).resolve()


def step(title, cmd, env):
    print(f"== {title}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.time()
    if subprocess.run([sys.executable, *cmd], env=env).returncode != 0:
        raise SystemExit(f"run.py: {title} failed (see the output above)")
    return time.time() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", default=JOBS, help=f"comma-separated jobs (default {JOBS})")
    ap.add_argument("--out", default=str(HERE.parent / "results"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-wandb", action="store_true")
    args, overrides = ap.parse_known_args(argv)
    unknown = [o for o in overrides if o.startswith("-")]
    if unknown:
        ap.error(f"unknown option(s) {unknown}; Hydra overrides look like key=value")
    if args.no_wandb:
        overrides.append("wandb=false")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    where = sweep_dir(overrides)
    sweep = str(HERE / "sweep.py")
    times = {"prepare": step("prepare", [sweep, "job=prepare", *overrides], env),
             "multirun": step("multirun", [sweep, "-m", f"job={args.jobs}", *overrides], env),
             "report": step("report", [str(HERE / "report.py"), str(where), "--out", args.out,
                                       *(["--no-wandb"] if args.no_wandb else [])], env)}
    print("run.py: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items())
          + f"; total {sum(times.values()) / 60:.1f} min; sweep dir {where}")


if __name__ == "__main__":
    main()
