"""The body of train.py: instantiate what the config names, fit, test, export."""
import contextlib
import itertools
import os
import re
import sys
import time
import uuid
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue
from pytorch_lightning.plugins import TorchCheckpointIO
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from .checkpoints.safe import load_torch, save_atomic
from .config import available_methods
from .distributed import SyncBatchNormPlugin
from .methods.guards import NonFiniteLossError

WANDB_RUN_ID = "wandb_run_id.txt"
# Bad input the user can fix: reported as one line naming the file or field, not as a traceback.
USER_ERRORS = (FileNotFoundError, NotADirectoryError, ValueError, ImportError, MissingMandatoryValue,
               NonFiniteLossError)


def require_method(cfg: DictConfig):
    if cfg.get("method") is None:
        methods = "|".join(available_methods())
        print(f"train.py: no method given; choose one with +method={methods}", file=sys.stderr)
        sys.exit(2)


def resolve_resume(resume, checkpoint_dir):
    """null -> None; 'auto' -> last.ckpt of this run if it exists; else an existing path."""
    if resume in (None, "", "none"):
        return None
    if resume == "auto":
        last = Path(checkpoint_dir) / "last.ckpt"
        return str(last) if last.exists() else None
    if not Path(resume).is_file():
        raise FileNotFoundError(f"resume: checkpoint not found: {resume}")
    return str(resume)


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
    logger writing straight into ``csv/`` gets a fresh version folder (Lightning's CSV logger deletes
    an existing metrics.csv, which holds the curves of the run so far)."""
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
    return [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]


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
    fsync, rename: a killed run never leaves a truncated ``.ckpt``) and read back with
    :func:`load_torch` (``weights_only`` with ganinv's allow-list; CPU, one-line errors)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        if storage_options is not None:
            raise TypeError(f"SafeCheckpointIO takes no storage_options, got {storage_options!r}")
        save_atomic(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return load_torch(path, "resume checkpoint")


def train(cfg: DictConfig):
    require_method(cfg)
    ckpt_path = resolve_resume(cfg.get("resume"), cfg.paths.checkpoint_dir)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.method.module)
    if cfg.get("channels_last"):
        to_channels_last(model)
    if cfg.get("compile"):
        compile_nets(model)
    callbacks = build_callbacks(cfg)  # before the loggers write anything
    plugins = [SafeCheckpointIO()]
    if cfg.trainer.get("sync_batchnorm"):  # BatchNorm over the global batch, also on CPU / gloo
        plugins.append(SyncBatchNormPlugin())
    trainer = instantiate(cfg.trainer, logger=build_loggers(cfg, resuming=ckpt_path is not None) or False,
                          callbacks=callbacks, plugins=plugins)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    if cfg.get("test"):
        trainer.test(model, datamodule=datamodule)
    if cfg.get("export") and trainer.is_global_zero and hasattr(model, "export"):
        out = Path(cfg.paths.output_dir) / "export" / f"{cfg.method.name}.pt"
        model.export(out)
        print(f"exported {cfg.method.name} to {out}")
    return trainer


def user_error(exc):
    """The one-line message of an expected bad-input error (one of USER_ERRORS, also when wrapped by
    Hydra's ``instantiate``, whose config key then leads the message), else None."""
    key = None
    while isinstance(exc, InstantiationException) and exc.__cause__ is not None:
        text = str(exc)
        found = re.search(r"^full_key: (\S+)", text, re.M)
        key = found.group(1) if found else key
        if text.startswith("Error locating target") and isinstance(exc.__cause__, ImportError):
            text = text.split(",")[0]  # "Error locating target 'module.Name'"; the rest says HYDRA_FULL_ERROR
            return f"{key}: {text}" if key else text
        exc = exc.__cause__
    if not isinstance(exc, USER_ERRORS):
        return None
    text = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
    return f"{key}: {text}" if key else text


@contextlib.contextmanager
def one_line_errors(prog):
    """Report expected bad-input errors (:func:`user_error`) as ``<prog>: <message>`` on stderr with
    exit status 2; anything else keeps its traceback, as does everything with HYDRA_FULL_ERROR=1."""
    try:
        yield
    except Exception as e:
        message = user_error(e)
        if message is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"{prog}: {message}", file=sys.stderr)
        sys.exit(2)


def main(cfg: DictConfig):
    """train() for the command line: a bad input is one line on stderr and exit status 2."""
    with one_line_errors("train.py"):
        return train(cfg)
