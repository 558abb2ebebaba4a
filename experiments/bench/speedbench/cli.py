"""The command line: plan the rows, measure each in its own subprocess, print the table, write JSON."""
import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path

from . import official as official_code
from .build import ROOT
from .ddp import ddp_scaling
from .machine import machine_info, machine_peak
from .measure import annotate, measure, measure_isolated
from .plan import PARTS, available_configs, plan
from .report import cell, markdown, peak_lines

DEFAULT_OFFICIAL = ROOT.parent / "shared" / "baselines"  # CI keeps ../shared beside the clone


def parser():
    ap = argparse.ArgumentParser(prog="speed.py", description="ganinv speed benchmark: a markdown table on stdout "
                                 "and the rows as JSON; the ref rows side by side with the official code.")
    add = ap.add_argument
    add("--only",      nargs="+", default=list(PARTS), choices=PARTS, help="parts to measure")
    add("--quick",     action="store_true",  help="smoke run: 64 px, 1 warm-up + 1 timed repeat, short DDP")
    add("--official",  default=None,         help="official code (rosinality/, e4e/) run side by side with the ref "
                                                  "rows; default ../shared/baselines beside the repo; none: ganinv "
                                                  "alone", metavar="DIR")
    add("--sizes",     nargs="+", type=int,  help="default 64 256 (--quick: 64)")
    add("--device",    nargs="+", choices=["cpu", "cuda"],  help="default cpu (+ cuda when available)")
    add("--precision", nargs="+", choices=["32", "bf16"],   help="default 32 (+ bf16 on native-bf16 CPUs, CUDA)")
    add("--layout",    nargs="+", choices=["nchw", "nhwc"], default=["nchw"], help="nhwc: channels_last (train.py "
                                                                                   "channels_last=true)")
    add("--thp",       nargs="+", choices=["on", "off"],    default=["on"],   help="THP_MEM_ALLOC_ENABLE (on: what "
                                                                                   "importing ganinv sets)")
    add("--threads",   type=int, default=2,  help="torch threads per measurement")
    add("--repeats",   type=int,             help="timed repeats (default 3, --quick 1)")
    add("--ddp-steps", type=int,             help="steps per DDP run (default 30, --quick 5)")
    add("--ddp-batch", type=int, default=4,  help="per-process batch of the DDP rows")
    add("--ddp-args",  nargs="*", default=[], help="more train.py overrides for both DDP runs, e.g. channels_last=true")
    add("--json",      default=None,         help="default experiments/results/bench.json (--quick: bench_quick.json)")
    add("--render",    nargs="+", metavar="JSON", help="print the tables of earlier runs' JSON files and exit")
    add("--child",     help=argparse.SUPPRESS)  # one spec as JSON, run by measure.measure_isolated
    return ap


def official_dir(args):
    """The official code's folder for the ref rows, or None ('none', or no ref rows planned);
    a folder without the official files ends the run with one line naming it."""
    if "ref" not in args.only or args.official == "none":
        return None
    try:
        return official_code.check_dir(DEFAULT_OFFICIAL if args.official is None else args.official)
    except official_code.OfficialDirError as e:
        sys.exit(f"speed.py: {e}")


def progress(row, t_start):
    if "error" in row:
        status = row["error"]
    else:
        status = f"{row['seconds']:.3f} s, {row['rate']:.3g} {row['unit']}, {row['peak_mb']:.0f} MB"
        if "official_s" in row:
            status += f"; official {row['official_s']:.3f} s ({row['official_s'] / row['seconds']:.2f}×)"
    print(f"[{time.perf_counter() - t_start:6.0f} s] {row['name']} ({cell(row, 'config')}, batch {row['batch']}): "
          f"{status}", file=sys.stderr, flush=True)


def run(args):
    """The whole run -> the result dict (machine, peak before/after, rows), written as JSON."""
    official = official_dir(args)
    sizes = args.sizes or ([64] if args.quick else [64, 256])
    repeats = args.repeats or (1 if args.quick else 3)
    ddp_steps = args.ddp_steps or (5 if args.quick else 30)
    configs = available_configs(args.device, args.precision, args.layout, args.thp)
    devices = sorted({c[0] for c in configs})
    result = {"machine": machine_info(args.threads), "quick": args.quick, "sizes": sizes,
              "official": None if official is None else str(official), "rows": []}
    t_start = time.perf_counter()
    before = machine_peak(devices, args.threads)
    result["peak"] = [before, {}]
    print("\n".join(peak_lines(result)), file=sys.stderr, flush=True)
    for spec in plan(args.only, sizes, configs, args.threads, 1, repeats, official):
        row = measure_isolated(spec)
        result["rows"].append(row)
        progress(row, t_start)
    if "ddp" in args.only:
        result["rows"] += ddp_scaling(args.ddp_batch, ddp_steps, 2 if args.quick else 5, args.ddp_args)
    result["peak"] = [before, machine_peak(devices, args.threads)]
    result["rows"] = [annotate(r, result["peak"]) for r in result["rows"]]
    result["seconds_total"] = time.perf_counter() - t_start
    out = Path(args.json or ROOT / "experiments/results" / ("bench_quick.json" if args.quick else "bench.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    result["json"] = str(out)
    return result


def main(argv=None):
    args = parser().parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.child is not None:
        logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
        print("BENCH_ROW " + json.dumps(measure(json.loads(args.child))), flush=True)
        return
    if args.render:
        results = [json.loads(Path(f).read_text()) for f in args.render]
        merged = {**results[0], "rows": [annotate(r, res.get("peak", ())) for res in results for r in res["rows"]]}
        print(markdown(merged))
        return
    result = run(args)
    print(markdown(result))
    print(f"\nwrote {result['json']} ({result['seconds_total']:.0f} s)")
