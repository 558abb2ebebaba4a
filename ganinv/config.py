"""Hydra/OmegaConf glue: resolvers used by conf/ (register before composing)."""
from pathlib import Path

from omegaconf import OmegaConf

ASSETS = Path(__file__).parent / "assets"
METHODS_DIR = Path(__file__).parent.parent / "conf" / "method"


def register_resolvers():
    if not OmegaConf.has_resolver("ganinv_assets"):
        OmegaConf.register_new_resolver("ganinv_assets", lambda: str(ASSETS))


def available_methods():
    return sorted(p.stem for p in METHODS_DIR.glob("*.yaml"))
