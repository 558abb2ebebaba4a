"""The end-to-end demo (``make demo``) on a short schedule: every stage runs and the report holds
both reconstructions, the edits and the metrics table."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_short_schedule_writes_report(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    r = subprocess.run([sys.executable, "-m", "ganinv.demo", "--out", str(out), "--train-steps", "6",
                        "--opt-steps", "5", "--n-images", "2", "--max-mse", "2"],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"report: {out / 'report.html'}" in r.stdout
    with Image.open(out / "report.png") as png:  # 2 rows x (input | e4e | optimisation | edit − | edit +)
        assert png.size == (2 + 5 * (64 + 2), 2 + 2 * (64 + 2))
    page = (out / "report.html").read_text()
    mse = [float(v) for v in re.findall(r"<tr><td>[^<]+</td><td>([0-9.]+)</td>", page)]
    assert len(mse) == 2 and all(0 < v < 2 for v in mse)
    assert "data:image/png;base64," in page
    for folder in ("e4e", "optimisation"):  # each inversion's page, linked from the report, lists both faces
        assert f'<a href="{folder}/index.html">' in page
        assert re.findall(r"<tr><td>(face_\d\d)</td>", (out / folder / "index.html").read_text())[:2] == \
            ["face_00", "face_01"]


@pytest.mark.slow
def test_demo_fails_when_reconstructions_miss_the_bound(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ganinv.demo", "--out", str(tmp_path / "demo"), "--train-steps",
                        "2", "--opt-steps", "2", "--n-images", "1", "--max-mse", "1e-6"],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                       timeout=900)
    assert r.returncode == 1
    assert re.search(r"demo: .+ held-out MSE [0-9.]+ is not below the bound --max-mse 1e-06", r.stderr)
    assert (tmp_path / "demo" / "report.html").is_file()  # the report is still written, for inspection


def test_report_page_holds_the_grid_the_metrics_and_links_to_the_run_pages(tmp_path):
    """ganinv.demo.report on small tensors: report.png is the (input | 2 reconstructions | 2 edits)
    grid, the table holds each method's means as formatted, the run pages are linked relatively."""
    from ganinv.demo import report
    from ganinv.report import write_index

    torch.manual_seed(0)
    inputs = torch.rand(3, 3, 16, 16) * 2 - 1
    rows, edits = [torch.zeros(3, 3, 16, 16)] * 2, [torch.ones(3, 3, 16, 16)] * 2
    metrics = {"e4e": {"mse": 0.01234, "psnr": 25.0, "ssim": 0.9, "seconds": 0.5},
               "optimisation (W+)": {"mse": 0.5, "psnr": 12.5, "ssim": 0.25, "seconds": 3.0}}
    (tmp_path / "e4e").mkdir()
    pages = [write_index(tmp_path / "e4e")]
    report(tmp_path, inputs, rows, metrics, edits, {"train e4e": 12.0}, 0.9, [-2.0, 2.0], pages)
    with Image.open(tmp_path / "report.png") as png:
        assert png.size == (2 + 5 * (16 + 2), 2 + 3 * (16 + 2))
    page = (tmp_path / "report.html").read_text()
    assert re.findall(r"<tr><td>([^<]+)</td><td>([0-9.]+)</td><td>([0-9.]+)</td>", page) == [
        ("e4e", "0.0123", "25.00"), ("optimisation (W+)", "0.5000", "12.50")]
    assert '<a href="e4e/index.html">e4e</a>' in page and (tmp_path / "e4e" / "index.html").is_file()
