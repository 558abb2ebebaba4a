"""Run progress and reports: ganinv.progress (inversion step lines, train.py's step bar, the last
training step in metrics.csv) and ganinv.report (loss-curve PNG, index.html, the demo's pieces)."""
import csv
import logging
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.callbacks import ProgressBar

from ganinv.losses import LPIPSLoss
from ganinv.methods.optimization import OptimizationInversion
from ganinv.methods.pti import PTI
from ganinv.methods.targets import w_statistics
from ganinv.nets.stylegan2 import Generator
from ganinv.outputs import Outputs
from ganinv.progress import LogLastStep, StepProgress, StepProgressBar, format_seconds
from ganinv.report import BACKGROUND, PALETTE, write_index, write_loss_curves
from ganinv.runner import build_callbacks, train

LINE = re.compile(r"^(\S+): step (\d+)/(\d+) loss (\S+) \((.*)\) ([0-9.]+) step/s ETA (\d+:\d\d:\d\d)$")


@pytest.fixture(scope="module")
def g():
    torch.manual_seed(0)
    return Generator(32, 64, n_mlp=2, channel_max=32).eval()


def images(g, n, seed=1):
    with torch.no_grad():
        w = g.mapping(torch.randn(n, g.style_dim, generator=torch.Generator().manual_seed(seed)))
        return g.synthesis(g.broadcast(w)), g.broadcast(w)


def fit(module, every_n):
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[StepProgress(every_n=every_n)])
    trainer.fit(module)
    return trainer


def progress_lines(caplog):
    return [LINE.match(r.getMessage()) for r in caplog.records if r.name == "ganinv.progress"]


def test_optimisation_progress_lines_hold_step_total_and_the_history_loss(g, caplog, one_thread):
    x, _ = images(g, 2)
    module = OptimizationInversion(g, x, steps=7, lr=0.05, w_stats=w_statistics(g, 500), keys=["a", "b"],
                                   name="batch_00003")
    with caplog.at_level(logging.INFO, logger="ganinv.progress"):
        fit(module, every_n=3)
    lines = progress_lines(caplog)
    assert all(lines) and [int(m.group(2)) for m in lines] == [3, 6, 7]  # every 3rd step and the last
    for m in lines:
        history = module.history[int(m.group(2)) - 1]
        assert m.group(1) == "batch_00003" and int(m.group(3)) == 7
        assert float(m.group(4)) == pytest.approx(float(history.sum()), rel=1e-5)
        per_image = dict(part.split(" ") for part in m.group(5).split(", "))
        assert per_image.keys() == {"a", "b"}
        assert [float(per_image[k]) for k in "ab"] == pytest.approx(history.tolist(), rel=1e-3)
        assert float(m.group(6)) > 0
    assert lines[-1].group(7) == "0:00:00"  # nothing left at the last step
    assert format_seconds(3725.4) == "1:02:05" and format_seconds(math.inf) == "?"


def test_a_run_that_stops_early_shows_its_last_step(g, caplog, one_thread):
    """PTI from the code that made the target stops at step 1 of 30 (LPIPS 0 <= 0.06): one line,
    1/30, with that step's loss."""
    x, pivots = images(g, 1)
    module = PTI(g, x, pivots, LPIPSLoss(net="alex", pnet_rand=True), steps=30, name="batch_00000_pti")
    with caplog.at_level(logging.INFO, logger="ganinv.progress"):
        fit(module, every_n=10)
    lines = progress_lines(caplog)
    assert len(lines) == 1 and lines[0].group(1, 2, 3) == ("batch_00000_pti", "1", "30")
    assert float(lines[0].group(4)) == pytest.approx(float(module.history[0].sum()), rel=1e-5, abs=1e-12)
    with pytest.raises(ValueError, match="every_n must be an int >= 0"):
        StepProgress(every_n=-1)


def test_loss_curve_png_draws_each_image_in_its_colour(tmp_path):
    steps = torch.arange(25, dtype=torch.float32)
    curves = torch.stack([2.0 * 0.95 ** steps, 0.2 * 0.9 ** steps, 0.01 + 0.0 * steps], 1)  # decades apart
    curves[12, 0] = math.nan  # a gap, not a drop to zero
    path = tmp_path / "curves" / "batch_00000.png"
    axes = write_loss_curves(path, curves, ["a", "b", "c"], size=(500, 300))
    assert axes.log and axes.low == pytest.approx(0.01) and axes.high == pytest.approx(2.0)
    with Image.open(path) as png:
        assert png.size == (500, 300)
        pixels = png.convert("RGB").load()

    def near(x, y, colour):
        return any(pixels[round(x) + dx, round(y) + dy] == colour for dx in (-1, 0, 1) for dy in (-1, 0, 1))

    for i in range(3):
        hits = [near(axes.x(s), axes.y(float(curves[s, i])), PALETTE[i]) for s in range(25) if s != 12]
        assert all(hits), (i, hits)
    assert not near(axes.x(12), axes.y(2.0 * 0.95 ** 12), PALETTE[0])  # the NaN step is left out
    assert pixels[2, 299] == BACKGROUND
    with pytest.raises(ValueError, match=r"must be \[steps, 2\] for 2 keys"):
        write_loss_curves(path, curves, ["a", "b"])


class Links(HTMLParser):
    """hrefs / srcs and the table cells of a page."""

    def __init__(self):
        super().__init__()
        self.links, self.tables, self.cell = [], [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.links += [attrs[a] for a in ("href", "src") if a in attrs]
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = ""

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self.cell)
            self.cell = None


def test_index_lists_every_image_with_existing_relative_links_and_the_metrics_verbatim(tmp_path):
    out, keys = tmp_path / "out", ["face 1", "sub/b", "c"]
    outputs = Outputs(out)
    inputs = {}
    for i, key in enumerate(keys):
        image = torch.rand(3, 16, 16) * 2 - 1
        inputs[key] = tmp_path / "photos" / f"{key}.png"
        inputs[key].parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(inputs[key])
        outputs.write_image(key, image, torch.zeros(4, 8))
        outputs.write_edit("sefa_0", key, torch.stack([image, -image]))
        outputs.add_rows([{"image": key, "mse": 0.1 * (i + 1), "psnr": 20.0 + i, "ssim": 0.5, "lpips": "",
                           "seconds": 1.5, "generator": ""}])
    write_loss_curves(out / "curves" / "batch_00000.png", torch.rand(5, 3) + 0.1, keys)
    page = write_index(out, inputs={k: v for k, v in inputs.items() if k != "c"})  # c has no known input
    parser = Links()
    parser.feed(page.read_text())
    assert parser.links and all(not re.match(r"^[a-z]+:|^/", link) for link in parser.links)
    targets = {(out / unquote(link)).resolve() for link in parser.links}
    assert all(t.exists() for t in targets)
    for key in keys:
        assert (out / "reconstructions" / f"{key}.png").resolve() in targets
        assert (out / "edits" / "sefa_0" / f"{key}.png").resolve() in targets
    assert {inputs["face 1"].resolve(), inputs["sub/b"].resolve()} <= targets
    assert (out / "curves" / "batch_00000.png").resolve() in targets
    gallery, metrics = parser.tables
    assert gallery[0] == ["image", "input", "reconstruction", "edit sefa_0"]
    assert [row[0] for row in gallery[1:]] == keys and gallery[3][1] == "—"  # c: no input shown
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert metrics[:len(rows)] == rows  # header and every row, as written
    mean = metrics[len(rows)]
    assert mean[0] == "mean" and float(mean[1]) == pytest.approx(0.2) and float(mean[2]) == pytest.approx(21.0)
    assert mean[4] == ""  # lpips is blank in every row


def tiny_train(tmp_path, compose_train, *extra):
    return compose_train("+method=psp", "generator=random", "loss=embedded", "logger=csv", "export=false",
                         "data.size=32", "data.batch_size=2", "data.train_length=8", "data.val_length=4",
                         "data.test_length=4", "trainer.limit_val_batches=1", "trainer.val_check_interval=1000",
                         "trainer.max_steps=3", "trainer.log_every_n_steps=10", *extra)


def test_training_shows_steps_of_max_steps_and_logs_the_last_step(tmp_path, compose_train, capsys, one_thread):
    cfg = tiny_train(tmp_path, compose_train)
    trainer = train(cfg)
    out = capsys.readouterr().out
    assert re.search(r"train: 100%\|[^|]*\| 3/3 ", out) and "Epoch" not in out
    assert [type(c) for c in trainer.callbacks].count(StepProgressBar) == 1
    assert trainer.log_every_n_steps == 10  # LogLastStep put it back
    with open(Path(cfg.paths.output_dir) / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [2]  # 3 steps, log_every_n_steps=10: the last one only
    assert float(rows[0]["train/loss"]) == pytest.approx(float(trainer.callback_metrics["train/loss"]), rel=1e-6)


def test_no_progress_bar_callback_when_the_bar_is_disabled(tmp_path, compose_train):
    shown = build_callbacks(tiny_train(tmp_path, compose_train))
    hidden = build_callbacks(tiny_train(tmp_path, compose_train, "+trainer.enable_progress_bar=false"))
    assert sum(isinstance(c, ProgressBar) for c in shown) == 1
    assert [type(c) for c in hidden] == [type(c) for c in shown if not isinstance(c, ProgressBar)]
    assert any(isinstance(c, LogLastStep) for c in hidden)
