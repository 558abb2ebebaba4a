"""experiments/bench/speed.py and its package speedbench/: the plan holds the reference configuration,
every kind of measurement returns positive finite timings and FLOPs on tiny networks, and with
--official the ref rows carry the official code's timings from the same run (the 256 px rows are
not run here; no timed assertions)."""
import importlib
import math
import os
import statistics
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments" / "bench"))

from speedbench import cli, machine, measure, plan, ref, report  # noqa: E402
from speedbench.ddp import ddp_scaling  # noqa: E402

OFFICIAL = ROOT.parent / "shared" / "baselines"  # CI keeps ../shared beside the clone
PARTS = ("cli", "plan", "ref", "methods", "inference", "optimization", "ddp", "official", "build", "timing",
         "machine", "flops", "measure", "report")
TINY_G = dict(size=32, style_dim=512, n_mlp=2, channel_multiplier=2, channel_max=32)
TINY_E = dict(num_layers=18, mode="ir_se", input_size=32, head_channels=32)
BASE = dict(device="cpu", precision="32", threads=1, warmup=1, repeats=2, size=32, batch=2, unit="it/s",
            section="test", generator=TINY_G, encoder=TINY_E)
# side by side: the official architectures (512 channels, Encoder4Editing(50, 'ir_se')) at 8 px
OFFICIAL_G = dict(size=8, style_dim=512, n_mlp=2, channel_multiplier=1)
SIDE = dict(BASE, section="ref", size=8, repeats=2, generator=OFFICIAL_G, encoder=ref.ENCODER, official=str(OFFICIAL))
ROW_KEYS = {"key", "name", "kind", "device", "precision", "batch", "times_s", "seconds", "rate", "unit", "flops",
            "peak_mb", "peak_delta_mb"}
PEAKS = [{"cpu": {"fp32": 50.0, "bf16": 200.0}}, {"cpu": {"fp32": 40.0, "bf16": 250.0}}]
needs_official = pytest.mark.skipif(not OFFICIAL.is_dir(), reason=f"no official baselines at {OFFICIAL}")


def tiny(kind, **extra):
    return {**BASE, "key": f"test/{kind}", "name": kind, "kind": kind, **extra}


def side(kind, **extra):
    return {**SIDE, "key": f"ref/{kind}", "name": kind, "kind": kind, **extra}


def check_row(row, spec):
    assert ROW_KEYS <= row.keys()
    assert len(row["times_s"]) == spec["repeats"]
    assert all(math.isfinite(t) and t > 0 for t in row["times_s"])
    assert min(row["times_s"]) <= row["seconds"] <= max(row["times_s"])
    per = spec["batch"] if spec["unit"] == "img/s" else 1
    assert row["rate"] == pytest.approx(per / row["seconds"])
    if spec.get("count_flops", True):
        assert row["flops"] > 0
    assert math.isfinite(row["peak_mb"]) and row["peak_mb"] > 100  # Python + torch alone are more
    assert 0 <= row["peak_delta_mb"] <= row["peak_mb"]


def check_side_by_side(row, spec):
    """Both sides' timings from this row's run; speed-up and fraction of peak from them."""
    check_row(row, spec)
    assert len(row["official_times_s"]) == spec["repeats"]
    assert all(math.isfinite(t) and t > 0 for t in row["official_times_s"])
    assert row["max_diff"] < 1e-4  # the official weights loaded into ganinv's: the same images
    row = measure.annotate(row, PEAKS)
    assert row["official_s"] == statistics.median(row["official_times_s"])
    assert row["speedup"] == pytest.approx(row["official_s"] / row["seconds"])
    assert row["best_speedup"] == pytest.approx(min(row["official_times_s"]) / min(row["times_s"]))
    assert row["peak_fraction"] == pytest.approx(row["flops"] / row["seconds"] / 1e9 / 50.0)  # max(50, 40) fp32
    return row


def test_parts_import():
    for part in PARTS:
        assert importlib.import_module(f"speedbench.{part}").__doc__
    assert set(measure.KINDS) == {"g_forward", "g_forward_backward", "e4e_step", "e4e_inference", "encode",
                                  "method", "optimization"}
    assert not hasattr(measure, "OFFICIAL_S") and not hasattr(ref, "OFFICIAL_S")  # no stored official times


def test_plan_has_the_reference_configuration():
    specs = plan.plan(["ref", "methods", "inference", "optimization"], [64, 256], [("cpu", "32", "nchw")], 2, 1, 3,
                      official=OFFICIAL)
    by_key = {s["key"]: s for s in specs}
    assert len(by_key) == len(specs)  # keys are unique per config
    ref_keys = {"ref/g_forward_64", "ref/g_forward_256", "ref/g_forward_backward_256", "ref/e4e_step_256",
                "ref/e4e_inference_256"}
    assert {k for k in by_key if k.startswith("ref/")} == ref_keys
    assert all(by_key[k]["official"] == str(OFFICIAL) for k in ref_keys)
    assert not any("official" in s for s in specs if s["section"] != "ref")
    step = by_key["ref/e4e_step_256"]
    assert step["generator"] == dict(size=256, style_dim=512, n_mlp=8, channel_multiplier=2)
    assert step["encoder"] == dict(num_layers=50, mode="ir_se", input_size=256, head_channels=512)
    assert (step["batch"], step["threads"], step["precision"]) == (4, 2, "32")
    assert by_key["ref/g_forward_64"]["generator"]["size"] == 64
    # 3 methods x 2 sizes, 4 encoder rows x 2 batches x 2 sizes, 1 optimisation row per size
    assert sum(s["section"] == "methods" for s in specs) == 6
    assert {s["batch"] for s in specs if s["section"] == "inference"} == {1, 8}
    assert sum(s["section"] == "inference" for s in specs) == 16
    assert sum(s["section"] == "optimization" for s in specs) == 2
    assert any("encoder=checkpoint" in s["overrides"] for s in specs if s["key"] == "methods/e4e_256")
    alone = plan.plan(["ref"], [64], [("cpu", "32", "nchw")], 2, 1, 3)
    assert all(s["official"] is None for s in alone)


@pytest.mark.parametrize("spec", [
    tiny("g_forward"), tiny("g_forward_backward"), tiny("e4e_step"), tiny("e4e_inference"),
    tiny("encode", unit="img/s", encoder_kind="psp"), tiny("encode", unit="img/s", encoder_kind="idinvert"),
    tiny("encode", unit="img/s", encoder_kind="e4e", decode=True),
    tiny("method", overrides=["+method=psp", "generator=random", "method.module.image_every=0"]),
    tiny("method", count_flops=False, overrides=["+method=e4e", "generator=random", "method.module.image_every=0",
                              "method.module.progressive_start=null"]),
    tiny("method", count_flops=False, overrides=["+method=idinvert", "generator=random",
                                                 "method.module.image_every=0"]),
    tiny("optimization"),
    tiny("e4e_step", layout="nhwc"),
    tiny("method", layout="nhwc", overrides=["+method=psp", "generator=random", "method.module.image_every=0"]),
], ids=lambda s: "_".join(filter(None, [s["kind"], s.get("encoder_kind"), s.get("layout"),
                                       s.get("overrides", [""])[0].removeprefix("+method=")])))
def test_measure_tiny(spec):
    row = measure.measure(spec)
    check_row(row, spec)
    assert "official_times_s" not in row and "speedup" not in measure.annotate(row, PEAKS)  # ganinv alone


@needs_official
@pytest.mark.parametrize("kind", ["g_forward_backward", "e4e_inference"])
def test_side_by_side_rows(kind):
    spec = side(kind, repeats=1, batch=1)
    check_side_by_side(measure.measure(spec), spec)


@needs_official
@pytest.mark.slow
def test_side_by_side_e4e_step():
    spec = side("e4e_step", size=32, batch=1, repeats=1, generator={**OFFICIAL_G, "size": 32})  # AlexNet needs 32 px
    check_side_by_side(measure.measure(spec), spec)


@needs_official
def test_isolated_side_by_side_row_flops_peak_lines_and_markdown():
    spec = side("g_forward")
    row = measure.measure_isolated(spec)  # a subprocess (speed.py --child), as the CLI runs every row
    assert "error" not in row, row.get("error")
    check_side_by_side(row, spec)
    g = ref.make_generator(spec, "cpu").requires_grad_(False)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        g(torch.randn(spec["batch"], g.style_dim))
    assert row["flops"] == counter.get_total_flops()  # the row's FLOPs: FlopCounterMode's count of one call
    peaks = [machine.machine_peak(["cpu"], 1, n=256), machine.machine_peak(["cpu"], 1, n=256)]
    native = machine.native_bf16("cpu")  # AMX / AVX512-BF16: measured; emulated (AVX2 only): not measured
    assert all(p["cpu"]["fp32"] > 0 and (p["cpu"]["bf16"] > 0 if native else p["cpu"]["bf16"] is None) for p in peaks)
    row = measure.annotate(row, peaks)
    assert row["peak_fraction"] == pytest.approx(row["flops"] / row["seconds"] / 1e9
                                                 / max(p["cpu"]["fp32"] for p in peaks))
    text = report.markdown({"machine": machine.machine_info(1), "peak": peaks, "official": str(OFFICIAL),
                            "rows": [row]})
    assert "Machine peak (cpu, 1 threads, 2048² matmul): fp32 sgemm " in text and "; bf16 matmul " in text
    assert text.count(" before, ") == (2 if native else 1) and text.count(" after") >= (2 if native else 1)
    assert native or "bf16 matmul not measured (no native bf16 on this device)" in text
    assert f"| g_forward | cpu fp32 | 2 | {report.fmt(row['seconds'])} | {report.fmt(row['official_s'])} | " \
           f"{row['speedup']:.2f}× |" in text
    assert f"| {100 * row['peak_fraction']:.0f}% |" in text


def test_official_dir_default_and_missing():
    args = Namespace(only=["ref"], official=None)
    assert cli.DEFAULT_OFFICIAL == OFFICIAL
    if OFFICIAL.is_dir():
        assert cli.official_dir(args) == OFFICIAL.resolve()
    assert cli.official_dir(Namespace(only=["ref"], official="none")) is None
    assert cli.official_dir(Namespace(only=["methods"], official="/no/such/dir")) is None  # no ref rows: not needed
    with pytest.raises(SystemExit) as e:
        cli.official_dir(Namespace(only=["ref"], official="/no/such/dir"))
    message = str(e.value.code)
    assert "\n" not in message and "/no/such/dir" in message and message.startswith("speed.py: --official ")


def test_render_of_stored_results_drops_stored_official_times():
    import json

    stored = json.loads((ROOT / "experiments/results/bench_ref.json").read_text())
    rows = [measure.annotate(r, stored.get("peak", ())) for r in stored["rows"]]
    assert rows and not any("speedup" in r or "official_s" in r for r in rows)
    text = report.markdown({**stored, "rows": rows})
    assert "Machine speed: fp32 sgemm" in text and "×" not in text.split("### ")[1].split("Batch 4")[0]


@pytest.mark.slow
def test_ddp_scaling_rows():
    rows = ddp_scaling(batch=2, steps=4, warmup=2)
    assert [r["processes"] for r in rows] == [1, 2]
    for r in rows:
        assert "error" not in r, r.get("error")
        assert len(r["times_s"]) == 2 and all(t > 0 for t in r["times_s"])
        assert r["images_per_s"] == pytest.approx(r["processes"] * 2 / r["seconds"])
    assert 0 < rows[1]["efficiency"] < 2


HUGE_PAGES = """
import os, re, ganinv, torch
x = torch.ones(64 << 18)  # 64 MB, touched
kb = int(re.search(r"AnonHugePages:\\s+(\\d+)", open("/proc/self/smaps_rollup").read()).group(1))
print(os.environ["THP_MEM_ALLOC_ENABLE"], kb)
"""


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="Linux /proc only")
def test_importing_ganinv_backs_large_tensors_with_huge_pages_unless_opted_out():
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")

    def run(**env):
        base = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
        out = subprocess.run([sys.executable, "-c", HUGE_PAGES], capture_output=True, text=True, check=True,
                             env={**base, **env}).stdout.split()
        return out[0], int(out[1])

    flag, kb = run()
    assert flag == "1"
    if thp.exists() and "[never]" not in thp.read_text():
        assert kb >= 32 << 10  # most of the 64 MB tensor sits on 2 MB pages
    flag, kb = run(THP_MEM_ALLOC_ENABLE="0")
    assert flag == "0"
    if thp.exists() and "[madvise]" in thp.read_text():  # huge pages only where asked for
        assert kb < 32 << 10
