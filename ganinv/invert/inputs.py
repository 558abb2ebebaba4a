"""invert.py's inputs: the walk of the input folder (:func:`find_inputs`) and the loading of each
file (:func:`load_inputs`): RGB images [3, S, S] in [-1, 1], FFHQ-aligned faces
(:mod:`ganinv.data.align`), or an image-to-image pSp checkpoint's official inference transform
(:class:`InputTransform`). One file that cannot be used is that file's error, never the run's."""
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..data.align import align_face
from ..data.folder import display_path, image_keys, load_label_map, resize_crop_nearest, walk_images
from ..data.images import IMAGE_EXTENSIONS, load_image, open_image, resize_crop
from ..data.tasks import OneHotLabels, SuperResolution
from ..methods.encoder import input_display
from ..outputs import is_output_folder
from .settings import parse_rows


class Inputs(NamedTuple):
    """The images of one run: ``paths`` and their output ``keys`` (:func:`ganinv.data.folder.image_keys`),
    ``problems`` (inputs that cannot be used, reported as unreadable) and ``notes`` (renamed keys,
    excluded and already-walked folders), all shown in the summary."""

    paths: list
    keys: list
    problems: list
    notes: list


def find_inputs(path, output=None):
    """An image file or a folder (walked recursively, see :func:`ganinv.data.folder.walk_images`) ->
    :class:`Inputs`. The output folder and any earlier ganinv output folder (one holding a ganinv
    metrics.csv) below the input folder are left out, so outputs are never read back as inputs;
    an output folder that is the input folder itself is refused."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise ValueError(f"input={path}: not an image file ({', '.join(IMAGE_EXTENSIONS)})")
        return Inputs([path], [path.stem], [], [])
    if not path.exists():
        raise FileNotFoundError(f"input={path}: no such file or folder")
    if output is not None and os.path.realpath(output) == os.path.realpath(path):
        raise ValueError(f"output={output}: is the input folder itself; its outputs would be read as inputs "
                         "on the next run: choose another output folder")
    found = walk_images(path, exclude=[output] if output is not None else [], is_excluded=is_output_folder)
    if not found.paths and not found.problems:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {path}")
    keys, renames = image_keys([p.relative_to(path).as_posix() for p in found.paths])
    notes = list(found.notes)
    if renames:  # the first ten; a folder of .png/.jpg twins would otherwise fill the summary line
        more = f", and {len(renames) - 10} more" if len(renames) > 10 else ""
        notes.append(f"{len(renames)} output keys made unique ({', '.join(renames[:10])}{more})")
    return Inputs(found.paths, keys, found.problems, notes)


def collect_inputs(path):
    """An image file or a folder -> (paths, keys); see :func:`find_inputs`."""
    found = find_inputs(path)
    return found.paths, found.keys


class I2IInput(NamedTuple):
    """One image-to-image input: ``x`` the encoder input [C, H, W], ``shown`` its picture [3, H, W]
    in [-1, 1], ``target`` the RGB image to score against (super-resolution: the original) or None."""

    x: torch.Tensor
    shown: torch.Tensor
    target: object


class InputTransform:
    """The official inference transform of an image-to-image pSp checkpoint (pSp
    ``configs/transforms_config.py`` ``transform_inference``, its input read as
    ``datasets/inference_dataset.py``: ``convert('L')`` when ``label_nc != 0``), chosen from the
    checkpoint's ``label_nc`` / ``input_nc`` / ``dataset_type``:

    - ``sketch`` (label_nc 1, ``SketchToImageTransforms``): 1 channel, ``Resize`` + ``ToTensor``,
      so values in [0, 1], not normalised;
    - ``labels`` (label_nc > 1, ``SegToImageTransforms``): integer class-index PNGs
      (:func:`ganinv.data.folder.load_label_map`) -> one-hot ``label_nc`` channels
      (``augmentations.ToOneHot``); resized with nearest neighbour (the official ``Resize`` is
      bilinear on the label image, which blends class indices at borders);
    - ``superres`` (``dataset_type`` ``celebs_super_resolution``, ``SuperResTransforms``): the RGB
      image at the input size, downsampled by one factor (``augmentations.BilinearResize``: pSp's
      bicubic filter) and upsampled back (``Resize``), in [-1, 1]
      (:meth:`ganinv.data.tasks.SuperResolution.degrade`).

    Images are centre-cropped to the input's aspect before resizing (invert.py's rule; the
    official squashes them). ``kind`` is ``rgb`` for every other checkpoint (the usual RGB path).
    """

    def __init__(self, inverter, resize_factors, name):
        opts, self.label_nc = inverter.opts, inverter.label_nc
        self.size = tuple(inverter.input_size)
        self.factor = None
        if self.label_nc > 1:
            self.kind = "labels"
        elif self.label_nc == 1 or inverter.input_nc == 1:
            self.kind = "sketch"
        elif opts.get("dataset_type") == "celebs_super_resolution":
            self.kind = "superres"
            given = resize_factors if resize_factors is not None else opts.get("resize_factors")
            factors = parse_rows(given, "resize_factors", minimum=1) if given is not None else []
            if len(factors) != 1:
                shown = "" if given is None else given
                raise ValueError(f"resize_factors={shown}: {name} is a celebs_super_resolution checkpoint;"
                                 " choose one downsampling factor, e.g. resize_factors=4 (the official "
                                 "inference takes a single factor)")
            self.factor = factors[0]
        else:
            self.kind = "rgb"
        if self.kind != "rgb" and inverter.input_nc != (self.label_nc if self.kind == "labels" else
                                                        1 if self.kind == "sketch" else 3):
            raise ValueError(f"{name}: opts label_nc={self.label_nc} but the encoder takes {inverter.input_nc} "
                             "input channels")

    def load(self, path):
        """An input file -> :class:`I2IInput` (a one-line ValueError naming the file when unusable)."""
        if self.kind == "labels":
            labels = load_label_map(path)
            if labels.numel() and int(labels.max()) >= self.label_nc:
                raise ValueError(f"{display_path(path)}: label {int(labels.max())} is not a class index below "
                                 f"label_nc={self.label_nc}; give integer label-map PNGs (class per pixel)")
            labels = resize_crop_nearest(labels[None, None].float(), self.size)[0, 0].long()
            x = OneHotLabels(self.label_nc)(labels)
            return I2IInput(x, input_display(x[None], self.label_nc)[0], None)
        if self.kind == "sketch":
            with warnings.catch_warnings():  # a greyscale file is what a sketch folder holds
                warnings.filterwarnings("ignore", message=r".*converted greyscale")
                gray = open_image(path).convert("L")  # official: Image.open(path).convert('L')
            x = resize_crop(torch.from_numpy(np.array(gray, dtype=np.float32))[None] / 255, self.size).clamp(0, 1)
            return I2IInput(x, (x * 2 - 1).expand(3, -1, -1), None)
        y = load_image(path, self.size)
        x = SuperResolution((self.factor,)).degrade(y[None], self.factor)[0]
        return I2IInput(x, x, y)


def load_inputs(paths, size, align, transform=None):
    """Load each file (FFHQ-aligned with ``align``; through an image-to-image checkpoint's
    :class:`InputTransform` when given, then each entry is an :class:`I2IInput`) -> (list of
    [3, size, size] or None, errors).
    Any failure of one file (decode, alignment, an unexpected exception from an image plugin) is
    that file's: it becomes one error line naming the file and the other files still load.
    Conversion warnings (RGBA, greyscale, 16-bit, ...) are printed as one line each on stderr."""
    images, errors = [], []
    for path in paths:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if transform is not None:
                    images.append(transform.load(path))
                else:
                    images.append(align_face(path, size) if align else load_image(path, size))
            for w in caught:
                print(f"warning: {w.message}", file=sys.stderr)
        except ImportError:
            raise
        except Exception as e:  # noqa: BLE001 -- per-image isolation: one bad file never stops the run
            images.append(None)
            text = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
            if not isinstance(e, (ValueError, OSError)):
                text = f"{type(e).__name__}: {text}"
            name = display_path(path)
            errors.append(text if name in text else f"{name}: {text}")
    return images, errors


@dataclass
class Batch:
    """The loaded images of one batch: their ``keys``, ``x`` the encoder inputs [n, C, S, S],
    ``pictures`` [n, 3, S, S] in [-1, 1] (shown in side-by-side files) and ``targets`` the RGB
    images [n, 3, S, S] scored against, or None (sketches and label maps have no RGB target)."""

    keys: list
    x: Tensor
    pictures: Tensor
    targets: Tensor | None


def stack_batch(loaded, transform=None):
    """[(key, image)] from :func:`load_inputs` (without the files that failed) -> :class:`Batch`;
    with an image-to-image ``transform`` each image is an :class:`I2IInput`."""
    keys = [k for k, _ in loaded]
    if transform is None:
        x = torch.stack([img for _, img in loaded])
        return Batch(keys, x, x, x)
    targets = [img.target for _, img in loaded]
    return Batch(keys, torch.stack([img.x for _, img in loaded]), torch.stack([img.shown for _, img in loaded]),
                 torch.stack(targets) if targets[0] is not None else None)
