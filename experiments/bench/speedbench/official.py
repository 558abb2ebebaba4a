"""The official modules from ``--official DIR`` (laid out as ``../shared/baselines/``):
``rosinality/`` (rosinality/stylegan2-pytorch ``model.py`` + ``op/``) and ``e4e/`` (omertov/encoder4editing
``models/``, ``training/ranger.py``), imported unmodified.

Their op files compile CUDA extensions at import; on CPU they are never called, so the import runs
with ``torch.utils.cpp_extension.load`` returning None and the CPU-native path runs
(``upfirdn2d_native``; fused leaky ReLU = ``leaky_relu(x + b, 0.2) * sqrt(2)``): what a user of the
official code gets on a machine without CUDA. On CUDA the extensions are compiled as the official
code does.
"""
import contextlib
import functools
import sys
from pathlib import Path

FILES = ("rosinality/model.py", "e4e/models/stylegan2/model.py", "e4e/models/encoders/psp_encoders.py",
         "e4e/training/ranger.py")
TOP_LEVEL = ("op", "model", "models", "training")  # the names the official files import each other by


class OfficialDirError(ValueError):
    """``--official DIR`` does not hold the official files; the message names the first one missing."""


def check_dir(path):
    """``path`` (str or Path) -> the resolved Path, or OfficialDirError naming what is missing."""
    path = Path(path).resolve()
    for name in FILES:
        if not (path / name).is_file():
            raise OfficialDirError(f"--official {path}: no {name} there (expected the layout of "
                                   f"../shared/baselines: rosinality/, e4e/; --official none measures ganinv alone)")
    return path


@contextlib.contextmanager
def importing_from(folder, cuda):
    """``folder`` first on sys.path while the official files import; their top-level names are
    taken out of sys.modules afterwards (rosinality's ``model``/``op`` and e4e's ``models`` would
    otherwise shadow each other). On CPU, ``cpp_extension.load`` returns None meanwhile."""
    import torch.utils.cpp_extension  # here: importing it looks for a CUDA toolkit and warns when none

    before = set(sys.modules)
    load = torch.utils.cpp_extension.load
    if not cuda:
        torch.utils.cpp_extension.load = lambda *args, **kwargs: None
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))
        torch.utils.cpp_extension.load = load
        for name in set(sys.modules) - before:
            if name.split(".")[0] in TOP_LEVEL:
                del sys.modules[name]


@functools.cache
def rosinality(folder, cuda=False):
    """rosinality's ``model`` module (``Generator(size, style_dim, n_mlp, channel_multiplier)``)."""
    with importing_from(Path(folder) / "rosinality", cuda):
        import model
    return model


@functools.cache
def e4e(folder, cuda=False):
    """e4e's (Generator, Encoder4Editing, Ranger) classes."""
    with importing_from(Path(folder) / "e4e", cuda):
        from models.encoders.psp_encoders import Encoder4Editing
        from models.stylegan2.model import Generator
        from training.ranger import Ranger
    return Generator, Encoder4Editing, Ranger
