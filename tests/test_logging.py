"""What a training run logs: the W&B offline run (config, metrics, images), the CSV alongside it,
and the validation metrics (ID similarity when the ArcFace weights are there)."""
import csv
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from ganinv.metrics.image import id_similarity

ROOT = Path(__file__).resolve().parent.parent
TINY_E4E = [
    "+method=e4e", "generator=random", "loss=embedded", "data.size=32", "data.batch_size=4",
    "data.train_length=8", "data.val_length=8", "trainer.limit_val_batches=1", "trainer.val_check_interval=2",
    "trainer.log_every_n_steps=1", "trainer.max_steps=4", "method.module.image_every=2", "export=false",
    "+trainer.enable_progress_bar=false",
]


def wandb_records(path):
    """Decode a W&B ``.wandb`` file: a LevelDB-style log (7-byte file header, 32 KiB blocks, each
    chunk = crc32 u32 | length u16 | type u8 | payload) of ``wandb_internal_pb2.Record`` messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = Path(path).read_bytes(), 32768
    assert data[:4] == b":W&B", f"{path} is not a W&B log"
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk: a record is complete
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _key(item):
    return item.key or "/".join(item.nested_key)


def test_wandb_offline_run_holds_config_metrics_and_images(tmp_path):
    """A default-logger run writes an offline W&B run with the resolved config, grouped by method,
    the train/val metrics at the right steps and the image grids — and the same metrics to CSV."""
    pytest.importorskip("wandb")
    out = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), *TINY_E4E, "logger=default",
                        f"hydra.run.dir={out}"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    records = wandb_records(next(run_dir.glob("run-*.wandb")))

    (run,) = [rec.run for rec in records if rec.WhichOneof("record_type") == "run"]
    assert (run.project, run.run_group, run.job_type) == ("ganinv", "e4e", "train")
    (config,) = [{_key(item): json.loads(item.value_json) for item in rec.config.update}
                 for rec in records if rec.WhichOneof("record_type") == "config"]  # logged once
    assert config["method"]["name"] == "e4e"
    assert config["method"]["module"]["delta_norm_lambda"] == 2e-4  # resolved, not interpolations
    assert config["generator"]["size"] == 32 and config["data"]["batch_size"] == 4
    assert config["paths"]["output_dir"] == str(out)

    history = [{_key(i): json.loads(i.value_json) for i in rec.history.item}
               for rec in records if rec.WhichOneof("record_type") == "history"]
    train = [h for h in history if "train/loss" in h]
    assert sorted(h["trainer/global_step"] for h in train) == [0, 1, 2, 3]  # iterations, not opt steps
    assert [h["train/stage"] for h in train] == [0, 0, 0, 0]  # progressive_start 20000: w only
    val = [h for h in history if "val/mse" in h]
    assert len(val) == 2  # after iterations 2 and 4
    for h in val:
        assert {"val/psnr", "val/ssim", "val/lpips", "val/loss"} <= h.keys()
        assert 0 < h["val/mse"] < 4 and 0 <= h["val/ssim"] <= 1 and h["val/psnr"] > 0
    assert any(k.startswith("lr-") for h in history for k in h)

    images = sorted((run_dir / "files" / "media" / "images").rglob("*.png"))
    names = {p.parent.name + "/" + p.name.rsplit("_", 2)[0] for p in images}
    assert {"val/input_recon_target", "train/input_recon_target"} <= names
    with Image.open(next(p for p in images if p.parent.name == "val")) as grid:
        assert grid.width > 3 * 32 and grid.height > 32  # input | reconstruction | target columns

    rows = list(csv.DictReader(open(out / "csv" / "metrics.csv")))
    csv_val = [float(row["val/mse"]) for row in rows if row.get("val/mse")]
    assert csv_val == pytest.approx([h["val/mse"] for h in val], rel=1e-6)


def test_validation_reports_id_similarity_when_arcface_weights_exist(tmp_path, compose_train):
    """With ``id_lambda > 0`` (the weights file present), validation logs ArcFace cosine similarity."""
    from hydra.utils import instantiate

    from ganinv.losses import IDLoss
    from ganinv.nets.irse import Backbone

    torch.manual_seed(0)
    facenet = Backbone(112, 50, mode="ir_se").eval()
    weights = tmp_path / "model_ir_se50.pth"
    torch.save(facenet.state_dict(), weights)
    cfg = compose_train("+method=psp", "generator=random", "loss=embedded", "data.size=32",
                        "method.module.id_lambda=0.1", f"method.module.id_weights={weights}")
    module = instantiate(cfg.method.module)
    assert "id" in module.val_metrics
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        _, y, _, y_hat = module.invert_batch({"x": x, "y": x}, noise_mode="const")
    module.log_dict = module.log = lambda *a, **k: None  # no trainer attached
    module._evaluate({"x": x, "y": x}, 1, "val")
    expected = id_similarity(y_hat, y, IDLoss(backbone=facenet)).mean()
    assert -1 <= expected <= 1
    torch.testing.assert_close(module.val_metrics["id"].compute(), expected, atol=1e-5, rtol=0)
