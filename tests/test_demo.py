"""The end-to-end demo (``make demo``) on a short schedule: every stage runs and the report holds
both reconstructions, the edits and the metrics table."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
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


@pytest.mark.slow
def test_demo_fails_when_reconstructions_miss_the_bound(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ganinv.demo", "--out", str(tmp_path / "demo"), "--train-steps",
                        "2", "--opt-steps", "2", "--n-images", "1", "--max-mse", "1e-6"],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                       timeout=900)
    assert r.returncode == 1
    assert re.search(r"demo: .+ held-out MSE [0-9.]+ is not below the bound --max-mse 1e-06", r.stderr)
    assert (tmp_path / "demo" / "report.html").is_file()  # the report is still written, for inspection
