"""invert.py's progress lines, loss-curve PNGs and index.html (ganinv.progress, ganinv.report wired
into ganinv.invert.run / ganinv.inversion), end to end on a tiny generator."""
import re
import shutil
from pathlib import Path

import pytest
from conftest import run_invert, write_tiny_run
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
KEYS = ["faces/im0", "im1", "im2"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("wiring")
    write_tiny_run(root, KEYS)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_progress_lines_curves_and_index(workdir):
    steps, pti_steps = 6, 4
    done = run_invert("input=photos", "output=out", "generator=checkpoint", "generator.path=g.pt", "batch_size=2",
                      f"inversion.steps={steps}", "inversion.n_mean_latent=200", "refine=pti", f"pti.steps={pti_steps}",
                      "pti.lpips_threshold=-1", "progress_every=2", "logger=none", cwd=workdir)
    assert done.returncode == 0, done.stderr[-2000:]
    text = done.stdout + done.stderr
    # batches of 2 + 1 images: the optimisation's lines every 2 steps and at the last, named by the batch
    for name in ("batch_00000", "batch_00001"):
        shown = [int(k) for k in re.findall(rf"{name}: step (\d+)/{steps} loss [0-9.e+-]+ \(", text)]
        assert shown == [2, 4, 6], (name, shown)
    pti = [int(k) for k in re.findall(rf": step (\d+)/{pti_steps} loss .* step/s ETA \d+:\d\d:\d\d", text)]
    assert pti == [2, 4] * len(KEYS)
    out = workdir / "out"
    # a curve per optimisation batch (named by its first key) and per PTI run, [steps] points per image
    curves = sorted(p.relative_to(out / "curves").as_posix() for p in (out / "curves").rglob("*.png"))
    assert curves == ["faces/im0.png", "im2.png", "pti/faces/im0.png", "pti/im1.png", "pti/im2.png"]
    assert Image.open(out / "curves" / "faces" / "im0.png").size == (640, 360)
    page = (out / "index.html").read_text()
    for key in KEYS:
        assert f'href="reconstructions/{key}.png"' in page
        assert f'href="curves/pti/{key}.png"' in page
    assert page.count('href="reconstructions/') == 2 * 0 + len(KEYS)
    # progress_every=0: no progress lines; a bad value is one line, exit 2
    quiet = run_invert("input=photos/im1.png", "output=out0", "generator=checkpoint", "generator.path=g.pt",
                       "inversion.steps=3", "inversion.n_mean_latent=200", "progress_every=0", "logger=none",
                       cwd=workdir)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert " step 3/3" not in quiet.stdout + quiet.stderr
    assert (workdir / "out0" / "curves" / "im1.png").is_file()
    bad = run_invert("input=photos", "output=out1", "progress_every=-1", cwd=workdir)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "invert.py: progress_every=-1: expected an integer >= 0"], bad.stderr
