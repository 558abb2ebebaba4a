"""Hydra/OmegaConf glue: resolvers used by conf/, the config roots of train.py and invert.py, and
:func:`compose`, which composes either as its command line does (for tests and benchmarks).

train.py's root is ``conf/``. invert.py's is ``conf/invert/`` (its own groups ``inversion/`` and
``refinement/``), so that invert.py's ``method=`` and ``encoder=`` are plain values rather than
train.py's config groups ``conf/method/`` and ``conf/encoder/`` (Hydra reads ``key=value`` as a group
choice whenever a group of that name is on the search path). The groups both entry points use
(:data:`SHARED_GROUPS`) stay in ``conf/<group>/``, one file each, and :func:`register_shared_groups`
puts them into Hydra's ConfigStore in invert.py's process (for :func:`compose`, while it composes).
"""
import contextlib
from pathlib import Path

from omegaconf import OmegaConf

ASSETS = Path(__file__).parent / "assets"
CONF = Path(__file__).resolve().parent.parent / "conf"
INVERT_CONF = CONF / "invert"
METHODS_DIR = CONF / "method"
SHARED_GROUPS = ("paths", "generator", "loss", "trainer", "logger", "hydra")  # conf/<group>/ of both roots
CONFIG_DIRS = {"train": CONF, "invert": INVERT_CONF}  # config name -> its root


def register_resolvers():
    if not OmegaConf.has_resolver("ganinv_assets"):
        OmegaConf.register_new_resolver("ganinv_assets", lambda: str(ASSETS))


def register_shared_groups():
    """Store every ``conf/<group>/<option>.yaml`` of :data:`SHARED_GROUPS` in Hydra's ConfigStore
    (group ``<group>``, option ``<option>``; defaults lists inside them work as in files), so that a
    config root without those folders (invert.py's) composes them. invert.py's process only: with
    train.py's root on the search path, an entry named like a file there is taken as that file's
    schema (:func:`shared_groups` scopes them for :func:`compose`). -> the (group, option) pairs."""
    from hydra.core.config_store import ConfigStore

    store, stored = ConfigStore.instance(), []
    for group in SHARED_GROUPS:
        for path in sorted((CONF / group).glob("*.yaml")):
            store.store(group=group, name=path.stem, node=OmegaConf.load(path), provider="ganinv")
            stored.append((group, path.stem))
    return stored


@contextlib.contextmanager
def shared_groups():
    """:func:`register_shared_groups` while the block runs; the entries are removed after it."""
    from hydra.core.config_store import ConfigStore

    stored = register_shared_groups()
    try:
        yield
    finally:
        repo = ConfigStore.instance().repo  # ConfigStore has no remove(): its repo is {group: {name.yaml: node}}
        for group, name in stored:
            repo.get(group, {}).pop(f"{name}.yaml", None)
            if not repo.get(group, True):
                del repo[group]


def compose(config_name, overrides=(), output_dir=None):
    """The config ``train`` or ``invert`` for ``overrides`` (command-line strings), composed as the
    entry point does, without the ``hydra`` node (the task function never sees it). The Hydra run
    dir (``${hydra:runtime.output_dir}``, hence ``paths.output_dir``) is ``output_dir``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    register_resolvers()
    GlobalHydra.instance().clear()
    scope = shared_groups() if config_name == "invert" else contextlib.nullcontext()
    with scope, initialize_config_dir(config_dir=str(CONFIG_DIRS[config_name]), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir if output_dir is not None else Path.cwd())
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
    return cfg


def available_methods():
    return sorted(p.stem for p in METHODS_DIR.glob("*.yaml"))
