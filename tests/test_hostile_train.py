"""Hostile configs and real-world faults against train.py (and invert.py's config handling), issue 14
items 4 and 5: each CLI case is a subprocess as a user runs it, ending with exit status 2 and exactly
one ``<script>: ...`` line on stderr (its last line) that names the key or file; a multirun reports
its failed jobs and still runs the others.

Faults are injected in the subprocess by :data:`FAULT`, a ``python -c`` wrapper that replaces one
``os`` function (``os.replace``: the rename that publishes every atomic write; ``os.mkdir``: creating
the output folder) with one raising ``OSError(errno)`` on its n-th call for a path containing a
given text, then runs the script with ``runpy`` as ``__main__``. Tests run as root, which chmod does
not stop, so a read-only disk is this injected EROFS, and a full disk an injected ENOSPC.
"""
import csv
import errno
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from conftest import compose_config
from test_bad_inputs import INVERT, PROCEDURAL, TRAIN, workdir  # noqa: F401  (workdir: the tiny g.pt, photos/)

from ganinv.checkpoints import save_atomic
from ganinv.cli import check_config, user_error
from ganinv.config import available_methods
from ganinv.runner import AtomicCSVLogger, find_last_checkpoint, load_training_checkpoint

ROOT = Path(__file__).resolve().parent.parent
FAULT = """
import errno, os, runpy, sys
call, match, nth, code = os.environ["FAULT"].split(":")
real, seen = getattr(os, call), [0]
def faulty(*args, **kwargs):
    path = str(args[-1] if call == "replace" else args[0])
    if match in path:
        seen[0] += 1
        if seen[0] == int(nth):
            raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), path)
    return real(*args, **kwargs)
setattr(os, call, faulty)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
TINY = [*TRAIN, *PROCEDURAL]


def _run(workdir, script, args, fault=None, env=None):  # noqa: F811
    """Run ``script`` with ``args`` in ``workdir`` on 1 thread, without a GPU, through :data:`FAULT`
    when ``fault`` ("call:match:nth:ERRNO") is given."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "TORCH_HOME": str(workdir / "torch_home"), **({"FAULT": fault} if fault else {}), **(env or {})}
    cmd = [sys.executable, *(["-c", FAULT] if fault else []), str(ROOT / script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, env=env, timeout=300)


def _one_line(r, script):
    """The single ``<script>: ...`` line on stderr, which must also be its last line."""
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith(f"{script}: ")]
    assert len(lines) == 1 and r.stderr.strip().splitlines()[-1] == lines[0], r.stderr[-3000:]
    return lines[0]


class Case(NamedTuple):
    id: str
    script: str
    args: list
    line: str            # the whole stderr line (after ``<script>: ``), with {out} for the output folder
    fault: str = None    # FAULT's "call:match:nth:ERRNO"
    files: set = set()   # what the output folder may hold besides Hydra's record and csv/


CASES = [
    # -- Hydra cannot compose: one line instead of Hydra's report (exit 1) ---------------------------
    Case("train-unknown-group-option", "train.py", [*TINY, "trainer=nonexistent"],
         "In 'train': Could not find 'trainer/nonexistent'; Available options in 'trainer': cpu, ddp, gpu"),
    Case("train-unparsable-override", "train.py", [*TINY, "trainer.max_steps=["],
         "trainer.max_steps=[: no viable alternative at input '['"),
    Case("train-unknown-hydra-key", "train.py", [*TINY, "hydra.bogus=1"],
         "hydra.bogus: Could not override 'hydra.bogus'; To append to your config use +hydra.bogus=1; "
         "Key 'bogus' not in 'HydraConf'"),
    Case("invert-unparsable-override", "invert.py", ["input=photos", *INVERT, "inversion.steps=["],
         "inversion.steps=[: no viable alternative at input '['"),
    # -- composes, but the target cannot take it: checked before anything is built -------------------
    Case("train-unknown-key-of-the-method", "train.py", [*TINY, "+method.module.bogus=1"],
         "method.module.bogus: unknown key: ganinv.methods.psp.PSP takes no argument 'bogus'"),
    Case("train-unknown-key-of-a-callback", "train.py", [*TINY, "+callbacks.model_checkpoint.every=2"],
         "callbacks.model_checkpoint.every: unknown key: pytorch_lightning.callbacks.ModelCheckpoint takes no "
         "argument 'every'"),
    Case("train-seed-not-a-number", "train.py", [*TINY, "seed=abc"], "seed: expected an integer, got 'abc'"),
    Case("train-max-steps-not-a-number", "train.py", [*TINY, "trainer.max_steps=abc"],
         "trainer.max_steps: expected an integer, got 'abc'"),
    Case("train-lr-not-a-number", "train.py", [*TINY, "method.module.lr=fast"],
         "method.module.lr: expected a number or null, got 'fast'"),
    Case("invert-unknown-key-of-the-preset", "invert.py", ["input=photos", *INVERT, "+inversion.bogus=1"],
         "inversion.bogus: unknown key: ganinv.methods.optimization.OptimizationInversion takes no argument 'bogus'"),
    Case("invert-seed-not-a-number", "invert.py", ["input=photos", *INVERT, "seed=abc"],
         "seed: expected a number or null, got 'abc' (as inversion.seed)"),
    Case("invert-max-steps-not-a-number", "invert.py", ["input=photos", *INVERT, "trainer.max_steps=abc"],
         "trainer.max_steps: expected an integer, got 'abc'"),
    # -- resume= something that is not a Lightning checkpoint (was a KeyError traceback) -----------------
    Case("train-resume-generator-checkpoint", "train.py", [*TINY, "resume=g.pt"],
         "resume: g.pt is a StyleGAN2 generator checkpoint (use it with generator=checkpoint generator.path=...), "
         "not a Lightning training checkpoint (checkpoints/*.ckpt of a train.py run)"),
    Case("train-resume-export", "train.py", [*TINY, "resume=mismatch.pt"],
         "resume: mismatch.pt is an exported pSp/e4e model (export/<method>.pt: invert.py method=... reads it), "
         "not a Lightning training checkpoint (checkpoints/*.ckpt of a train.py run)"),
    # -- a GPU asked for on a machine without one (CUDA_VISIBLE_DEVICES="") ------------------------------
    Case("train-accelerator-gpu-without-gpu", "train.py", [*TINY, "trainer.accelerator=gpu"],
         "trainer.accelerator=gpu: no CUDA GPU is available on this machine (torch.cuda.is_available() is "
         "false); train on the CPU with trainer=cpu"),
    Case("train-trainer-gpu-without-gpu", "train.py", [*TINY, "trainer=gpu"],
         "trainer.accelerator=gpu: no CUDA GPU is available on this machine (torch.cuda.is_available() is "
         "false); train on the CPU with trainer=cpu"),
    # -- the disk refuses a write -----------------------------------------------------------------------
    Case("train-read-only-output-folder", "train.py", TINY, "cannot write {out}: Read-only file system",
         fault="mkdir:{out}:1:EROFS"),
    Case("train-disk-full-writing-the-export", "train.py",
         [*TINY[:TINY.index("export=false")], *TINY[TINY.index("export=false") + 1:], "trainer.max_steps=1"],
         "cannot write {out}/export/psp.pt: No space left on device", fault="replace:psp.pt:1:ENOSPC",
         files={"images/train_input_recon_target_0000000.png", "checkpoints/last.ckpt"}),
]
# Each case costs a Python start with torch and Lightning (~10 s on the shared 2 cores); these take the
# same path as another case (or an in-process test below) and run with the slow tests.
SLOW = {"train-unknown-key-of-a-callback", "train-seed-not-a-number", "train-lr-not-a-number",
        "invert-max-steps-not-a-number", "train-resume-generator-checkpoint", "train-trainer-gpu-without-gpu"}


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] * (c.id in SLOW)) for c in CASES])
def test_hostile_cli_input_is_one_line_exit_2(workdir, case):  # noqa: F811
    out = workdir / "hostile" / case.id
    where = [f"output={out}"] if case.script == "invert.py" else [f"hydra.run.dir={out}"]
    fault = case.fault.replace("{out}", str(out)) if case.fault else None
    r = _run(workdir, case.script, [*case.args, *where], fault)
    assert r.returncode == 2, r.stderr[-3000:]
    assert _one_line(r, case.script) == f"{case.script}: " + case.line.replace("{out}", str(out))
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} if out.exists() else set()
    assert {f for f in written if not f.startswith((".hydra/", "csv/")) and not f.endswith(".log")} == case.files
    assert not [f for f in written if f.endswith(".tmp")]  # nothing partial


def test_disk_full_writing_last_ckpt_then_resume_auto_finds_the_intact_step_file(workdir):  # noqa: F811
    """ENOSPC on publishing the first ``last.ckpt`` (after ``step_0000002.ckpt`` was written): one line
    naming last.ckpt, exit 2, no temporary file left. Before the fix ``resume=auto`` looked only for
    last.ckpt and restarted at step 0; it now takes the newest readable ``*.ckpt`` by step and says
    which, and the run ends at step 4."""
    out = workdir / "hostile" / "disk-full-last-ckpt"
    run = [*TINY, "trainer.max_steps=4", "callbacks.model_checkpoint.every_n_train_steps=2",
           "callbacks.model_checkpoint.save_top_k=1", f"hydra.run.dir={out}"]
    r = _run(workdir, "train.py", run, fault="replace:last.ckpt:1:ENOSPC")
    assert r.returncode == 2, r.stderr[-3000:]
    ckpts = out / "checkpoints"
    assert _one_line(r, "train.py") == f"train.py: cannot write {ckpts / 'last.ckpt'}: No space left on device"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_0000002.ckpt"]  # no last.ckpt, no *.tmp

    r = _run(workdir, "train.py", [*run, "resume=auto"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resume=auto: resuming from {ckpts / 'step_0000002.ckpt'} (step 2)" in r.stdout.splitlines()
    assert f"Restoring states from the checkpoint path at {ckpts / 'step_0000002.ckpt'}" in r.stdout + r.stderr
    assert torch.load(ckpts / "last.ckpt", weights_only=True, mmap=True)["global_step"] == 4
    # step_0000002.ckpt stays: it was written before ModelCheckpoint counted it in its top-k state
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step_0000002.ckpt", "step_0000004.ckpt"]


def _summary(r, script):
    """The multirun's last stderr line, which must start with ``<script>: ``."""
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{script}: "), r.stderr[-3000:]
    return last


def test_train_multirun_a_bad_job_is_reported_and_the_others_run(workdir):  # noqa: F811
    sweep = workdir / "hostile" / "train-multirun"
    r = _run(workdir, "train.py", ["-m", *TINY, "trainer.max_steps=1", "data.batch_size=-1,2",
                                   f"hydra.sweep.dir={sweep}"])
    assert r.returncode == 2, r.stderr[-3000:]
    message = "batch_size should be a positive integer value, but got batch_size=-1"
    assert _summary(r, "train.py") == f"train.py: 1 of 2 multirun jobs failed: #0 (data.batch_size=-1): {message}"
    assert f"train.py: {message}" in r.stderr.splitlines()  # reported when job 0 failed
    assert not (sweep / "0" / "checkpoints").exists()
    assert torch.load(sweep / "1" / "checkpoints" / "last.ckpt", weights_only=True, mmap=True)["global_step"] == 1


def test_invert_multirun_a_bad_job_is_reported_and_the_others_run(workdir):  # noqa: F811
    sweep = workdir / "hostile" / "invert-multirun"
    r = _run(workdir, "invert.py", ["-m", "input=photos", *INVERT, "resize=12,32", f"output={sweep}/out",
                                    f"hydra.sweep.dir={sweep}"])
    assert r.returncode == 2, r.stderr[-3000:]
    assert _summary(r, "invert.py") == ("invert.py: 1 of 2 multirun jobs failed: #0 (resize=12): resize=12: must "
                                        "divide the generator resolution 32")
    assert (sweep / "out" / "reconstructions" / "face.png").is_file()  # job 1 inverted the image
    assert [row["image"] for row in csv.DictReader(open(sweep / "out" / "metrics.csv"))] == ["face"]


def test_multirun_with_a_job_that_cannot_compose_is_one_line(workdir):  # noqa: F811
    """Hydra composes every job before launching any: an unknown option in one is one line, no job runs."""
    sweep = workdir / "hostile" / "multirun-compose"
    r = _run(workdir, "train.py", ["-m", *TINY, "trainer=cpu,nonexistent", f"hydra.sweep.dir={sweep}"])
    assert r.returncode == 2, r.stderr[-3000:]
    assert _one_line(r, "train.py") == ("train.py: In 'train': Could not find 'trainer/nonexistent'; Available "
                                        "options in 'trainer': cpu, ddp, gpu")
    assert not (sweep / "0").exists()


# -- in process ------------------------------------------------------------------------------------

def _lightning_ckpt(path, step):
    save_atomic({"state_dict": {"w": torch.full((2,), float(step))}, "global_step": step,
                 "pytorch-lightning_version": "2.6.6"}, path)


def test_resume_auto_takes_the_newest_readable_checkpoint_by_step(tmp_path, capsys):
    """last.ckpt wins a tie with its step file; a newer truncated step file and a newer non-Lightning
    file are skipped and listed; hidden temporary files are never considered."""
    _lightning_ckpt(tmp_path / "step_0000002.ckpt", 2)
    _lightning_ckpt(tmp_path / "last.ckpt", 2)
    _lightning_ckpt(tmp_path / "full.ckpt", 4)
    (tmp_path / "step_0000006.ckpt").write_bytes((tmp_path / "full.ckpt").read_bytes()[:300])
    (tmp_path / "full.ckpt").unlink()
    save_atomic({"g_ema": {}}, tmp_path / "step_0000008.ckpt")
    (tmp_path / ".step_0000010.ckpt.1.abcd1234.tmp").write_bytes(b"partial")
    path, checkpoint = find_last_checkpoint(tmp_path)
    assert path == tmp_path / "last.ckpt" and checkpoint["global_step"] == 2
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"resume=auto: resuming from {tmp_path / 'last.ckpt'} (step 2); skipped unreadable "
                           f"step_0000008.ckpt (resume: {tmp_path / 'step_0000008.ckpt'} is a StyleGAN2 generator "
                           "checkpoint"), line
    assert f"step_0000006.ckpt (resume checkpoint {tmp_path / 'step_0000006.ckpt'} is truncated or corrupt" in line

    (tmp_path / "last.ckpt").unlink()
    (tmp_path / "step_0000002.ckpt").unlink()
    with pytest.raises(ValueError, match=r"^resume=auto: no readable checkpoint in .*step_0000006\.ckpt"):
        find_last_checkpoint(tmp_path)
    assert find_last_checkpoint(tmp_path / "empty") == (None, None)
    with pytest.raises(IsADirectoryError) as err:  # resume=DIR
        load_training_checkpoint(tmp_path)
    assert user_error(err.value) == (f"resume: {tmp_path} is a directory; give a Lightning .ckpt file (e.g. "
                                     "RUN/checkpoints/last.ckpt) or resume=auto with hydra.run.dir=RUN")


def test_metrics_csv_write_refused_leaves_the_previous_file(tmp_path, monkeypatch):
    """ENOSPC injected into ``os.replace`` while metrics.csv is saved: the OSError names metrics.csv
    (one line through user_error), the file keeps its previous rows, no temporary file remains."""
    logger = AtomicCSVLogger(tmp_path, name="csv", version="")
    logger.log_metrics({"train/loss": 0.5}, step=0)
    logger.save()
    metrics = tmp_path / "csv" / "metrics.csv"
    before = metrics.read_text()
    assert list(csv.DictReader(open(metrics))) == [{"step": "0", "train/loss": "0.5"}]

    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), src)

    monkeypatch.setattr(os, "replace", full)
    logger.log_metrics({"train/loss": 0.25, "val/mse": 0.1}, step=1)
    with pytest.raises(OSError) as err:
        logger.save()
    assert user_error(err.value) == f"cannot write {metrics}: No space left on device"
    assert metrics.read_text() == before
    assert sorted(p.name for p in metrics.parent.iterdir()) == ["metrics.csv"]
    monkeypatch.undo()
    logger.save()  # the rows kept in memory are written once the disk takes them, new column included
    assert list(csv.DictReader(open(metrics))) == [{"step": "0", "train/loss": "0.5", "val/mse": ""},
                                                    {"step": "1", "train/loss": "0.25", "val/mse": "0.1"}]


@pytest.mark.parametrize("config, overrides", [
    *[("train", [f"+method={m}", f"generator={g}", *extra]) for m in available_methods()
      for g in ("embedded", "random", "checkpoint")
      for extra in ([], ["trainer=ddp", "logger=default", "data=folder", "loss=default"], ["trainer=gpu"])],
    ("train", ["+method=stylegan2", "+experiment=procedural64_gan"]),
    *[("invert", ["input=x", "output=y", f"inversion={p.stem}", "refine=pti", "loss=default"])
      for p in sorted((ROOT / "conf" / "invert" / "inversion").glob("*.yaml"))],
])
def test_every_shipped_config_passes_the_key_and_type_check(tmp_path, config, overrides):
    """No false alarms: every method, generator, trainer, logger, data, loss and inversion preset
    the project ships passes cli.check_config (which train.py / invert.py run before building)."""
    cfg = compose_config(config, overrides, tmp_path)
    check_config(cfg, {"seed": int})
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer"


def test_the_check_catches_keys_and_types_at_every_depth(tmp_path):
    cfg = compose_config("train", ["+method=e4e", "+method.module.encoder.bogus=1"], tmp_path)
    with pytest.raises(ValueError, match=r"^method\.module\.encoder\.bogus: unknown key: "
                                         r"ganinv\.nets\.e4e_encoder\.Encoder4Editing takes no argument 'bogus'$"):
        check_config(cfg)
    cfg = compose_config("train", ["+method=psp", "data.batch_size=2.5"], tmp_path)
    with pytest.raises(ValueError, match=r"^data\.batch_size: expected an integer, got 2\.5$"):
        check_config(cfg)
    cfg = compose_config("train", ["+method=psp", "export=maybe"], tmp_path)
    with pytest.raises(ValueError, match=r"^export: expected true/false, got 'maybe'$"):
        check_config(cfg, {"export": bool})
    # the table above covers every method conf/method/ ships (available_methods() lists that folder)
    assert set(available_methods()) == {p.stem for p in (ROOT / "conf" / "method").glob("*.yaml")}
    assert {"psp", "e4e", "idinvert", "stylegan2"} <= set(available_methods())
