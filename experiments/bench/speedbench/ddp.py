"""Part ``ddp``: ``train.py +method=psp`` (embedded 64 px, per-process batch B, 1 thread per process)
as 1 process and as 2 gloo DDP processes, CPU only; steady-state seconds per iteration from the step
timer on rank 0 (intervals between consecutive step ends after warm-up: start-up excluded, data
loading and gradient all-reduce included). efficiency = (2-process img/s) / (2 × 1-process img/s)."""
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from .build import ROOT

BENCH_DIR = Path(__file__).resolve().parents[1]  # experiments/bench: where ``speedbench`` imports from


def ddp_run(out, processes, batch, steps, warmup, extra=()):
    """One ``train.py +method=psp`` run (``extra``: more overrides; ``trainer.strategy.*`` ones only
    for DDP) -> seconds of each iteration after ``warmup`` on rank 0 (intervals between step ends)."""
    timing = Path(out) / "steps.json"
    args = ["+method=psp", "logger=csv", "export=false", "trainer.precision=32", "trainer.accelerator=cpu",
            f"trainer.max_steps={steps}", "trainer.limit_val_batches=0", "+trainer.enable_progress_bar=false",
            f"data.batch_size={batch}", "data.val_length=0", "data.test_length=0", "method.module.image_every=0",
            "+callbacks.bench_timer._target_=speedbench.timing.step_timer", f"+callbacks.bench_timer.path={timing}",
            f"hydra.run.dir={out}"]
    args += [e for e in extra if processes > 1 or not e.lstrip("+").startswith("trainer.strategy.")]
    args += ["trainer=ddp", f"trainer.devices={processes}"] if processes > 1 else ["trainer.devices=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")]))}
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True, env=env,
                       cwd=ROOT)
    if r.returncode != 0:
        raise RuntimeError(f"train.py ({processes} processes) failed: {r.stderr.strip()[-2000:]}")
    end = json.loads(timing.read_text())["end"]
    return [b - a for a, b in zip(end, end[1:])][max(warmup - 1, 0):]


def ddp_scaling(batch, steps, warmup, extra=()):
    """1-process and 2-process rows; the 2-process row carries ``efficiency``."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for processes in (1, 2):
            try:
                times = ddp_run(Path(tmp) / f"p{processes}", processes, batch, steps, warmup, extra)
            except RuntimeError as e:
                rows.append({"section": "ddp", "processes": processes, "batch_per_process": batch,
                             "error": str(e).splitlines()[-1]})
                continue
            s = statistics.median(times)
            rows.append({"section": "ddp", "key": f"ddp/psp_64_p{processes}", "processes": processes,
                         "batch_per_process": batch, "threads_per_process": 1, "times_s": times, "seconds": s,
                         "rate": 1 / s, "images_per_s": processes * batch / s})
    if len(rows) == 2 and all("images_per_s" in r for r in rows):
        rows[1]["efficiency"] = rows[1]["images_per_s"] / (2 * rows[0]["images_per_s"])
    return rows
