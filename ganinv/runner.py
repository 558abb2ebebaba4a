"""The body of train.py: instantiate what the config names, fit, test, export."""
import sys
from pathlib import Path

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .config import available_methods


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


def build_loggers(cfg):
    if not cfg.get("logger"):
        return []
    loggers = [instantiate(c) for c in cfg.logger.values() if c is not None]
    config = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(config)
    return loggers


def build_callbacks(cfg):
    return [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]


def train(cfg: DictConfig):
    require_method(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.method.module)
    trainer = instantiate(cfg.trainer, logger=build_loggers(cfg) or False, callbacks=build_callbacks(cfg))
    ckpt_path = resolve_resume(cfg.get("resume"), cfg.paths.checkpoint_dir)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    if cfg.get("test"):
        trainer.test(model, datamodule=datamodule)
    if cfg.get("export") and trainer.is_global_zero and hasattr(model, "export"):
        out = Path(cfg.paths.output_dir) / "export" / f"{cfg.method.name}.pt"
        model.export(out)
        print(f"exported {cfg.method.name} to {out}")
    return trainer
