"""Reliability: no loader runs code from a file, a SIGKILLed training run resumes exactly, W&B keeps
its run id across a resume, and non-finite losses stop the run (or skip the update)."""
import csv
import os
import pickle
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from ganinv.checkpoints import UnsafeCheckpointError, load_discriminator, load_inverter, load_torch
from ganinv.editing import load_direction, load_ganspace_pca
from ganinv.losses.id_loss import IDLoss
from ganinv.losses.moco import MocoLoss
from ganinv.losses.vgg import VGG16Features
from ganinv.methods.base import step_uncounted
from ganinv.methods.guards import NonFiniteLossError, NonFiniteLossGuard
from ganinv.metrics import load_regressor
from ganinv.runner import WANDB_RUN_ID, SafeCheckpointIO, wandb_run_id

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ganinv"


# -- one loading module ---------------------------------------------------------------------------

def _sources():
    return {p.relative_to(ROOT).as_posix(): p.read_text() for p in [*PACKAGE.rglob("*.py"), ROOT / "train.py",
                                                                    ROOT / "invert.py"]}


def test_no_weights_only_false_anywhere():
    found = sorted(name for name, text in _sources().items() if "weights_only=False" in text)
    assert found == []
    grep = subprocess.run(["grep", "-rn", "weights_only=False", "ganinv"], cwd=ROOT, capture_output=True, text=True)
    assert grep.returncode == 1 and grep.stdout == ""


def test_every_unpickling_goes_through_the_safe_loaders():
    """No torch.load anywhere in the package (ganinv reads torch.save files itself); the only
    unpickler is the restricted one in checkpoints/allowlist.py (find_class overridden), which every
    loader uses: torch files, NVIDIA network pickles and IDInvert boundary files. The AST-level
    version of this check is tests/test_hostile_files.py::test_no_unpickling_outside_the_allow_list_module."""
    sources = _sources()
    assert sorted(n for n, t in sources.items() if "pickle.load(" in t or "Unpickler):" in t) == [
        "ganinv/checkpoints/allowlist.py"]
    allowlist = sources["ganinv/checkpoints/allowlist.py"]
    assert "(pickle._Unpickler):" in allowlist and "def find_class(self, module, name):" in allowlist
    loaders = ("checkpoints/torchfile.py", "checkpoints/nvidia_pickle.py", "editing/interfacegan.py")
    for name in loaders:
        assert "unpickle" in sources[f"ganinv/{name}"], name
    assert not any("allow_pickle=True" in t for t in sources.values())


# -- crafted files that would run code -----------------------------------------------------------

class _Evil:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


SYSTEM = f"{os.system.__module__}.system"  # 'posix.system'

# Every public loader not already covered by test_checkpoints.py (load_generator .pt/.pkl, load_torch
# .pt) or test_editing.py (a refused .npy global): (id, call, the object the file would hold).
LOADERS = [
    ("load_discriminator", load_discriminator, lambda evil: {"d": {"convs.0.0.weight": evil}, "D": evil}),
    ("load_inverter", load_inverter, lambda evil: {"state_dict": {}, "opts": evil}),
    ("load_torch", load_torch, lambda evil: {"g_ema": evil}),
    ("IDLoss", lambda path: IDLoss(weights_path=path), lambda evil: {"input_layer.0.weight": evil}),
    ("MocoLoss", MocoLoss, lambda evil: {"state_dict": evil}),
    ("VGG16Features", lambda path: VGG16Features(["conv1_2"], weights_path=path), lambda evil: {"layer0": evil}),
    ("load_direction", load_direction, lambda evil: evil),
    ("load_ganspace_pca", load_ganspace_pca, lambda evil: {"mean": evil, "comp": evil, "std": evil}),
    ("load_regressor", load_regressor, lambda evil: {"state_dict": evil}),
    ("resume checkpoint", lambda path: SafeCheckpointIO().load_checkpoint(path),
     lambda evil: {"state_dict": {}, "callbacks": evil}),
]


@pytest.mark.parametrize("suffix", [".pt", ".pkl"])
@pytest.mark.parametrize("name, load, content", LOADERS, ids=[entry[0] for entry in LOADERS])
def test_code_in_a_file_never_runs(tmp_path, name, load, content, suffix):
    """A torch.save file is refused at the os.system global, naming it; a plain pickle is not a torch
    file (refused unread) except for load_discriminator, whose NVIDIA unpickler refuses the global."""
    marker = tmp_path / "marker"
    path = tmp_path / f"evil{suffix}"
    evil = content(_Evil(f"touch {marker}"))
    if suffix == ".pt":
        torch.save(evil, path)
    else:
        path.write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(ValueError) as err:
        load(path)
    msg = str(err.value)
    assert "\n" not in msg and path.name in msg, msg
    if suffix == ".pt" or name == "load_discriminator":
        assert err.type is UnsafeCheckpointError and f"'{SYSTEM}'" in msg and "not imported or executed" in msg
    else:
        assert "not a torch checkpoint" in msg
    assert not marker.exists()


def test_direction_npy_with_os_system_is_refused(tmp_path):
    marker = tmp_path / "marker"
    np.save(tmp_path / "evil.npy", {"boundary": _Evil(f"touch {marker}")}, allow_pickle=True)
    with pytest.raises(UnsafeCheckpointError, match=rf"evil\.npy: refused to load global '{SYSTEM}'"):
        load_direction(tmp_path / "evil.npy")
    assert not marker.exists()


# -- SIGKILL mid-run, then resume=auto -------------------------------------------------------------

STEPS = 8
TINY = [
    "generator=random", "loss=embedded", "data.size=32", "data.batch_size=4", "data.train_length=8",
    "data.val_length=8", "trainer.limit_val_batches=1", "trainer.val_check_interval=1000",
    "trainer.log_every_n_steps=1", "callbacks.model_checkpoint.every_n_train_steps=2",
    "+trainer.enable_progress_bar=false",
]
RUN = [
    "+method=e4e", *TINY, "logger=csv", f"trainer.max_steps={STEPS}", "method.module.progressive_start=2",
    "method.module.progressive_step_every=2", "method.module.d_reg_every=2",
    "callbacks.model_checkpoint.save_top_k=1",  # ~210 MB a checkpoint: keep only the newest step file
]


def _train_cmd(out, *extra):
    return [sys.executable, str(ROOT / "train.py"), *RUN, *extra, f"hydra.run.dir={out}"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _run_train(out, *extra):
    r = subprocess.run(_train_cmd(out, *extra), capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _wait_for(condition, proc, timeout, what, log):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = condition()
        if found:
            return found
        if proc.poll() is not None:
            tail = Path(log).read_text(errors="replace")[-3000:]
            raise AssertionError(f"training ended (rc {proc.returncode}) before {what}:\n{tail}")
        time.sleep(0.002)
    raise AssertionError(f"timed out waiting for {what}")


def _half_written(folder):
    """Hidden temporary files save_atomic is writing into ``folder`` that already hold data."""
    found = []
    for path in folder.glob(".*.tmp"):
        try:
            found += [path] if path.stat().st_size > 0 else []
        except FileNotFoundError:  # renamed into place meanwhile
            pass
    return found


def _last_loss(metrics_csv):
    rows = [r for r in csv.DictReader(open(metrics_csv)) if r.get("train/loss")]
    return int(rows[-1]["step"]), float(rows[-1]["train/loss"])


def test_sigkill_mid_run_then_resume_matches_uninterrupted(tmp_path):
    """A run SIGKILLed in the middle of writing a checkpoint (after its first one exists) and resumed with
    resume=auto ends at the same global step as an uninterrupted run with the same seed, with the same
    final loss (|Δ| <= 1e-5 + 1e-5·|loss|) and exported encoder (atol 1e-5); the kill leaves only whole
    .ckpt files and a hidden *.tmp that the resumed run never reads."""
    full, part = tmp_path / "full", tmp_path / "part"
    ckpts = part / "checkpoints"
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(_train_cmd(part), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=_env())
        try:
            _wait_for(lambda: (ckpts / "last.ckpt").exists(), proc, 240, "the first checkpoint", log.name)
            _wait_for(lambda: _half_written(ckpts), proc, 120, "a half-written checkpoint", log.name)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    leftovers = sorted(p.name for p in ckpts.glob(".*.tmp"))
    assert leftovers and all(n.startswith((".step_", ".last.ckpt.")) for n in leftovers)
    killed_step = load_torch(ckpts / "last.ckpt")["global_step"]
    assert 2 <= killed_step < STEPS
    for path in ckpts.glob("*.ckpt"):  # every visible checkpoint is whole
        assert load_torch(path)["global_step"] in (2, 4, 6)

    resumed = _run_train(part, "resume=auto")
    assert f"Restoring states from the checkpoint path at {ckpts / 'last.ckpt'}" in resumed.stdout + resumed.stderr
    _run_train(full)

    assert load_torch(full / "checkpoints" / "last.ckpt")["global_step"] == STEPS
    assert load_torch(ckpts / "last.ckpt")["global_step"] == STEPS
    assert sorted(p.name for p in ckpts.glob(".*.tmp")) == leftovers  # ignored, not touched
    # the resumed run logs into a new CSV version: Lightning would otherwise delete the first part's curves
    (resumed_csv,) = (part / "csv").glob("resumed_*/metrics.csv")
    assert _last_loss(part / "csv" / "metrics.csv")[0] < STEPS - 1
    step_full, loss_full = _last_loss(full / "csv" / "metrics.csv")
    step_resumed, loss_resumed = _last_loss(resumed_csv)
    assert step_full == step_resumed == STEPS - 1
    assert loss_resumed == pytest.approx(loss_full, rel=1e-5, abs=1e-5)
    a, b = (load_torch(d / "export" / "e4e.pt")["state_dict"] for d in (full, part))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5, msg=key)


# -- W&B continues the same run ---------------------------------------------------------------------

@pytest.mark.slow
def test_wandb_run_id_is_stored_and_reused_on_resume(tmp_path):
    """Offline W&B end to end: the first start stores a run id in the output dir, resume=auto logs
    to that same run."""
    pytest.importorskip("wandb")
    out = tmp_path / "run"
    psp = ["+method=psp", *TINY, "logger=wandb", "logger.wandb.offline=true", "export=false"]
    env = {**_env(), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}

    def run(*extra, where=out):
        cmd = [sys.executable, str(ROOT / "train.py"), *psp, *extra, f"hydra.run.dir={where}"]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]

    run("trainer.max_steps=2")
    run_id = (out / WANDB_RUN_ID).read_text().strip()
    assert len(run_id) == 8 and run_id.isalnum()
    run("resume=auto", "trainer.max_steps=4")
    assert (out / WANDB_RUN_ID).read_text().strip() == run_id
    runs = sorted(p.name for p in (out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(name.endswith(f"-{run_id}") for name in runs)


def test_wandb_run_id_new_on_a_fresh_start_stored_on_resume(tmp_path):
    first = wandb_run_id(tmp_path, resuming=False)
    assert (tmp_path / WANDB_RUN_ID).read_text() == first + "\n" and len(first) == 8
    assert wandb_run_id(tmp_path, resuming=True) == first
    second = wandb_run_id(tmp_path, resuming=False)  # not resuming: a new run, not appended to the old one
    assert second != first and wandb_run_id(tmp_path, resuming=True) == second
    assert [p.name for p in tmp_path.iterdir()] == [WANDB_RUN_ID]  # no temporary file left
    assert wandb_run_id(tmp_path / "new", resuming=True) != second  # resume=auto with nothing stored yet


# -- non-finite losses ------------------------------------------------------------------------------

class _Tiny(pl.LightningModule):
    """Least squares on a linear layer whose loss is multiplied by NaN at the steps in ``nan_at``.
    optimization: 'automatic', 'manual', or 'uncounted' (a second net stepped like a method's
    discriminator, through step_uncounted)."""

    def __init__(self, nan_at=(), optimization="automatic"):
        super().__init__()
        self.net, self.other = torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)
        self.nan_at, self.optimization = set(nan_at), optimization
        self.automatic_optimization = optimization == "automatic"
        self.before, self.after = {}, {}

    def _params(self):
        return torch.cat([p.detach().flatten() for p in self.parameters()]).clone()

    def training_step(self, batch, batch_idx):
        step = self.trainer.global_step
        self.before[step] = self._params()
        nan = float("nan") if step in self.nan_at else 1.0
        loss = self.net(batch[0]).pow(2).mean() * nan
        self.log("train/loss", loss)
        if self.automatic_optimization:
            return loss
        opts = self.optimizers() if self.optimization == "uncounted" else [self.optimizers()]
        if self.optimization == "uncounted":
            other = self.other(batch[0]).pow(2).mean() * nan
            opts[1].zero_grad()
            self.manual_backward(other)
            step_uncounted(opts[1])
        opts[0].zero_grad()
        self.manual_backward(loss)
        opts[0].step()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.after[self.trainer.global_step - 1] = self._params()

    def configure_optimizers(self):
        first = torch.optim.Adam(self.net.parameters(), lr=0.1)
        return [first, torch.optim.Adam(self.other.parameters(), lr=0.1)] if self.optimization == "uncounted" else first


def _fit(model, guard, checkpoint_dir=None, steps=6):
    callbacks = [guard]
    if checkpoint_dir is not None:
        callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=checkpoint_dir, filename="{step}", save_top_k=-1,
                                                      every_n_train_steps=1))
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, callbacks=callbacks,
                         enable_checkpointing=checkpoint_dir is not None, enable_progress_bar=False,
                         enable_model_summary=False)
    data = DataLoader(TensorDataset(torch.randn(32, 4, generator=torch.Generator().manual_seed(0))), batch_size=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, data)
    return trainer, [str(w.message) for w in caught if "skipped the update" in str(w.message)]


@pytest.mark.parametrize("optimization", ["automatic", "manual"])
def test_guard_stops_with_step_and_loss_name_before_the_checkpoint(tmp_path, optimization):
    model = _Tiny(nan_at=[3], optimization=optimization)
    with pytest.raises(NonFiniteLossError) as err:
        _fit(model, NonFiniteLossGuard("stop"), tmp_path)
    assert str(err.value) == "non-finite loss train/loss=nan at step 3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step=1.ckpt", "step=2.ckpt", "step=3.ckpt"]
    last = load_torch(tmp_path / "step=3.ckpt")
    assert last["global_step"] == 3 and all(v.isfinite().all() for v in last["state_dict"].values())


@pytest.mark.parametrize("optimization", ["automatic", "manual", "uncounted"])
def test_guard_skips_the_update_of_a_nonfinite_step(optimization):
    model = _Tiny(nan_at=[2], optimization=optimization)
    trainer, skipped = _fit(model, NonFiniteLossGuard("skip"))
    assert trainer.global_step == 6
    assert skipped == ["skipped the update of step 2: non-finite loss train/loss=nan at step 2"]
    assert torch.equal(model.after[2], model.before[2])  # parameters untouched by the NaN step
    for step in (1, 3, 5):
        assert not torch.equal(model.after[step], model.before[step])
    assert torch.isfinite(model._params()).all()
    for opt in trainer.optimizers:  # Adam saw 5 of the 6 steps
        assert {int(s["step"]) for s in opt.state.values()} == {5}
    assert all(not h for h in (opt._optimizer_step_pre_hooks for opt in trainer.optimizers))


def test_guard_stops_after_too_many_skips_and_rejects_unknown_actions():
    model = _Tiny(nan_at=range(100), optimization="manual")
    with pytest.raises(NonFiniteLossError, match=r"^non-finite loss train/loss=nan at step 2; 3 updates in a row "
                                                 r"were skipped, stopping$"):
        _fit(model, NonFiniteLossGuard("skip", max_consecutive_skips=3))
    assert torch.equal(model._params(), model.before[0])
    with pytest.raises(ValueError, match="action must be one of stop, skip, got 'ignore'"):
        NonFiniteLossGuard("ignore")


def test_atomic_writes_get_umask_permissions_not_0600(tmp_path):
    """Checkpoints, images and CSVs written through atomic_write are readable as a plain open()
    would leave them (shared clusters), and no temporary file remains."""
    from ganinv.checkpoints.safe import atomic_write, save_atomic
    from ganinv.data.images import save_image

    old = os.umask(0o022)
    try:
        save_atomic({"x": torch.zeros(1)}, tmp_path / "a.pt")
        save_image(torch.zeros(3, 4, 4), tmp_path / "b.png")
        atomic_write(tmp_path / "c.csv", lambda f: f.write(b"a,b\n"))
    finally:
        os.umask(old)
    for name in ("a.pt", "b.png", "c.csv"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.png", "c.csv"]
