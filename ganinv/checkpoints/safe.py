"""The one place where ganinv reads pickled files: torch files through
:mod:`ganinv.checkpoints.torchfile` and NVIDIA pickles through
:mod:`ganinv.checkpoints.nvidia_pickle`, both unpickled by the restricted unpickler of
:mod:`ganinv.checkpoints.allowlist` (which documents every name a file may use, and why it is safe).

Nothing here calls ``torch.load`` or ``pickle.load``: a checkpoint is data, and a file that asks
for any other global is refused before that global is imported or called. Errors are one line and
name the file.
"""
import contextlib
import os
import uuid
from pathlib import Path

import torch

from . import torchfile
from .allowlist import BadFileError, Storage, UnsafeCheckpointError

__all__ = ["BadFileError", "UnsafeCheckpointError", "atomic_write", "check_file", "file_kind", "load_storage_bytes",
           "load_torch", "save_atomic"]

# torch.save's legacy (pre-1.6, non-zip) format opens with this pickled magic number.
_LEGACY_TORCH_MAGIC = torchfile.LEGACY_HEAD


def check_file(path, what="checkpoint", hint=None):
    """Path of an existing, non-empty file, else FileNotFoundError/ValueError saying which
    file and, with ``hint``, where to get it or put it."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory, not a file")
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


def load_torch(path, what="checkpoint", hint=None):
    """Load a ``torch.save`` file on CPU (tensors, containers, argparse.Namespace, numpy numbers as
    Python numbers). Raises FileNotFoundError (missing: names the file and ``hint``), ValueError
    (a directory, empty, truncated, not a torch file, or declaring more than it holds) or
    UnsafeCheckpointError (the file references a global outside the allow-list; refused, never run)."""
    path = check_file(path, what, hint)
    if file_kind(path) != "torch":
        raise ValueError(f"{what} {path} is not a torch checkpoint (expected a file written by torch.save)")
    try:
        return torchfile.load(path, f"{what} {path}")
    except OSError as e:
        raise ValueError(f"{what} {path} cannot be read ({e.strerror or e})") from None


def load_storage_bytes(data, name):
    """A tensor storage serialised by ``torch.save`` into bytes (how plain pickles of tensors
    carry their data: ``torch.storage._load_from_bytes``), as a :class:`Storage`."""
    if not isinstance(data, bytes):
        raise BadFileError(f"tensor storage in {name} is a {type(data).__name__}, not bytes")
    storage = torchfile.load_bytes(data, f"tensor storage in {name}")
    if not isinstance(storage, Storage):
        raise BadFileError(f"tensor storage in {name} holds a {type(storage).__name__}, not a storage")
    return storage


def atomic_write(path, write):
    """Call ``write(f)`` on a temporary file in ``path``'s directory, fsync, then rename it over
    ``path``: readers never see a half-written file and a crash leaves no partial one. The file gets
    the permissions a plain ``open()`` would give (umask), not mkstemp's 0600. An OSError (disk full,
    read-only) on the temporary is raised naming ``path`` itself. Returns the Path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):  # a folder that refused the write may refuse this too
            tmp.unlink(missing_ok=True)
        hidden = isinstance(e, OSError) and e.errno is not None and e.filename in (None, tmp, str(tmp))
        if hidden:  # ENOSPC, EROFS, ... on the temporary: name the file the user knows, not the .tmp
            raise OSError(e.errno, e.strerror or os.strerror(e.errno), str(path)) from None
        raise  # e.g. a parent that is a file: its own name says more
    return path


def save_atomic(obj, path):
    """``torch.save`` through :func:`atomic_write`. Returns the Path."""
    return atomic_write(path, lambda f: torch.save(obj, f))
