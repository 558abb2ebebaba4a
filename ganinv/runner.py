"""The body of train.py: instantiate what the config names, fit, test, export."""
import csv
import io
import itertools
import os
import re
import sys
import time
import uuid
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from lightning_fabric.loggers.logger import rank_zero_experiment
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import ProgressBar
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.plugins import TorchCheckpointIO
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from .checkpoints.safe import atomic_write, load_torch, save_atomic

# one_line_errors and user_error live in cli.py; experiments/sweep and the tests import them from here
from .cli import USER_ERRORS, one_line_errors, user_error, writing  # noqa: F401
from .config import available_methods
from .distributed import SyncBatchNormPlugin

WANDB_RUN_ID = "wandb_run_id.txt"
# File names of the step checkpoints conf/callbacks/default.yaml writes ("step_0000250.ckpt"), and of
# Lightning's default ("epoch=0-step=250.ckpt"): the step they hold, without loading them.
STEP_IN_NAME = re.compile(r"step[=_](\d+)")


def require_method(cfg):
    if cfg.get("method") is None:
        methods = "|".join(available_methods())
        print(f"train.py: no method given; choose one with +method={methods}", file=sys.stderr)
        sys.exit(2)


def check_accelerator(trainer_cfg):
    """Raise ValueError when ``trainer.accelerator`` asks for a CUDA GPU (``gpu``/``cuda``; also
    trainer=gpu and trainer=ddp) on a machine where torch sees none: Lightning would only say "No
    supported gpu backend found!", after the data and nets are built. (invert.py checks its
    ``device=`` itself, ganinv.invert.settings.check_device.)"""
    accelerator = str(trainer_cfg.get("accelerator"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(f"trainer.accelerator={accelerator}: no CUDA GPU is available on this machine "
                         "(torch.cuda.is_available() is false); train on the CPU with trainer=cpu")


def _what_it_is(checkpoint):
    """What a torch file that is not a Lightning checkpoint holds, for the one-line refusal."""
    keys = sorted(map(str, checkpoint)) if isinstance(checkpoint, dict) else []
    if "g_ema" in keys:
        return "a StyleGAN2 generator checkpoint (use it with generator=checkpoint generator.path=...)"
    if "state_dict" in keys and "opts" in keys:
        return "an exported pSp/e4e model (export/<method>.pt: invert.py method=... reads it)"
    if keys:
        return f"a torch file holding {keys[:6]}"
    return f"a torch file holding a {type(checkpoint).__name__}"


def load_training_checkpoint(path):
    """The Lightning checkpoint at ``path`` (read with SafeCheckpointIO's loader), else a one-line
    error naming the file: a directory, a missing/corrupt file, or a torch file that is something
    else (a generator, an export), which Lightning would fail on with a KeyError traceback."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"resume: {path} is a directory; give a Lightning .ckpt file "
                                "(e.g. RUN/checkpoints/last.ckpt) or resume=auto with hydra.run.dir=RUN")
    if not path.is_file():
        raise FileNotFoundError(f"resume: checkpoint not found: {path}")
    checkpoint = load_torch(path, "resume checkpoint")
    if not (isinstance(checkpoint, dict) and "state_dict" in checkpoint and "global_step" in checkpoint
            and "pytorch-lightning_version" in checkpoint):
        raise ValueError(f"resume: {path} is {_what_it_is(checkpoint)}, not a Lightning training checkpoint "
                         "(checkpoints/*.ckpt of a train.py run)")
    return checkpoint


def find_last_checkpoint(checkpoint_dir):
    """``(path, checkpoint)`` of the readable Lightning checkpoint with the highest global step in
    ``checkpoint_dir`` (``last.ckpt`` on a tie), or ``(None, None)`` when it holds no ``*.ckpt``.

    Every visible ``*.ckpt`` counts, not only ``last.ckpt``: a run stopped by a full disk or a kill
    while writing ``last.ckpt`` has none (or an older one) although ``step_*.ckpt`` files are intact.
    Step files are ranked by the step in their name and loaded only until one reads; unreadable files
    are skipped and listed. Raises ValueError when checkpoints exist but none is readable."""
    folder = Path(checkpoint_dir)
    paths = sorted(folder.glob("*.ckpt")) if folder.is_dir() else []
    loaded, candidates, skipped = {}, [], []
    for path in paths:
        found = STEP_IN_NAME.search(path.stem)
        if found:
            candidates.append((int(found.group(1)), path.name == "last.ckpt", path))
            continue
        try:  # no step in the name (last.ckpt): read it to know its step
            loaded[path] = load_training_checkpoint(path)
        except ValueError as e:
            skipped.append(f"{path.name} ({e})")
            continue
        candidates.append((int(loaded[path]["global_step"]), path.name == "last.ckpt", path))
    for _, _, path in sorted(candidates, reverse=True):
        try:
            checkpoint = loaded.pop(path, None) or load_training_checkpoint(path)
        except ValueError as e:
            skipped.append(f"{path.name} ({e})")
            continue
        note = f"; skipped unreadable {', '.join(skipped)}" if skipped else ""
        if rank_zero_only.rank == 0:
            print(f"resume=auto: resuming from {path} (step {checkpoint['global_step']}){note}")
        return path, checkpoint
    if skipped:
        raise ValueError(f"resume=auto: no readable checkpoint in {folder}: {'; '.join(skipped)}")
    if rank_zero_only.rank == 0:
        print(f"resume=auto: no checkpoint in {folder}, starting at step 0")
    return None, None


def resolve_resume(resume, checkpoint_dir):
    """``(path, checkpoint)`` to resume from, ``(None, None)`` for a fresh start: null -> fresh;
    'auto' -> :func:`find_last_checkpoint` of this run's checkpoint dir; else a Lightning checkpoint
    file (:func:`load_training_checkpoint`). The checkpoint is returned loaded, so that
    :class:`SafeCheckpointIO` hands it to Lightning without reading the file twice."""
    if resume in (None, "", "none"):
        return None, None
    if resume == "auto":
        return find_last_checkpoint(checkpoint_dir)
    return Path(resume), load_training_checkpoint(resume)


def write_text_atomic(path, text):
    """Write ``text`` to a temporary file next to ``path``, fsync, rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def wandb_run_id(output_dir, resuming):
    """This output dir's W&B run id: the one stored in ``<output_dir>/wandb_run_id.txt`` when resuming
    (and in DDP children, which start after the main process wrote it), else a new one that the main
    process stores there."""
    path = Path(output_dir) / WANDB_RUN_ID
    if (resuming or rank_zero_only.rank != 0) and path.is_file():
        return path.read_text().strip()
    if rank_zero_only.rank != 0:
        return None
    run_id = uuid.uuid4().hex[:8]
    write_text_atomic(path, run_id + "\n")
    return run_id


def build_loggers(cfg, resuming=False):
    """The config's loggers. When resuming, W&B continues the run stored in the output dir, and a CSV
    logger writing straight into ``csv/`` gets a fresh version folder ``resumed_<time>`` (Lightning's
    CSV logger deletes an existing metrics.csv, which holds the curves of the run so far)."""
    if not cfg.get("logger"):
        return []
    loggers = []
    for c in cfg.logger.values():
        if c is None:
            continue
        target, extra = str(c.get("_target_", "")), {}
        if target.endswith("WandbLogger") and c.get("id") is None:
            extra = {"id": wandb_run_id(cfg.paths.output_dir, resuming), "resume": "allow"}
        if target.endswith("CSVLogger") and resuming and c.get("version", None) == "":
            extra = {"version": time.strftime("resumed_%Y-%m-%d_%H-%M-%S")}
        loggers.append(instantiate(c, **extra))
    config = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(config)
    return loggers


def build_callbacks(cfg):
    """The config's callbacks; a progress bar among them (conf/callbacks/default.yaml's
    ``progress_bar``) is left out when ``trainer.enable_progress_bar`` is false, which Lightning
    would otherwise refuse."""
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if cfg.get("trainer") is not None and cfg.trainer.get("enable_progress_bar", True) is False:
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    return callbacks


def to_channels_last(model):
    """Store every 4-D parameter and buffer NHWC, in place: oneDNN / cuDNN then keep activations NHWC
    end to end (no reorders around each conv). Not ``module.to(memory_format=...)``, which refuses
    the 5-D modulated-conv weights."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.ndim == 4:
            tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)


def compile_nets(model):
    """torch.compile the encoder (in place, state-dict names unchanged) and the generator's
    ``synthesis``, which the methods call directly. Discriminators stay eager: their R1 penalty
    (and StyleGAN2's path-length term) needs double backward, which compiled graphs lack."""
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, torch.nn.Module):
        encoder.compile()
    generator = getattr(model, "generator", None)
    if generator is not None:
        generator.synthesis = torch.compile(generator.synthesis)


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written with :func:`save_atomic` (temporary file in the same folder,
    fsync, rename: a killed run or a full disk never leaves a truncated ``.ckpt``; a refused write is
    an OSError naming the checkpoint) and read back with :func:`load_torch` (``weights_only`` with
    ganinv's allow-list; CPU, one-line errors). ``preloaded`` is ``(path, checkpoint)`` already read
    by :func:`resolve_resume`, handed to Lightning instead of reading the file again."""

    def __init__(self, preloaded=(None, None)):
        super().__init__()
        self.preloaded = preloaded

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        if storage_options is not None:
            raise TypeError(f"SafeCheckpointIO takes no storage_options, got {storage_options!r}")
        with writing(path):
            save_atomic(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        known, checkpoint = self.preloaded
        if known is not None and Path(path) == Path(known):
            self.preloaded = (None, None)
            return checkpoint
        return load_torch(path, "resume checkpoint")


class AtomicCSVWriter(ExperimentWriter):
    """Lightning's CSV experiment writer, but ``metrics.csv`` is rewritten whole through
    :func:`atomic_write` at each save instead of appended to: a full disk or a read-only folder
    leaves the previous file intact (never a torn row) and the OSError names ``metrics.csv``."""

    def save(self):
        if not self.metrics:
            return
        rows = []
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                reader = csv.DictReader(f)
                rows = list(reader)
                self.metrics_keys.extend(k for k in reader.fieldnames or [] if k not in self.metrics_keys)
        self._record_new_keys()  # also sorts metrics_keys
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=self.metrics_keys)
        writer.writeheader()
        writer.writerows(rows + self.metrics)
        with writing(self.metrics_file_path):
            atomic_write(self.metrics_file_path, lambda f: f.write(text.getvalue().encode()))
        self.metrics = []


class AtomicCSVLogger(CSVLogger):
    """``pytorch_lightning.loggers.CSVLogger`` writing through :class:`AtomicCSVWriter`."""

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AtomicCSVWriter(log_dir=self.log_dir)
        return self._experiment


def train(cfg):
    """The composed train config (DictConfig, conf/train.yaml + overrides) -> fit, test, export."""
    require_method(cfg)
    check_accelerator(cfg.trainer)
    ckpt_path, checkpoint = resolve_resume(cfg.get("resume"), cfg.paths.checkpoint_dir)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    # plain dicts/lists, not DictConfig: the module's hparams go into every Lightning checkpoint, whose
    # safe loader (resume) accepts only tensors and plain containers
    model = instantiate(cfg.method.module, _convert_="all")
    if cfg.get("channels_last"):
        to_channels_last(model)
    if cfg.get("compile"):
        compile_nets(model)
    callbacks = build_callbacks(cfg)  # before the loggers write anything
    plugins = [SafeCheckpointIO(preloaded=(ckpt_path, checkpoint))]
    del checkpoint  # Lightning takes it from the plugin and frees it after restoring
    if cfg.trainer.get("sync_batchnorm"):  # BatchNorm over the global batch, also on CPU / gloo
        plugins.append(SyncBatchNormPlugin())
    trainer = instantiate(cfg.trainer, logger=build_loggers(cfg, resuming=ckpt_path is not None) or False,
                          callbacks=callbacks, plugins=plugins)
    trainer.fit(model, datamodule=datamodule, ckpt_path=None if ckpt_path is None else str(ckpt_path))
    if cfg.get("test"):
        trainer.test(model, datamodule=datamodule)
    if cfg.get("export") and trainer.is_global_zero and hasattr(model, "export"):
        out = Path(cfg.paths.output_dir) / "export" / f"{cfg.method.name}.pt"
        with writing(out):
            model.export(out)
        print(f"exported {cfg.method.name} to {out}")
    return trainer


def main(cfg):
    """train() for the command line: a bad input is one line on stderr and exit status 2."""
    with one_line_errors("train.py"):
        return train(cfg)
