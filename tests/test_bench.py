"""experiments/bench/speed.py: the plan holds the issue's reference configuration, and every kind of
measurement returns positive finite timings on tiny networks (the 256 px rows are not run here)."""
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("speed", ROOT / "experiments" / "bench" / "speed.py")
speed = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(speed)

TINY_G = dict(size=32, style_dim=512, n_mlp=2, channel_multiplier=2, channel_max=32)
TINY_E = dict(num_layers=18, mode="ir_se", input_size=32, head_channels=32)
BASE = dict(device="cpu", precision="32", threads=1, warmup=1, repeats=2, size=32, batch=2, unit="it/s",
            section="test", generator=TINY_G, encoder=TINY_E)
ROW_KEYS = {"key", "name", "kind", "device", "precision", "batch", "times_s", "seconds", "rate", "unit", "peak_mb",
            "peak_delta_mb"}


def tiny(kind, **extra):
    return {**BASE, "key": f"test/{kind}", "name": kind, "kind": kind, **extra}


def check_row(row, spec):
    assert ROW_KEYS <= row.keys()
    assert len(row["times_s"]) == spec["repeats"]
    assert all(math.isfinite(t) and t > 0 for t in row["times_s"])
    assert min(row["times_s"]) <= row["seconds"] <= max(row["times_s"])
    per = spec["batch"] if spec["unit"] == "img/s" else 1
    assert row["rate"] == pytest.approx(per / row["seconds"])
    assert math.isfinite(row["peak_mb"]) and row["peak_mb"] > 100  # Python + torch alone are more
    assert 0 <= row["peak_delta_mb"] <= row["peak_mb"]


def test_plan_has_the_reference_configuration():
    specs = speed.plan(["ref", "methods", "inference", "optimization"], [64, 256], [("cpu", "32", "nchw")], 2, 1, 3)
    by_key = {s["key"]: s for s in specs}
    assert len(by_key) == len(specs)  # keys are unique per config
    assert set(speed.OFFICIAL_S) <= by_key.keys()
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


@pytest.mark.parametrize("spec", [
    tiny("g_forward"), tiny("g_forward_backward"), tiny("e4e_step"), tiny("e4e_inference"),
    tiny("encode", unit="img/s", encoder_kind="psp"), tiny("encode", unit="img/s", encoder_kind="idinvert"),
    tiny("encode", unit="img/s", encoder_kind="e4e", decode=True),
    tiny("method", overrides=["+method=psp", "generator=random", "method.module.image_every=0"]),
    tiny("method", overrides=["+method=e4e", "generator=random", "method.module.image_every=0",
                              "method.module.progressive_start=null"]),
    tiny("method", overrides=["+method=idinvert", "generator=random", "method.module.image_every=0"]),
    tiny("optimization"),
    tiny("e4e_step", layout="nhwc"),
    tiny("method", layout="nhwc", overrides=["+method=psp", "generator=random", "method.module.image_every=0"]),
], ids=lambda s: "_".join(filter(None, [s["kind"], s.get("encoder_kind"), s.get("layout"),
                                       s.get("overrides", [""])[0].removeprefix("+method=")])))
def test_measure_tiny(spec):
    check_row(speed.measure(spec), spec)


def test_isolated_row_speedup_and_markdown():
    spec = tiny("g_forward")
    row = speed.annotate(speed.measure_isolated(spec))  # a subprocess: its own peak memory
    check_row(row, spec)
    assert "speedup" not in row  # no official number for this key
    ref = speed.annotate({"key": "ref/e4e_step_256", "device": "cpu", "precision": "32", "threads": 2, "batch": 4,
                          "seconds": 13.0, "times_s": [14.0, 13.0, 12.0]})
    assert ref["speedup"] == pytest.approx(3.0) and ref["meets_target"] and ref["comparable"]
    assert ref["best_s"] == 12.0 and ref["best_speedup"] == pytest.approx(3.25)
    bf16 = speed.annotate({"key": "ref/e4e_step_256", "device": "cpu", "precision": "bf16", "threads": 2,
                           "batch": 4, "seconds": 13.0})
    assert "speedup" not in bf16  # identical math only
    result = {"machine": speed.machine_info(1), "rows": [{**row, "section": "ref"}, {**ref, "section": "ref",
                                                                                        "name": "e4e step"}]}
    text = speed.markdown(result)
    assert "| g_forward | cpu fp32 | 2 |" in text
    assert "| 39 | 3.00× ✓ | 12 | 3.25× |" in text


@pytest.mark.slow
def test_ddp_scaling_rows():
    rows = speed.ddp_scaling(batch=2, steps=4, warmup=2)
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
