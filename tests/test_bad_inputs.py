"""Every bad input to train.py / invert.py: the exit status, one line naming the file or field (no
traceback), and an output folder without partial files. Each case is a subprocess, as a user runs it.

Exit 2 with ``<script>: <message>`` is ganinv's, also for a config Hydra cannot compose (unknown group
option or key: ganinv.cli turns Hydra's multi-line report into one line). Unreadable images in a folder
are skipped and listed in the summary (exit 0). The output folder may hold Hydra's run record
(``.hydra/``, ``*.log``) and the CSV logger's ``csv/`` folder; anything else must be listed in the
case, and no ``*.tmp`` may remain.
"""
import os
import pickle
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from PIL import Image

from ganinv.checkpoints import save_atomic
from ganinv.data.images import save_image
from ganinv.nets.idinvert_encoder import IDInvertEncoder
from ganinv.nets.stylegan2 import Generator

ROOT = Path(__file__).resolve().parent.parent
# what the project ships, as Hydra lists it (sorted): conf/invert/inversion/ presets, conf/method/ methods
PRESETS = sorted(p.stem for p in (ROOT / "conf" / "invert" / "inversion").glob("*.yaml"))
METHODS = sorted(p.stem for p in (ROOT / "conf" / "method").glob("*.yaml"))
MARKER = "marker"  # what the crafted checkpoints would create if they ran


class _Evil:
    def __reduce__(self):
        return os.system, (f"touch {MARKER}",)


def _png_header_only(path, width, height):
    """A PNG whose header claims width x height pixels (8-bit grey) and holds no pixel data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
                     + chunk(b"IEND", b""))


def _idinvert_checkpoint(path, g):
    """A tiny IDInvert export (encoder with 8 styles) decoding with ``g``."""
    torch.manual_seed(2)
    enc = IDInvertEncoder(32, w_space_dim=64, encoder_channels_base=8, encoder_channels_max=16)
    state = {f"encoder.{k}": v for k, v in enc.state_dict().items()}
    state.update({f"decoder.{k}": v for k, v in g.state_dict().items()})
    save_atomic({"state_dict": state, "opts": {"encoder_type": "IDInvertEncoder", "input_nc": 3,
                                               "start_from_latent_avg": False}}, path)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    torch.manual_seed(0)
    g = Generator(32, 64, n_mlp=2, channel_max=32).eval()
    save_atomic({"g_ema": g.state_dict()}, root / "g.pt")
    with torch.no_grad():
        faces = g(torch.randn(2, 64), noise_mode="const").clamp(-1, 1)
    save_image(faces[0], root / "photos" / "face.png")
    save_image(faces[0], root / "mixed" / "face.png")
    save_image(faces[1], root / "mixed" / "sub" / "other.png")
    bad = {"corrupt.jpg": b"\xff\xd8\xff\xe0 truncated", "empty.png": b"", "text.png": b"not an image\n"}
    for folder in ("mixed", "onlybad"):
        for name, data in bad.items():
            (root / folder).mkdir(exist_ok=True)
            (root / folder / name).write_bytes(data)
    _png_header_only(root / "mixed" / "bomb.png", 30000, 30000)
    (root / "emptydir").mkdir()
    rng = np.random.default_rng(0)
    (root / "modes").mkdir()
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8), "L").save(root / "modes" / "grey.png")
    Image.fromarray(rng.integers(0, 256, (40, 40, 4), dtype=np.uint8), "RGBA").save(root / "modes" / "rgba.png")
    Image.fromarray(rng.integers(0, 65536, (40, 40), dtype=np.uint16)).save(root / "modes" / "deep16.png")
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).convert("CMYK").save(root / "modes" / "cmyk.jpg")
    assert Image.open(root / "modes" / "deep16.png").mode == "I;16"
    (root / "notes.txt").write_text("not an image\n")
    (root / "notes.pt").write_text("not a checkpoint\n")
    (root / "trunc.pt").write_bytes((root / "g.pt").read_bytes()[:5000])
    _idinvert_checkpoint(root / "mismatch.pt", Generator(64, 64, n_mlp=2, channel_max=32))  # 10 styles
    torch.save({"state_dict": {}, "opts": _Evil()}, root / "evil.pt")
    (root / "evil.ckpt").write_bytes(pickle.dumps({"state_dict": _Evil()}))
    torch.save({"state_dict": {}, "callbacks": _Evil()}, root / "evil_torch.ckpt")
    (root / "torch_home").mkdir()  # an empty hub cache: no pretrained weights, wherever the tests run
    yield root
    shutil.rmtree(root, ignore_errors=True)


INVERT = ["generator=checkpoint", "generator.path=g.pt", "inversion.steps=2", "inversion.n_mean_latent=100"]
TRAIN = ["+method=psp", "generator=random", "logger=csv", "data.size=32", "data.batch_size=4", "trainer.max_steps=2",
         "export=false", "+trainer.enable_progress_bar=false", "trainer.limit_val_batches=1",
         "trainer.val_check_interval=1000"]
PROCEDURAL = ["data.train_length=8", "data.val_length=8"]
# ++ adds the guard, or overrides the one conf/callbacks/default.yaml may list under this name
GUARD = "++callbacks.nonfinite_loss._target_=ganinv.methods.guards.NonFiniteLossGuard"


def inverted(*keys):
    """The files invert.py writes for images ``keys`` (projector: latents, noise maps, reconstructions)."""
    files = {"metrics.csv", "grid.png", "index.html"}
    for k in keys:
        files |= {f"reconstructions/{k}.png", f"latents/{k}.pt", f"latents/{k}.npy", f"noises/{k}.pt"}
    return files


class Case(NamedTuple):
    id: str
    script: str
    args: list
    rc: int
    needles: list  # in the message line (rc 2: stderr, rc 0: summary; both start with the first)
    outputs: set = set()


CASES = [
    # -- invert.py: images ------------------------------------------------------------------------
    Case("invert-unreadable-files-skipped", "invert.py", ["input=mixed", *INVERT], 0,
         ["invert.py: 2 inverted, 0 already done, 4 unreadable (", "mixed/bomb.png: refused as a possible "
          "decompression bomb", "mixed/corrupt.jpg: corrupt or truncated image", "mixed/empty.png: empty file, "
          "not an image", "mixed/text.png: not a recognised image format"], inverted("face", "sub/other")),
    Case("invert-folder-of-only-bad-files", "invert.py", ["input=onlybad", *INVERT], 2,
         ["invert.py: input=onlybad: no image could be inverted: onlybad/corrupt.jpg: ", "onlybad/empty.png: ",
          "onlybad/text.png: "]),
    Case("invert-missing-input", "invert.py", ["input=nowhere", *INVERT], 2,
         ["invert.py: input=nowhere: no such file or folder"]),
    Case("invert-empty-folder", "invert.py", ["input=emptydir", *INVERT], 2,
         ["invert.py: no images (.jpg, .jpeg, .png, .webp, .bmp) found under emptydir"]),
    Case("invert-input-not-an-image", "invert.py", ["input=notes.txt", *INVERT], 2,
         ["invert.py: input=notes.txt: not an image file"]),
    Case("invert-grey-rgba-16bit-cmyk-converted", "invert.py", ["input=modes", *INVERT], 0,
         ["invert.py: 4 inverted, 0 already done, 0 unreadable;"], inverted("cmyk", "deep16", "grey", "rgba")),
    Case("invert-diverged-nothing-written", "invert.py", ["input=photos", *INVERT, "inversion.mse_lambda=nan"], 2,
         ["invert.py: input=photos: no image could be inverted: face: the inversion diverged (non-finite latent "
          "or image), nothing written"]),
    Case("invert-resize-not-dividing-generator", "invert.py", ["input=photos", "resize=12", *INVERT], 2,
         ["invert.py: resize=12: must divide the generator resolution 32"]),
    # -- invert.py: checkpoints ---------------------------------------------------------------------
    Case("invert-encoder-generator-mismatch", "invert.py", ["input=photos", "method=mismatch.pt"], 2,
         ["invert.py: mismatch.pt: the encoder's weights give 8 styles, but the decoder is a 64 px generator "
          "with 10"]),
    Case("invert-truncated-generator", "invert.py", ["input=photos", "generator=checkpoint",
                                                     "generator.path=trunc.pt"], 2,
         ["invert.py: generator: StyleGAN2 checkpoint trunc.pt is truncated or corrupt"]),
    Case("invert-text-file-as-generator", "invert.py", ["input=photos", "generator=checkpoint",
                                                        "generator.path=notes.pt"], 2,
         ["invert.py: generator: notes.pt is neither a torch checkpoint nor an NVIDIA network pickle"]),
    Case("invert-missing-generator", "invert.py", ["input=photos", "generator=checkpoint",
                                                   "generator.path=missing.pt"], 2,
         ["invert.py: generator: StyleGAN2 checkpoint not found: missing.pt"]),
    Case("invert-generator-path-not-set", "invert.py", ["input=photos", "generator=checkpoint"], 2,
         ["invert.py: Missing mandatory value: generator.path"]),
    Case("invert-rosinality-generator-as-method", "invert.py", ["input=photos", "method=g.pt"], 2,
         ["invert.py: g.pt: not a pSp/e4e/ReStyle checkpoint (needs 'state_dict' and 'opts'; has ['g_ema'])"]),
    Case("invert-truncated-encoder", "invert.py", ["input=photos", "method=trunc.pt"], 2,
         ["invert.py: encoder checkpoint trunc.pt is truncated or corrupt"]),
    Case("invert-code-in-encoder-file", "invert.py", ["input=photos", "method=evil.pt"], 2,
         ["invert.py: encoder checkpoint evil.pt: refused to load global "
          f"'{os.system.__module__}.system' (it was not imported or executed)"]),
    # -- invert.py: configuration -------------------------------------------------------------------
    Case("invert-unknown-preset", "invert.py", ["input=photos", "inversion=nonexistent", *INVERT], 2,
         ["invert.py: In 'invert': Could not find 'inversion/nonexistent'; Available options in 'inversion': "
          + ", ".join(PRESETS)]),
    Case("invert-unknown-key", "invert.py", ["input=photos", "steps=3", *INVERT], 2,
         ["invert.py: steps: Could not override 'steps'; To append to your config use +steps=3; "
          "Key 'steps' is not in struct"]),
    Case("invert-missing-pretrained-lpips", "invert.py", ["input=photos", *INVERT, "loss=default"], 2,
         ["invert.py: inversion.lpips: torchvision VGG16_Weights.IMAGENET1K_V1 weights not found: ",
          "torch_home/hub/checkpoints/vgg16-397923af.pth. Put the file there"]),
    # -- train.py -----------------------------------------------------------------------------------
    Case("train-no-method", "train.py", TRAIN[1:], 2,
         ["train.py: no method given; choose one with +method=" + "|".join(METHODS)]),
    Case("train-unknown-method", "train.py", ["+method=pixel2pixel", *TRAIN[1:]], 2,
         ["train.py: In 'train': Could not find 'method/pixel2pixel'; Available options in 'method': "
          + ", ".join(METHODS)]),
    Case("train-unknown-key", "train.py", [*TRAIN, *PROCEDURAL, "trainer.max_step=3"], 2,
         ["train.py: trainer.max_step: Could not override 'trainer.max_step'; To append to your config use "
          "+trainer.max_step=3; Key 'max_step' is not in struct"]),
    Case("train-missing-generator", "train.py", [*TRAIN, *PROCEDURAL, "generator=checkpoint",
                                                 "generator.path=missing.pt"], 2,
         ["train.py: method.module.generator: StyleGAN2 checkpoint not found: missing.pt"]),
    Case("train-generator-path-not-set", "train.py", [*TRAIN, *PROCEDURAL, "generator=checkpoint"], 2,
         ["train.py: Missing mandatory value: method.module.generator.path"]),
    Case("train-truncated-generator", "train.py", [*TRAIN, *PROCEDURAL, "generator=checkpoint",
                                                   "generator.path=trunc.pt"], 2,
         ["train.py: method.module.generator: StyleGAN2 checkpoint trunc.pt is truncated or corrupt"]),
    Case("train-data-root-missing", "train.py", [*TRAIN, "data=folder", "data.root=nowhere", "data.num_workers=0"],
         2, ["train.py: image directory not found: nowhere"]),
    Case("train-empty-image-folder", "train.py", [*TRAIN, "data=folder", "data.root=emptydir",
                                                  "data.num_workers=0"], 2,
         ["train.py: no images (.jpg, .jpeg, .png, .webp, .bmp) found under emptydir"]),
    Case("train-fewer-images-than-a-batch", "train.py", [*TRAIN, "data=folder", "data.train_dir=photos",
                                                         "data.num_workers=0"], 2,
         ["train.py: data: the training split has 1 images for 1 process(es), fewer than one batch of "
          "data.batch_size=4 each; add images or lower data.batch_size"]),
    Case("train-missing-pretrained-lpips", "train.py", [*TRAIN, *PROCEDURAL, "loss=default"], 2,
         ["train.py: method.module.lpips: torchvision AlexNet_Weights.IMAGENET1K_V1 weights not found: ",
          "torch_home/hub/checkpoints/alexnet-owt-7be5be79.pth. Put the file there"]),
    Case("train-unknown-callback-target", "train.py", [*TRAIN, *PROCEDURAL, "+callbacks.guard._target_=ganinv.nope.X"],
         2, ["train.py: callbacks.guard: Error locating target 'ganinv.nope.X'"]),
    Case("train-resume-missing", "train.py", [*TRAIN, *PROCEDURAL, "resume=missing.ckpt"], 2,
         ["train.py: resume: checkpoint not found: missing.ckpt"]),
    Case("train-resume-truncated", "train.py", [*TRAIN, *PROCEDURAL, "resume=trunc.pt"], 2,
         ["train.py: resume checkpoint trunc.pt is truncated or corrupt"]),
    Case("train-resume-plain-pickle", "train.py", [*TRAIN, *PROCEDURAL, "resume=evil.ckpt"], 2,
         ["train.py: resume checkpoint evil.ckpt is not a torch checkpoint"]),
    Case("train-resume-code-in-checkpoint", "train.py", [*TRAIN, *PROCEDURAL, "resume=evil_torch.ckpt"], 2,
         ["train.py: resume checkpoint evil_torch.ckpt: refused to load global "
          f"'{os.system.__module__}.system'"]),
    Case("train-infinite-loss-stops", "train.py", [*TRAIN, *PROCEDURAL, "method.module.l2_lambda=inf", GUARD], 2,
         ["train.py: non-finite loss train/loss=inf at step 0"], {"images/train_input_recon_target_0000000.png"}),
    Case("train-infinite-loss-skipped-until-limit", "train.py",
         [*TRAIN, *PROCEDURAL, "method.module.l2_lambda=inf", GUARD, "++callbacks.nonfinite_loss.action=skip",
          "++callbacks.nonfinite_loss.max_consecutive_skips=2"], 2,
         ["train.py: non-finite loss train/loss=inf at step 1; 2 updates in a row were skipped, stopping"],
         {"images/train_input_recon_target_0000000.png"}),
]


def _results(out):
    """Files under ``out`` other than Hydra's run record, the CSV logger's folder and the per-batch loss
    curves (``curves/<first key of the batch>.png``: tests/test_invert_wiring.py checks those)."""
    if not out.exists():
        return set()
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    return {f for f in files if not f.startswith((".hydra/", "csv/", "curves/")) and not f.endswith(".log")}


# Each case costs a Python start with torch and Lightning (~5 s on 2 cores); these repeat what other cases
# or in-process tests (test_reliability.py) already show, and run with the slow tests.
SLOW = {"invert-text-file-as-generator", "invert-truncated-encoder", "train-resume-plain-pickle",
        "train-unknown-callback-target", "train-infinite-loss-skipped-until-limit"}


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] * (c.id in SLOW)) for c in CASES])
def test_bad_input(workdir, case):
    out = workdir / "out" / case.id
    where = [f"output={out}"] if case.script == "invert.py" else [f"hydra.run.dir={out}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_HOME": str(workdir / "torch_home")}
    r = subprocess.run([sys.executable, str(ROOT / case.script), *case.args, *where], capture_output=True, text=True,
                       cwd=workdir, env=env, timeout=300)
    assert r.returncode == case.rc, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    if case.rc == 2:
        prog = f"{case.script}: "
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith(prog)]
        assert len(lines) == 1 and r.stderr.strip().splitlines()[-1] == lines[0], r.stderr[-3000:]
        line = lines[0]
    else:
        line = r.stdout.strip().splitlines()[-1]
    assert line.startswith(case.needles[0]), line
    for needle in case.needles:
        assert needle in line, line
    assert _results(out) == set(case.outputs)
    assert not list(out.rglob("*.tmp"))
    assert not (workdir / MARKER).exists()


def test_only_expected_errors_become_one_line(monkeypatch, capsys):
    """Real bugs keep their traceback: only USER_ERRORS (also wrapped by Hydra's instantiate) become
    ``prog: message`` with exit 2; HYDRA_FULL_ERROR=1 re-raises those too."""
    from hydra.errors import InstantiationException

    from ganinv.runner import one_line_errors, user_error

    def wrapped(cause, key="method.module.generator"):
        try:
            raise InstantiationException(f"Error in call to target 'x.y':\n{cause!r}\nfull_key: {key}") from cause
        except InstantiationException as e:
            return e

    assert user_error(wrapped(ValueError("g.pt is empty"))) == "method.module.generator: g.pt is empty"
    assert user_error(wrapped(wrapped(FileNotFoundError("no g.pt")), "method.module")) == \
        "method.module.generator: no g.pt"
    assert user_error(wrapped(KeyError("conv1"))) is None
    assert user_error(RuntimeError("shape mismatch")) is None
    with pytest.raises(RuntimeError, match="shape mismatch"), one_line_errors("train.py"):
        raise RuntimeError("shape mismatch")
    with pytest.raises(SystemExit) as exit_, one_line_errors("train.py"):
        raise wrapped(ValueError("g.pt is empty"))
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "train.py: method.module.generator: g.pt is empty\n"
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ValueError, match="g.pt is empty"), one_line_errors("train.py"):
        raise ValueError("g.pt is empty")
