"""Image-folder datasets and Lightning data modules yielding ``{"x": input, "y": target}`` batches,
and the folder walk and output-key rule they and invert.py share (:func:`walk_images`,
:func:`image_keys`: linked folders followed once, keys unique and independent of listing order)."""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ganinv.data.images import IMAGE_EXTENSIONS, load_image, resize_crop
from ganinv.data.procedural import SPLITS, ProceduralFaces
from ganinv.data.tasks import OneHotLabels


def display_path(path):
    """A path as printable text: bytes that are not UTF-8 shown as ``\\xNN`` escapes, so a
    report about an undecodable file name can itself be printed and written."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def _name_problem(rel):
    """Why a relative path cannot serve as an output key (None when it can)."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8; rename the file"
    if any(c < " " or c == "\x7f" for c in rel):
        return "file name contains control characters (newline, tab, ...); rename the file"
    return None


class ImageWalk(NamedTuple):
    """What :func:`walk_images` found: ``paths`` (sorted by relative path), ``problems`` (inputs
    that cannot be used, one line each: undecodable names, broken links, unlistable folders) and
    ``notes`` (folders left out on purpose: already-walked symlink targets, excluded folders)."""

    paths: list
    problems: list
    notes: list


def walk_images(root, exclude=(), is_excluded=None, check_names=True):
    """Every image file under root, recursively, in a deterministic order (sorted by relative path).

    Symbolic links: a linked file is used like a regular file; a broken link with an image
    extension is reported as a problem. A linked folder is followed once: real folders are walked
    first, then linked folders in sorted order, and a link whose target (same device and inode) was
    already walked -- a cycle such as ``sub/loop -> ..``, or a second link to one folder -- is
    reported in ``notes`` and not walked again, so no link is skipped silently and no walk loops.

    ``exclude``: folders (any spelling; compared by real path) left out, e.g. invert.py's output
    folder when it lies inside the input folder; ``is_excluded(folder)`` -> bool leaves out further
    folders (below root, not root itself), e.g. earlier output folders. Both are reported in
    ``notes``. With ``check_names``, file names that cannot be output keys (not UTF-8, control
    characters) are reported in ``problems`` and the file is not used; a folder that cannot be
    listed is always reported there.
    """
    root = Path(root)
    skip = {os.path.realpath(p) for p in exclude}
    paths, problems, notes = [], [], []
    seen: dict = {}  # (st_dev, st_ino) of walked folders -> the path they were walked as
    links: list = []  # symlinked folders, walked after every real folder

    def walk(top):
        stack = [top]
        while stack:
            folder = stack.pop()
            try:
                st = folder.stat()
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError as e:
                problems.append(f"{display_path(folder)}: cannot list this folder ({e.strerror or e}), skipped")
                continue
            ident = (st.st_dev, st.st_ino)
            if ident in seen:
                notes.append(f"{display_path(folder)}: the same folder as {display_path(seen[ident])}, "
                             "walked once")
                continue
            seen[ident] = folder
            subfolders = []
            for entry in entries:
                path = Path(entry.path)
                try:
                    is_link, is_dir = entry.is_symlink(), entry.is_dir()
                except OSError:
                    is_link, is_dir = False, False
                if is_dir:
                    if os.path.realpath(path) in skip:
                        notes.append(f"{display_path(path)}: the output folder, not read as input")
                    elif is_excluded is not None and is_excluded(path):
                        notes.append(f"{display_path(path)}: an earlier ganinv output folder, not read as input")
                    elif is_link:
                        links.append(path)
                    else:
                        subfolders.append(path)
                elif path.suffix.lower() in IMAGE_EXTENSIONS:
                    if is_link and not path.exists():
                        problems.append(f"{display_path(path)}: broken symbolic link "
                                        f"(to {display_path(os.readlink(path))}), skipped")
                    elif entry.is_file():
                        paths.append(path)
            stack.extend(reversed(subfolders))

    walk(root)
    while links:
        links.sort(key=lambda p: p.relative_to(root).as_posix())
        walk(links.pop(0))
    paths.sort(key=lambda p: p.relative_to(root).as_posix())
    usable = []
    for path in paths:
        why = _name_problem(path.relative_to(root).as_posix()) if check_names else None
        if why:
            problems.append(f"{display_path(path)}: {why}")
        else:
            usable.append(path)
    return ImageWalk(usable, problems, notes)


def list_images(root):
    """All image files under root, recursively, sorted by relative path (:func:`walk_images`: linked
    folders followed once; any file name, since training needs no output keys); clear errors if
    there are none. What the walk reports (broken links, unlistable folders, repeated link
    targets) is issued as one warning per line."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"image directory not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"not a directory: {root}")
    found = walk_images(root, check_names=False)
    for line in found.problems + found.notes:
        warnings.warn(line, stacklevel=2)
    if not found.paths:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
    return found.paths


def image_keys(rels):
    """Unique output keys for relative image paths (POSIX strings) -> (keys, renames).

    The rule, which depends only on the set of paths (never on listing order):

    1. A key is the relative path without its extension: ``sub/x.png`` -> ``sub/x``.
    2. Paths that share that key get the whole relative path with every '.' made '_':
       ``x.png`` -> ``x_png``, ``x.jpg`` -> ``x_jpg``.
    3. Keys that still coincide -- compared case-insensitively (``str.casefold``), so outputs
       do not overwrite each other on case-insensitive file systems either -- are given in this
       order: paths whose key is their plain key from step 1 first, then by relative path; the
       first keeps the key, each later one gets ``<key>~N`` with the smallest N >= 2 that no
       other key uses. ``x.png``, ``x.jpg`` and ``x_png.png`` -> ``x_png~2``, ``x_jpg``,
       ``x_png``.

    ``renames`` lists every path whose key is not its plain key, as ``path -> key``.
    """
    rels = list(rels)
    stems = [str(PurePosixPath(r).with_suffix("")) for r in rels]
    shared = Counter(s.casefold() for s in stems)
    candidates = [r.replace(".", "_") if shared[s.casefold()] > 1 else s for r, s in zip(rels, stems)]
    taken = {c.casefold() for c in candidates}
    groups: dict = {}
    for i, c in enumerate(candidates):
        groups.setdefault(c.casefold(), []).append(i)
    keys = list(candidates)
    for members in groups.values():
        if len(members) < 2:
            continue
        members.sort(key=lambda i: (candidates[i] != stems[i], rels[i]))
        for i in members[1:]:
            n = 2
            while f"{candidates[i]}~{n}".casefold() in taken:
                n += 1
            keys[i] = f"{candidates[i]}~{n}"
            taken.add(keys[i].casefold())
    renames = [f"{r} -> {k}" for r, s, k in zip(rels, stems, keys) if k != s]
    return keys, renames


class ImageFolder(Dataset):
    """Every image under root (recursive) -> [3, H, W] in [-1, 1].

    size: int (square) or (h, w); images are center-cropped to that aspect and resized with antialiased
    bilinear filtering. flip: random horizontal flip with probability 1/2 (torch's global RNG, which
    Lightning seeds per worker).
    """

    def __init__(self, root: str | os.PathLike, size: int | tuple[int, int], flip: bool = False):
        self.root, self.size, self.flip = Path(root), size, flip
        self.paths = list_images(root)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        image = load_image(self.paths[index], self.size)
        if self.flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image


def split_indices(n, split, seed=0):
    """Deterministic train/val/test partition of range(n) in proportion to split (normalised)."""
    if len(split) != 3 or any(s < 0 for s in split) or sum(split) <= 0:
        raise ValueError(f"split must be three non-negative ratios (train, val, test), got {tuple(split)}")
    total = float(sum(split))
    n_val, n_test = round(n * split[1] / total), round(n * split[2] / total)
    n_train = n - n_val - n_test
    if n_train <= 0 and split[0] > 0:
        raise ValueError(f"{n} images are too few for split {tuple(split)}: no training images left")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]


def _item_generator(seed, split, index):
    """torch.Generator seeded by (seed, split, index): fixed task randomness for val/test items."""
    state = np.random.SeedSequence([seed, SPLITS.index(split), index]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class PairedDataset(Dataset):
    """Wraps an image dataset into ``{"x": input, "y": y}`` items.

    Without ``source`` the input is derived from the target: x = task(y), or x = y without a task.
    With ``source`` (a folder of input images, e.g. sketches or integer label maps), item i pairs
    the i-th source file with the i-th target, both in sorted relative-path order, as the official
    ``datasets/images_dataset.py`` ``ImagesDataset`` pairs ``sorted(make_dataset(source_root))``
    with ``sorted(make_dataset(target_root))``; the task then converts the source file (e.g.
    ``OneHotLabels``: label map -> one-hot) and may be one that does not derive its input from
    the target. Source files are read at the target's size: RGB images (task None) or, for tasks
    with ``input_nc`` 1 or label maps, one channel as the official ``convert('L')`` (sketches in
    [0, 1] as ``ToTensor``; label maps as integer class indices, resized with nearest neighbour).

    Items of datasets returning (image, factors) also carry ``"factors"``. Outside the train split the
    task's randomness comes from a generator seeded by (seed, split, index), so validation and test
    inputs are the same every epoch.
    """

    def __init__(self, base: Dataset, task=None, split: str = "train", seed: int = 0, source=None):
        self.source_paths = None
        if source is not None:
            self.source_paths = list_images(source)
            target_root = getattr(_unwrap(base), "root", None)
            if len(self.source_paths) != len(_unwrap(base)):
                raise ValueError(
                    f"source folder {source} has {len(self.source_paths)} images but the target folder "
                    f"{target_root} has {len(_unwrap(base))}: paired folders must hold the same files"
                )
            self.source_root = Path(source)
        elif task is not None and not getattr(task, "from_target", False):
            raise ValueError(
                f"task {type(task).__name__} does not derive its input from the target image; "
                "it needs paired inputs (e.g. label maps): give a source folder (data.train_source_dir / "
                "data.val_source_dir)"
            )
        self.base, self.task, self.split, self.seed = base, task, split, seed

    def __len__(self):
        return len(self.base)

    def _source(self, index, like):
        """The paired source file of item ``index`` at the target's size."""
        path = self.source_paths[_base_index(self.base, index)]
        size = tuple(like.shape[-2:])
        if self.task is None or getattr(self.task, "input_nc", 3) == 3:
            return load_image(path, size)
        if isinstance(self.task, OneHotLabels):
            labels = load_label_map(path)[None, None].float()
            labels = resize_crop_nearest(labels, size)
            return labels[0, 0].long()
        with warnings.catch_warnings():  # greyscale files are what a sketch folder holds
            warnings.filterwarnings("ignore", message=r".*converted greyscale")
            gray = (load_image(path, mode="L") + 1) / 2  # convert('L') + ToTensor: [1, H, W] in [0, 1]
        return resize_crop(gray, size).clamp(0, 1)

    def _pair(self, item, index):
        """``{"x": input, "y": target}`` (plus ``"factors"`` when the base yields them) for one item."""
        y, factors = item if isinstance(item, tuple) else (item, None)
        x = y if self.source_paths is None else self._source(index, y)
        if self.task is not None and (self.source_paths is None or isinstance(self.task, OneHotLabels)):
            gen = None if self.split == "train" else _item_generator(self.seed, self.split, index)
            x = self.task(x, generator=gen)
        out = {"x": x, "y": y}
        if factors is not None:
            out["factors"] = factors
        return out

    def __getitem__(self, index):
        return self._pair(self.base[index], index)

    def __getitems__(self, indices):
        fetch = getattr(self.base, "__getitems__", None)
        items = fetch(indices) if fetch is not None else [self.base[i] for i in indices]
        return [self._pair(item, i) for item, i in zip(items, indices)]


def _unwrap(base):
    """The dataset under a Subset (the root split's parts)."""
    return base.dataset if isinstance(base, Subset) else base


def _base_index(base, index):
    """The index into the unwrapped dataset (and its paired source list) of item ``index``."""
    return base.indices[index] if isinstance(base, Subset) else index


def load_label_map(path):
    """An integer label-map PNG -> class indices [H, W] (long). 'L', 'P' (palette indices), 'I'
    and 'I;16' files are read as stored; RGB files are converted to 'L', as the official
    ``InferenceDataset`` / ``ImagesDataset`` do (``convert('L')`` when ``label_nc != 0``)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("L", "P", "I", "I;16"):
                img = img.convert("L")
            arr = np.array(img)
    except UnidentifiedImageError:
        raise ValueError(f"{path}: not a recognised image format") from None
    except (OSError, SyntaxError, EOFError) as e:
        raise ValueError(f"{path}: corrupt or truncated label map ({e})") from None
    return torch.from_numpy(arr.astype(np.int64))


def resize_crop_nearest(x, size):
    """[B, C, H, W] centre-cropped to the aspect of size and resized with nearest neighbour (label
    maps: classes are never blended)."""
    h, w = size
    H, W = x.shape[-2:]
    ch, cw = (round(W * h / w), W) if H * w > W * h else (H, round(H * w / h))
    top, left = (H - ch) // 2, (W - cw) // 2
    x = x[..., top : top + ch, left : left + cw]
    return x if (ch, cw) == (h, w) else torch.nn.functional.interpolate(x, size=(h, w), mode="nearest")


class ShardSampler(torch.utils.data.Sampler):
    """This rank's share of an order that depends only on (seed, epoch).

    The order is a permutation seeded by (seed, epoch) (``shuffle``) or 0..n-1; rank r takes
    every ``world_size``-th item from r, so step b of all ranks together holds exactly the
    items of step b of one process with a ``world_size`` times larger batch: a DDP run and a
    1-process run over the same global batch see the same data. Seeding per epoch (Lightning
    calls ``set_epoch``) also makes a resumed run see the batches an uninterrupted one would.
    The tail that does not divide evenly over the ranks is dropped.
    """

    def __init__(self, length: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        self.length, self.seed, self.shuffle = length, seed, shuffle
        self.rank, self.world_size, self.epoch = rank, world_size, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.length, generator=g)
        else:
            order = torch.arange(self.length)
        return iter(order[: len(self) * self.world_size][self.rank:: self.world_size].tolist())

    def __len__(self):
        return self.length // self.world_size


class _PairedDataModule(pl.LightningDataModule):
    def __init__(self, batch_size: int, num_workers: int, seed: int, shuffle: bool = True):
        super().__init__()
        self.batch_size, self.num_workers, self.seed, self.shuffle = batch_size, num_workers, seed, shuffle
        self.datasets: dict[str, Dataset] = {}

    def _loader(self, split):
        if split not in self.datasets:
            raise ValueError(f"no {split} data configured for {type(self).__name__}")
        train = split == "train"
        data = self.datasets[split]
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if train and len(data) // world < self.batch_size:  # drop_last would train on nothing
            raise ValueError(f"data: the training split has {len(data)} images for {world} process(es), fewer "
                             f"than one batch of data.batch_size={self.batch_size} each; add images or lower "
                             "data.batch_size")
        return DataLoader(
            data,
            batch_size=self.batch_size,
            sampler=ShardSampler(len(data), self.seed, train and self.shuffle, rank, world),
            drop_last=train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self):
        return self._loader("train")

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        return self._loader("test")


class ImageDataModule(_PairedDataModule):
    """Image folders -> ``{"x": input [B, input_nc, H, W], "y": target [B, 3, H, W]}`` batches.

    Give either explicit train_dir (and optional val_dir / test_dir) or a single root that is split
    deterministically by ``split`` ratios with ``seed``. Only training images are flipped. task: a
    target-derived task from ``ganinv.data.tasks`` (x = task(y)); None for plain inversion (x = y).
    train_source_dir / val_source_dir: folders of paired inputs (sketches, label maps) for train_dir /
    val_dir, paired by sorted relative path (:class:`PairedDataset` ``source``), as the official
    ``train_source_root`` / ``test_source_root`` of pSp's ``configs/data_configs.py``; they need
    explicit train_dir / val_dir, and targets are not flipped (the source would not follow).
    """

    def __init__(
        self,
        train_dir: str | None = None,
        val_dir: str | None = None,
        test_dir: str | None = None,
        root: str | None = None,
        split: Sequence[float] = (0.9, 0.05, 0.05),
        size: int | tuple[int, int] = 256,
        batch_size: int = 8,
        num_workers: int = 0,
        flip: bool = True,
        task=None,
        seed: int = 0,
        shuffle: bool = True,
        train_source_dir: str | None = None,
        val_source_dir: str | None = None,
    ):
        super().__init__(batch_size, num_workers, seed, shuffle)
        sources = {"train_source_dir": (train_source_dir, train_dir), "val_source_dir": (val_source_dir, val_dir)}
        for key, (source, target) in sources.items():
            if source is not None and target is None:
                raise ValueError(f"data.{key}={source} needs data.{key.replace('source_', '')} (its paired "
                                 "target folder); root= splitting does not pair source folders")
        self.sources = {"train": train_source_dir, "val": val_source_dir, "test": None}
        if (root is None) == (train_dir is None and val_dir is None and test_dir is None):
            raise ValueError("give either root (split automatically) or train_dir/val_dir/test_dir, not both")
        self.dirs = {"train": train_dir, "val": val_dir, "test": test_dir}
        self.root, self.split, self.size, self.flip, self.task = root, tuple(split), size, flip, task

    def setup(self, stage=None):
        if self.datasets:
            return
        if self.root is not None:
            plain = ImageFolder(self.root, self.size)
            flipped = ImageFolder(self.root, self.size, flip=self.flip)
            parts = split_indices(len(plain), self.split, self.seed)
            for name, idx in zip(SPLITS, parts):
                if idx:
                    base = Subset(flipped if name == "train" else plain, idx)
                    self.datasets[name] = PairedDataset(base, self.task, name, self.seed)
        else:
            for name, folder in self.dirs.items():
                if folder is not None:
                    source = self.sources[name]
                    flip = self.flip and name == "train" and source is None
                    base = ImageFolder(folder, self.size, flip=flip)
                    self.datasets[name] = PairedDataset(base, self.task, name, self.seed, source=source)


class ProceduralDataModule(_PairedDataModule):
    """Procedural faces -> ``{"x", "y", "factors" [B, F]}`` batches; nothing to download.

    Each split is a ``ProceduralFaces`` stream with the same seed, so splits never share items.
    """

    def __init__(
        self,
        size: int = 64,
        train_length: int = 50000,
        val_length: int = 500,
        test_length: int = 500,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        task=None,
        shuffle: bool = True,
    ):
        super().__init__(batch_size, num_workers, seed, shuffle)
        self.size, self.task = size, task
        self.lengths = {"train": train_length, "val": val_length, "test": test_length}

    def setup(self, stage=None):
        if self.datasets:
            return
        for name, length in self.lengths.items():
            if length > 0:
                base = ProceduralFaces(length, self.size, self.seed, name)
                self.datasets[name] = PairedDataset(base, self.task, name, self.seed)
