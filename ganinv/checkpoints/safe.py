"""The one place where ganinv reads pickled files: torch files through ``torch.load(...,
weights_only=True)`` with a short allow-list, NVIDIA pickles through
:mod:`ganinv.checkpoints.nvidia_pickle`, which uses :func:`load_storage_bytes` for tensors.

Nothing here ever unpickles without ``weights_only``: a checkpoint is data, and a file
that asks for any other global is refused before that global is imported or called.
Errors are one line and name the file.
"""
import argparse
import io
import os
import pickle
import re
import uuid
import zipfile
from pathlib import Path

import numpy as np
import torch

# Globals that real checkpoints need beyond tensors and plain containers: rosinality's
# ``args`` Namespace, numpy scalars (pSp/e4e store ``best_val_loss`` as np.float64; numpy 1.x
# spells them numpy.core.*) with their dtype classes, object dtype excluded.
# pSp/e4e/ReStyle ``opts`` are plain dicts.
ALLOWED_GLOBALS = [
    argparse.Namespace,
    np.dtype,
    np._core.multiarray.scalar,
    (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),
    *(getattr(np.dtypes, n) for n in np.dtypes.__all__ if n.endswith("DType") and n != "ObjectDType"),
]

# torch.save's legacy (pre-1.6, non-zip) format opens with this pickled magic number.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."


class UnsafeCheckpointError(ValueError):
    """A checkpoint asked to import or call something outside the allow-list; it was refused."""


def check_file(path, what="checkpoint", hint=None):
    """Path of an existing, non-empty file, else FileNotFoundError/ValueError saying which
    file and, with ``hint``, where to get it or put it."""
    path = Path(path)
    if not path.is_file():
        where = f"; {hint}" if hint else ""
        raise FileNotFoundError(f"{what} not found: {path}{where}")
    if path.stat().st_size == 0:
        raise ValueError(f"{what} {path} is empty (0 bytes): re-download or re-export it")
    return path


def file_kind(path):
    """'torch' (torch.save zip or legacy file), 'pickle' (a plain pickle, e.g. NVIDIA's
    .pkl) or 'unknown', from the first bytes."""
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_TORCH_MAGIC))
    if head.startswith(b"PK\x03\x04") or head == _LEGACY_TORCH_MAGIC:
        return "torch"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    return "unknown"


def _refused_global(err):
    m = re.search(r"GLOBAL ([\w.]+)", str(err))
    return m.group(1) if m else None


def _load(source, name, what):
    """torch.load with the allow-list; every failure becomes one line naming ``name``."""
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = _refused_global(e)
        if refused:
            raise UnsafeCheckpointError(
                f"{what} {name}: refused to load global '{refused}' (it was not imported or executed); "
                "only tensors, containers and allow-listed types are accepted") from None
        first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise ValueError(f"{what} {name} is not a readable torch file ({first.strip()})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        first = re.split(r"(?<=\.) ", str(e).splitlines()[0])[0] if str(e) else type(e).__name__
        raise ValueError(f"{what} {name} is truncated or corrupt ({first})") from None


def load_torch(path, what="checkpoint", hint=None):
    """Load a ``torch.save`` file on CPU with ``weights_only=True`` (tensors, containers,
    argparse.Namespace, numpy scalars). Raises FileNotFoundError (missing: names the file
    and ``hint``), ValueError (empty, truncated, not a torch file) or UnsafeCheckpointError
    (the file references a global outside the allow-list; it is refused, never run)."""
    path = check_file(path, what, hint)
    if file_kind(path) != "torch":
        raise ValueError(f"{what} {path} is not a torch checkpoint (expected a file written by torch.save)")
    return _load(path, path, what)


def load_storage_bytes(data, name):
    """A tensor storage serialised by ``torch.save`` into bytes (how plain pickles of tensors
    carry their data), loaded with ``weights_only=True`` on CPU."""
    storage = _load(io.BytesIO(data), name, "tensor storage in")
    if not isinstance(storage, torch.storage.TypedStorage):
        raise ValueError(f"tensor storage in {name} holds a {type(storage).__name__}, not a storage")
    return storage


def atomic_write(path, write):
    """Call ``write(f)`` on a temporary file in ``path``'s directory, fsync, then rename it over
    ``path``: readers never see a half-written file and a crash leaves no partial one. The file gets
    the permissions a plain ``open()`` would give (umask), not mkstemp's 0600. Returns the Path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def save_atomic(obj, path):
    """``torch.save`` through :func:`atomic_write`. Returns the Path."""
    return atomic_write(path, lambda f: torch.save(obj, f))
