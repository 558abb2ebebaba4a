"""One spec -> one row: measured in this process (``measure``) or in a fresh subprocess
(``measure_isolated``: its own peak memory, no state carried over); ``annotate`` adds the
speed-up (official / ganinv, same run) and the fraction of the machine's peak."""
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from . import inference, methods, optimization, ref
from .build import ROOT
from .machine import peak_memory_mb

KINDS = {**ref.KINDS, **methods.KINDS, **inference.KINDS, **optimization.KINDS}
SCRIPT = Path(__file__).resolve().parents[1] / "speed.py"
PEAK_NAMES = {"32": "fp32", "bf16": "bf16"}  # spec precision -> machine peak entry


def measure(spec):
    """Run one measurement in this process: spec (see ``plan``) -> row dict with ``times_s``,
    ``seconds`` (median), ``rate`` (``unit``: it/s, or img/s for inference), ``flops`` (one call),
    ``peak_mb`` (max RSS of the process, or CUDA max allocated) and ``peak_delta_mb`` (that minus the
    level before ganinv's nets were built); side by side also ``official_times_s``, ``official_s``
    (median) and ``max_diff``."""
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    device = torch.device(spec["device"])
    if spec["kind"] in ("method", "optimization") or spec.get("layout") == "nhwc":
        import ganinv.runner  # noqa: F401  (Lightning, Hydra: imported before the baseline, not measured)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else peak_memory_mb(device)
    out = KINDS[spec["kind"]](spec, device)
    peak = out.pop("peak_mb", None) or peak_memory_mb(device)
    base = out.pop("base_mb", None) or base
    seconds = statistics.median(out["times_s"])
    per = spec["batch"] if spec["unit"] == "img/s" else 1
    row = {**spec, **out, "seconds": seconds, "rate": per / seconds, "peak_mb": peak, "peak_delta_mb": peak - base}
    if "official_times_s" in out:
        row["official_s"] = statistics.median(out["official_times_s"])
    return row


def measure_isolated(spec):
    """``measure`` in a fresh subprocess (``speed.py --child``); a failure becomes a row with ``error``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "MKL_NUM_THREADS": str(spec["threads"]),
           "THP_MEM_ALLOC_ENABLE": "0" if spec.get("thp") == "off" else "1"}
    r = subprocess.run([sys.executable, str(SCRIPT), "--child", json.dumps(spec)], capture_output=True, text=True,
                       env=env, cwd=ROOT)
    for line in r.stdout.splitlines():
        if line.startswith("BENCH_ROW "):
            return json.loads(line[len("BENCH_ROW "):])
    return {**spec, "error": (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]}


def peak_gflops(peaks, device, precision):
    """The machine's peak for a row: the larger of the before/after measurements, or None."""
    name = PEAK_NAMES.get(precision)
    values = [p[device][name] for p in peaks if device in p and p[device].get(name) is not None]
    return max(values) if values else None


def annotate(row, peaks=()):
    """Add ``speedup`` = official_s / seconds and ``best_speedup`` = fastest official / fastest ganinv
    repeat (side-by-side rows only: both from this row's run), ``gflops_per_s`` = flops / seconds and
    ``peak_fraction`` = that / the machine's peak for the row's device and precision (``peaks``: the
    before and after measurements, ``machine.machine_peak``)."""
    if "seconds" not in row:
        return row
    if "official_times_s" not in row:  # JSON written before the side-by-side runs: stored official times
        for stale in ("official_s", "speedup", "best_speedup", "meets_target", "comparable"):
            row.pop(stale, None)
    row["best_s"] = min(row["times_s"])
    if "official_s" in row:
        row["speedup"] = row["official_s"] / row["seconds"]
        row["official_best_s"] = min(row["official_times_s"])
        row["best_speedup"] = row["official_best_s"] / row["best_s"]
    if row.get("flops"):
        row["gflops_per_s"] = row["flops"] / row["seconds"] / 1e9
        peak = peak_gflops(peaks, row.get("device", "cpu"), row.get("precision"))
        if peak:
            row["peak_fraction"] = row["gflops_per_s"] / peak
    return row
