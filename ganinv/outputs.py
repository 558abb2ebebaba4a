"""invert.py's output folder: the file layout, metrics.csv, the run lock and write faults.

Layout under the output root: ``reconstructions/<key>.png``, ``latents/<key>.pt`` / ``.npy``,
``noises/<key>.pt``, ``aligned/<key>.png``, ``edits/<tag>/<key>.png``, ``generators/...``,
``multimodal/<key>.png`` (input | K style-mixed outputs, as pSp's ``scripts/style_mixing.py``
saves them) with ``multimodal/<key>.pt`` / ``.npy`` (their W+ codes [K, n_latent, D]),
``couples/<key>.png`` (input | output, pSp ``scripts/inference.py --couple_outputs``) and
``metrics.csv`` (one row per image, :data:`COLUMNS` in that order, and ``id`` after ``lpips`` when
the run measured it (:data:`OPTIONAL`); mse/psnr/ssim/lpips/id are blank for inputs that have no RGB
target, e.g. sketches and label maps). Every file is written atomically
(:func:`ganinv.checkpoints.safe.atomic_write`: temporary file in the same folder, fsync, rename),
so a fault leaves whole files or none, never a truncated one.

Faults and concurrency, and why:

- **One run per output folder.** :class:`RunLock` takes an exclusive ``fcntl.flock`` on the output
  folder itself (a directory file descriptor: no lock file is left behind) for the whole run. A
  second invert.py run into the same folder refuses at once with one line (exit 2) instead of
  waiting: two runs would invert the same images twice, and metrics.csv is rewritten from the
  rows a run read at its start, so the later writer would drop the other's rows. flock locks are
  advisory and local to one machine (on NFS they may not be shared between hosts).
- **Write errors** (ENOSPC, EROFS, EACCES, a path component that is a file, ...) become
  :class:`OutputError`, one line naming the file that could not be written. It is a ValueError,
  so :func:`ganinv.runner.one_line_errors` reports it with exit 2: a full disk or a read-only
  folder is the user's to fix, not a bug. The temporary file is removed, so nothing partial stays.
  :meth:`RunLock.__enter__` probes the folder with an anonymous temporary file first, so a
  read-only output folder fails before any network is built.
- **A metrics.csv that ganinv did not write** (its header is not :data:`COLUMNS` in order with the
  :data:`OPTIONAL` ones in their places: a column missing, unknown, repeated or out of order; or it
  is not text) is refused with one line naming it and the column: rewriting it would destroy
  someone's file. Inside a ganinv metrics.csv, **garbage rows** (wrong field count, empty or unsafe
  image key, a metric that is not a number, NUL bytes or bytes that are not UTF-8, a generator path
  leaving the folder) are ignored: such an image counts as not done and is inverted again, the rows
  are left out of the summary means, they are listed in the summary, and they are dropped when the
  file is next rewritten.

Layer: this module imports only :mod:`ganinv.checkpoints` and :mod:`ganinv.data`: it is the format of
a run folder, which the driver (:mod:`ganinv.inversion`) writes and the drivers :mod:`ganinv.edit_cli`
(``apply``: metrics.csv, the lock, ``edits/``) and :mod:`ganinv.evaluate` and :mod:`ganinv.report` read;
:mod:`ganinv.editing` reads only ``latents/`` (:func:`ganinv.editing.labels.saved_latents`) and takes
metrics.csv's rows from its caller.
"""
import contextlib
import csv
import errno
import fcntl
import io
import math
import os
import tempfile
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from .checkpoints.safe import atomic_write, save_atomic
from .checkpoints.stylegan import save_generator
from .data.images import save_image

COLUMNS = ["image", "mse", "psnr", "ssim", "lpips", "seconds", "generator"]  # always written, in this order
# written only when measured: id (ArcFace cosine similarity, with model_ir_se50.pth), after lpips
OPTIONAL = ("id",)
_AFTER = COLUMNS.index("lpips") + 1
ORDER = [*COLUMNS[:_AFTER], *OPTIONAL, *COLUMNS[_AFTER:]]  # COLUMNS with OPTIONAL in place (after lpips)
NUMERIC = ("seconds",)  # always written
# blank when not measured (no RGB target; no pretrained LPIPS; id: only when some row has it)
METRICS = ("mse", "psnr", "ssim", "lpips", "id")
# errno values that mean "this path cannot be written here" rather than a bug in ganinv
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.ENOTDIR,
                          errno.EEXIST, errno.EISDIR, errno.EFBIG, errno.ENAMETOOLONG, errno.EIO})


class OutputError(ValueError):
    """An output file or folder could not be written or read (one line naming it)."""


def describe_os_error(path, e, verb="write"):
    """``<path>: cannot <verb> (<reason>[ at <other path>])`` for an OSError met while writing
    ``path``; the other path is named when the error happened elsewhere (e.g. a parent folder
    that is a file), never a temporary file (the atomic writer's, or one inside ``path``)."""
    reason = e.strerror or str(e)
    where = e.filename if isinstance(e.filename, str) else None
    inside = where is not None and os.path.realpath(where).startswith(os.path.realpath(path) + os.sep)
    extra = f" at {where}" if where and where != str(path) and not where.endswith(".tmp") and not inside else ""
    return f"{path}: cannot {verb} ({reason}{extra})"


@contextlib.contextmanager
def writing(path):
    """Turn any OSError raised while writing ``path`` into an :class:`OutputError` naming it."""
    try:
        yield
    except OSError as e:
        raise OutputError(describe_os_error(path, e)) from e


class RunLock:
    """Exclusive, non-blocking ``flock`` on the output folder for one run (see the module
    docstring); also creates the folder and checks that files can be created in it."""

    def __init__(self, root):
        self.root, self.fd = Path(root), None

    def __enter__(self):
        with writing(self.root):
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.root):  # a read-only folder fails here, before any work
                pass
        self.fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise OutputError(f"output={self.root}: another invert.py run is writing into this folder (it holds "
                              "the folder's lock); wait for it to finish or choose another output folder") from None
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd = None
        return False


def _bad_row(row, fields):
    """Why a metrics.csv row (a list of strings) is unusable, or None when it is a valid row."""
    if len(row) != len(fields):
        return f"{len(row)} fields, the header has {len(fields)}"
    values = dict(zip(fields, row))
    if any("\ufffd" in v for v in row):
        return "bytes that are not UTF-8 text (or NUL)"
    key = values["image"]
    parts = PurePosixPath(key).parts
    if not key or key.startswith("/") or ".." in parts or any(c < " " for c in key):
        return f"image key {key!r} is not a relative path"
    if values.get("mse", "") == "" and any(values.get(m, "") != "" for m in ("psnr", "ssim")):
        return "psnr/ssim without mse"
    for name in NUMERIC + METRICS:
        text = values.get(name, "")
        if name in METRICS and text == "":
            continue
        try:
            if math.isnan(float(text)):
                return f"{name} is nan"
        except ValueError:
            return f"{name}={text!r} is not a number"
    generator = values.get("generator", "")
    if generator and (generator.startswith("/") or ".." in PurePosixPath(generator).parts):
        return f"generator={generator!r} leaves the output folder"
    return None


def header_problem(fields):
    """Why a metrics.csv header (a list of names) is not one ganinv writes, naming the column, or None:
    every one of :data:`COLUMNS`, any of :data:`OPTIONAL`, nothing else, in the order of :data:`ORDER`."""
    if "image" not in fields:
        return "has no 'image' column"
    if len(set(fields)) != len(fields):
        return "repeats a column"
    unknown = [f for f in fields if f not in ORDER]
    if unknown:
        return f"has an unknown column {unknown[0]!r}"
    missing = [c for c in COLUMNS if c not in fields]
    if missing:
        return f"has no {missing[0]!r} column"
    expected = [c for c in ORDER if c in fields]
    moved = next((f for f, e in zip(fields, expected) if f != e), None)
    return f"has column {moved!r} out of order (expected {','.join(expected)})" if moved else None


def metrics_columns(rows):
    """The header :meth:`Outputs.add_rows` writes for ``rows`` (dicts): :data:`COLUMNS`, plus each
    :data:`OPTIONAL` column some row has a value in, in the order of :data:`ORDER`."""
    present = {c for c in OPTIONAL if any(row.get(c, "") != "" for row in rows)}
    return [c for c in ORDER if c in COLUMNS or c in present]


def read_metrics(path):
    """A ganinv metrics.csv -> ({image: row dict}, [bad-row notes]); ({}, []) when there is none.
    Raises OutputError for a file ganinv did not write (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        return {}, []
    try:
        with writing(path):  # reading: the same errors (EACCES, EISDIR, EIO) name the file
            data = path.read_bytes()
    except OutputError as e:
        raise OutputError(str(e).replace("cannot write", "cannot read", 1)) from None
    # NUL bytes and invalid UTF-8 become U+FFFD, which marks a row as garbage instead of stopping the
    # csv module on the whole file; each line is parsed on its own (ganinv never writes a field with
    # a line break: such file names are refused), so one bad line cannot take the others with it.
    lines = data.decode("utf-8-sig", errors="replace").replace("\x00", "\ufffd").split("\n")
    if not lines[0].strip():
        return {}, []
    try:
        fields = next(csv.reader([lines[0].rstrip("\r")]))
    except csv.Error as e:
        raise OutputError(f"{path}: not a readable CSV file ({e}); move it away or choose another output "
                          "folder") from None
    why = header_problem(fields)
    if why:
        raise OutputError(f"{path}: not a ganinv metrics file (its header {','.join(fields)[:80]!r} {why}); "
                          "move it away or choose another output folder")
    rows, bad = {}, []
    for number, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line:
            continue
        try:
            row = next(csv.reader([line]))
        except csv.Error as e:
            bad.append(f"line {number}: {e}")
            continue
        why = _bad_row(row, fields)
        if why:
            bad.append(f"line {number}: {why}")
            continue
        values = dict(zip(fields, row))
        rows[values["image"]] = values
    return rows, bad


def is_output_folder(folder):
    """Whether ``folder`` holds a ganinv metrics.csv (its header names ``image`` and ``mse``): how an
    earlier run's output folder inside the input folder is recognised and left out of the walk."""
    try:
        with open(Path(folder) / "metrics.csv", "rb") as f:
            header = f.readline(4096).decode("utf-8", errors="replace").strip().split(",")
    except OSError:
        return False
    return "image" in header and "mse" in header


class Outputs:
    """File layout under the output folder, metrics.csv and which images are finished. Reads
    metrics.csv on creation (under the run's lock, see :class:`RunLock`)."""

    def __init__(self, root):
        self.root = Path(root)
        self.csv = self.root / "metrics.csv"
        self.rows, self.bad_rows = read_metrics(self.csv)

    def path(self, kind, key, suffix):
        return self.root / kind / f"{key}{suffix}"

    def done(self, key, need_generator, edit_tags=(), extra=()):
        """Whether ``key`` has its row and every file; ``extra``: (kind, suffix) pairs of further
        files the run writes (``("multimodal", ".pt")``, ``("couples", ".png")``)."""
        row = self.rows.get(key)
        if row is None:
            return False
        files = [self.path("reconstructions", key, ".png"), self.path("latents", key, ".pt"),
                 self.path("latents", key, ".npy"), *(self.path(f"edits/{t}", key, ".png") for t in edit_tags),
                 *(self.path(kind, key, suffix) for kind, suffix in extra)]
        if need_generator:
            if not row.get("generator"):
                return False
            files.append(self.root / row["generator"])
        return all(f.is_file() for f in files)

    def write_image(self, key, image, latent, noises=None, aligned=None):
        target = self.path("reconstructions", key, ".png")
        with writing(target):
            save_image(image, target)
        self.write_codes("latents", key, latent)
        if noises is not None:
            target = self.path("noises", key, ".pt")
            with writing(target):
                save_atomic(noises, target)
        if aligned is not None:
            target = self.path("aligned", key, ".png")
            with writing(target):
                save_image(aligned, target)

    def write_edit(self, tag, key, strip):
        """strip [S, 3, H, W] (one image per strength) -> ``edits/<tag>/<key>.png``, side by side."""
        target = self.path(f"edits/{tag}", key, ".png")
        with writing(target):
            save_image(torch.cat(list(strip), dim=-1), target)

    def write_multimodal(self, key, shown, images, latents):
        """pSp multimodal outputs (``scripts/style_mixing.py``): ``multimodal/<key>.png`` = the input
        ``shown`` [3, H, W] | images [K, 3, H, W] side by side, and their codes latents
        [K, n_latent, D] as ``multimodal/<key>.pt`` and ``.npy``."""
        target = self.path("multimodal", key, ".png")
        with writing(target):
            save_image(torch.cat([shown, *images], dim=-1), target)
        self.write_codes("multimodal", key, latents)

    def write_codes(self, kind, key, codes):
        """Codes (e.g. W+ [n_latent, D]) as ``<kind>/<key>.pt`` and ``.npy``, float32 on CPU."""
        codes = codes.detach().float().cpu().clone()
        target = self.path(kind, key, ".pt")
        with writing(target):
            save_atomic(codes, target)
        target = self.path(kind, key, ".npy")
        with writing(target):
            atomic_write(target, lambda f: np.save(f, codes.numpy()))

    def write_picture(self, kind, key, image):
        """One image [3, H, W] in [-1, 1] as ``<kind>/<key>.png`` (``composites/``, ``blend/``)."""
        target = self.path(kind, key, ".png")
        with writing(target):
            save_image(image, target)

    def write_couple(self, key, panels):
        """``couples/<key>.png``: panels [3, H, W] side by side (pSp ``--couple_outputs``: input |
        output; super-resolution: original | low-resolution input | output)."""
        target = self.path("couples", key, ".png")
        with writing(target):
            save_image(torch.cat(list(panels), dim=-1), target)

    def generator_path(self, tag):
        """``generators/<tag>.pt``, relative to the root (metrics.csv's ``generator`` column)."""
        return f"generators/{tag}.pt"

    def write_generator(self, rel, generator):
        """A PTI-tuned generator as ``<root>/<rel>`` in the rosinality layout."""
        target = self.root / rel
        with writing(target):
            save_generator(target, generator)

    def write_grid(self, grid):
        target = self.root / "grid.png"
        with writing(target):
            save_image(grid, target)

    def add_rows(self, rows):
        """Add (or replace) rows and rewrite metrics.csv atomically (columns: :func:`metrics_columns`):
        the old file stays whole until the new one is complete."""
        self.rows.update({row["image"]: row for row in rows})
        text = io.StringIO()
        writer = csv.DictWriter(text, metrics_columns(self.rows.values()), extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()}
                         for row in self.rows.values())
        with writing(self.csv):
            atomic_write(self.csv, lambda f: f.write(text.getvalue().encode()))
