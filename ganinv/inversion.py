"""The body of invert.py: walk the input, invert it batch by batch, write every output.

Per image, under ``output``: ``reconstructions/<key>.png`` (generator resolution),
``latents/<key>.pt`` and ``.npy`` (W+ [n_latent, D]), ``noises/<key>.pt`` (per-image noise maps,
when the method optimised them and no PTI followed), ``generators/<key>.pt`` (refine=pti: the
tuned generator, rosinality layout), ``aligned/<key>.png`` (align=true). For the run:
``metrics.csv`` (one row per image), ``grid.png`` (input | reconstruction) and a summary line.

Image-to-image pSp checkpoints (sketch, segmentation, super-resolution; official or ganinv
exports) read their inputs as the official ``configs/transforms_config.py`` ``transform_inference``
of their ``dataset_type`` does (:class:`InputTransform`). ``latent_mask`` adds
``multimodal/<key>.png`` / ``.pt`` (``n_outputs`` style-mixed outputs, :meth:`InversionRun.multimodal`,
as ``scripts/style_mixing.py``); ``couple_outputs`` adds ``couples/<key>.png`` (input | output, as
``scripts/inference.py --couple_outputs``); ``resize_outputs`` writes every output at 256 px as
the official scripts do.

``<key>`` is the image's path relative to the input folder without its extension, made unique by
:func:`ganinv.data.folder.image_keys` (``x.png``, ``x.jpg``, ``x_png.png`` -> ``x_png~2``,
``x_jpg``, ``x_png``; the same keys every run, whatever the listing order; renamed keys are
listed in the summary). The walk (:func:`ganinv.data.folder.walk_images`) follows linked
folders once and reports repeats, and leaves out the output folder and any earlier ganinv output
folder inside the input folder, so outputs are never read as inputs.

Per-image isolation: an input that cannot be used -- a file name that is not UTF-8, a broken
link, a file that does not decode, a face that alignment cannot find -- is listed in the summary
as unreadable and skipped; an inversion that diverges (non-finite latent or image) is listed and
not written; the other images are inverted. The run fails (exit 2) only when no image could be.

Files, the lock and write faults: :mod:`ganinv.outputs` (atomic writes, one run per output folder,
a write fault is one line naming the path with exit 2, garbage metrics.csv rows ignored and
reported). A re-run skips images whose row and files exist.
"""
import contextlib
import functools
import logging
import math
import os
import sys
import time
import warnings
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from .checkpoints.stylegan import save_generator
from .data.folder import display_path, image_keys, load_label_map, resize_crop_nearest, walk_images
from .data.images import IMAGE_EXTENSIONS, load_image, open_image, resize_crop, to_tensor
from .data.tasks import OneHotLabels, SuperResolution
from .editing.edits import Edit, edit_strip, parse_edit
from .methods.base import image_grid
from .methods.encoder import input_display
from .methods.psp import mix_styles
from .methods.targets import fit_to, w_statistics
from .outputs import (
    COLUMNS,  # noqa: F401 -- still importable as ganinv.inversion.COLUMNS
    WRITE_ERRNOS,
    OutputError,
    Outputs,
    RunLock,
    describe_os_error,
    is_output_folder,
    writing,
)
from .runner import one_line_errors

METHODS = ("optimize", "idinvert")
OFFICIAL_OUTPUT_SIZE = 256  # pSp scripts/inference.py and style_mixing.py save result.resize((256, 256))
DEVICES = ("auto", "cpu", "cuda", "gpu", "mps")
ALIGN_HINT = "align=true needs the optional face-alignment extra: pip install 'ganinv[align]'"


# -- FFHQ face alignment (NVlabs/ffhq-dataset, as pSp scripts/align_all_parallel.py) ------
@functools.lru_cache(maxsize=1)
def _dlib_models():
    try:
        import dlib
        import face_recognition_models
    except ImportError:
        raise ImportError(ALIGN_HINT) from None
    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())
    return dlib.get_frontal_face_detector(), predictor


def face_landmarks(image, name="image"):
    """dlib's 68 landmarks [68, 2] (x, y) of the face in an RGB uint8 array [H, W, 3]. With
    several faces the last detection is used, as the official script does."""
    detector, predictor = _dlib_models()
    faces = detector(image, 1)
    if len(faces) == 0:
        raise ValueError(f"{name}: no face found for alignment")
    shape = predictor(image, faces[len(faces) - 1])
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


def ffhq_quad(landmarks):
    """The FFHQ crop quadrilateral [4, 2] (corners) and its side length from 68 landmarks:
    centred 0.1 of the way from the eyes to the mouth, oriented by eye-to-eye minus the
    rotated eye-to-mouth vector, side max(4·|eye-eye|, 3.6·|eye-mouth|)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    eye_left, eye_right = lm[36:42].mean(0), lm[42:48].mean(0)
    eye_avg, eye_to_eye = (eye_left + eye_right) * 0.5, eye_right - eye_left
    eye_to_mouth = (lm[48] + lm[54]) * 0.5 - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y]), np.hypot(*x) * 2


def ffhq_align(img, landmarks, output_size, transform_size=None):
    """Crop, pad (reflect + blur + median fill) and warp a PIL RGB image to the FFHQ framing of
    its face, ``output_size`` px square. transform_size defaults to output_size, as pSp/e4e
    (the FFHQ dataset itself warped at 4096 and downsampled to 1024)."""
    transform_size = transform_size or output_size
    quad, qsize = ffhq_quad(landmarks)
    shrink = int(np.floor(qsize / output_size * 0.5))
    if shrink > 1:
        small = (int(np.rint(img.size[0] / shrink)), int(np.rint(img.size[1] / shrink)))
        img = img.resize(small, Image.LANCZOS)
        quad, qsize = quad / shrink, qsize / shrink
    border = max(int(np.rint(qsize * 0.1)), 3)
    lo, hi = np.floor(quad.min(0)).astype(int), np.ceil(quad.max(0)).astype(int)
    crop = (max(lo[0] - border, 0), max(lo[1] - border, 0),
            min(hi[0] + border, img.size[0]), min(hi[1] + border, img.size[1]))
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad = quad - crop[0:2]
    lo, hi = np.floor(quad.min(0)).astype(int), np.ceil(quad.max(0)).astype(int)
    pad = (max(-lo[0] + border, 0), max(-lo[1] + border, 0),
           max(hi[0] - img.size[0] + border, 0), max(hi[1] - img.size[1] + border, 0))
    if max(pad) > border - 4:
        import scipy.ndimage

        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        arr = np.pad(np.float32(img), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect")
        h, w, _ = arr.shape
        yy, xx, _ = np.ogrid[:h, :w, :1]
        mask = np.maximum(1.0 - np.minimum(np.float32(xx) / pad[0], np.float32(w - 1 - xx) / pad[2]),
                          1.0 - np.minimum(np.float32(yy) / pad[1], np.float32(h - 1 - yy) / pad[3]))
        blurred = scipy.ndimage.gaussian_filter(arr, [qsize * 0.02, qsize * 0.02, 0])
        arr += (blurred - arr) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
        arr += (np.median(arr, axis=(0, 1)) - arr) * np.clip(mask, 0.0, 1.0)
        img = Image.fromarray(np.uint8(np.clip(np.rint(arr), 0, 255)), "RGB")
        quad = quad + pad[:2]
    img = img.transform((transform_size, transform_size), Image.QUAD, (quad + 0.5).flatten(), Image.BILINEAR)
    if output_size < transform_size:
        img = img.resize((output_size, output_size), Image.LANCZOS)
    return img


def align_face(path, size):
    """An image file -> its FFHQ-aligned face [3, size, size] in [-1, 1] (needs the align extra)."""
    img = open_image(path)
    return to_tensor(ffhq_align(img, face_landmarks(np.asarray(img), str(path)), size))


# -- inputs and outputs ---------------------------------------------------------------------
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


# -- metrics --------------------------------------------------------------------------------
class ImageMetrics:
    """Per-image MSE, PSNR, SSIM (:mod:`ganinv.metrics.image`) and LPIPS when its pretrained
    network is available (else blank, with the reason kept for the summary)."""

    def __init__(self, lpips_net, device):
        from .losses import LPIPSLoss

        self.device, self.lpips, self.lpips_missing = device, None, None
        try:
            self.lpips = LPIPSLoss(net=lpips_net, pnet_rand=False).to(device)
        except FileNotFoundError as e:
            self.lpips_missing = str(e)

    def __call__(self, recon, target):
        """Reconstructions [B, 3, R, R] (pooled to the target size) and targets [B, 3, S, S] ->
        one dict of floats per image."""
        from .metrics.image import compute_image_metrics

        target = target.to(self.device)
        recon = fit_to(recon.to(self.device), target.shape[-2:])
        out = compute_image_metrics(recon, target, lpips=self.lpips)
        return [{k: float(v[i]) for k, v in out.items()} for i in range(len(target))]


# -- configuration ----------------------------------------------------------------------------
def _positive_int(cfg, name, minimum=1, prefix=""):
    value = cfg.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{prefix}{name}={value}: expected an integer >= {minimum}")
    return value


def check_device(name):
    """device= names an accelerator this machine has (one line otherwise, before anything is built)."""
    if name in ("cuda", "gpu") and not torch.cuda.is_available():
        raise ValueError(f"device={name}: no CUDA GPU is available here (torch.cuda.is_available() is False); "
                         "use device=cpu or device=auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device=mps: Apple's MPS backend is not available here; use device=cpu or device=auto")


def check_config(cfg):
    """One-line ValueError/FileNotFoundError naming the key for a bad setting, before anything is
    built or written: paths, choices, integers (``seed``, ``batch_size``, the preset's
    ``n_mean_latent`` and ``steps``), a ``device`` this machine lacks, edit specs."""
    for key in ("input", "output"):
        if OmegaConf.is_missing(cfg, key) or cfg.get(key) in (None, ""):
            raise ValueError(f"{key}=PATH is required (python invert.py input=DIR_OR_FILE output=DIR)")
    method = str(cfg.inversion_method)
    if method not in METHODS and not Path(method).is_file():
        raise FileNotFoundError(f"method={method}: not optimize, idinvert or an existing encoder checkpoint")
    if not str(cfg.inversion.get("_target_", "")).endswith("OptimizationInversion"):
        raise ValueError("inversion= must name an optimisation preset (projector, image2stylegan, "
                         "image2stylegan_pp, idinvert); PTI is refine=pti")
    if method == "optimize" and cfg.init not in ("mean", "random", "encoder"):
        raise ValueError(f"init={cfg.init}: expected mean, random or encoder")
    encoder = cfg.get("inversion_encoder")
    if (method == "idinvert" or (method == "optimize" and cfg.init == "encoder")) and not encoder:
        raise ValueError(f"method={method}{' init=encoder' if method == 'optimize' else ''} needs "
                         "encoder=PATH (an encoder checkpoint)")
    if encoder and not Path(encoder).is_file():
        raise FileNotFoundError(f"encoder={encoder}: no such file")
    if cfg.get("restyle_iters") is not None:
        _positive_int(cfg, "restyle_iters")
    if cfg.get("refine") not in (None, "pti"):
        raise ValueError(f"refine={cfg.refine}: expected pti (or leave it unset)")
    _positive_int(cfg, "batch_size")
    _positive_int(cfg, "grid_max", 0)
    if cfg.get("resize") is not None:
        _positive_int(cfg, "resize", 8)
    if cfg.device not in DEVICES:
        raise ValueError(f"device={cfg.device}: expected one of {', '.join(DEVICES)}")
    check_device(cfg.device)
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed={seed}: expected an integer in [0, 2^32)")
    preset_key = "inversion" if method == "optimize" else "idinvert" if method == "idinvert" else None
    if preset_key is not None:
        _positive_int(cfg[preset_key], "n_mean_latent", prefix=f"{preset_key}.")
    if not isinstance(cfg.align, bool):
        raise ValueError(f"align={cfg.align}: expected true or false")
    for key in ("resize_outputs", "couple_outputs"):
        if not isinstance(cfg.get(key, False), bool):
            raise ValueError(f"{key}={cfg.get(key)}: expected true or false")
    if cfg.get("n_outputs") is not None:
        _positive_int(cfg, "n_outputs")
    alpha = cfg.get("mix_alpha")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1):
        raise ValueError(f"mix_alpha={alpha}: expected a number in [0, 1] (or leave it unset)")
    if (cfg.get("n_outputs") or 1) > 1 and cfg.get("latent_mask") is None:
        raise ValueError(f"n_outputs={cfg.n_outputs} needs latent_mask=ROWS, the W+ rows to mix (official "
                         "style_mixing.py --latent_mask, e.g. latent_mask='8,9,10,11,12,13,14,15,16,17')")
    if cfg.get("latent_mask") is not None:
        parse_rows(cfg.latent_mask, "latent_mask")
    if cfg.get("resize_factors") is not None:
        parse_rows(cfg.resize_factors, "resize_factors", minimum=1)
    for spec in edit_specs(cfg):
        parse_edit(spec)


def edit_specs(cfg):
    """``edit=`` as a list of spec strings (one string, a list, or nothing)."""
    edit = cfg.get("edit")
    if edit is None:
        return []
    return [str(edit)] if isinstance(edit, str) else [str(e) for e in edit]


def edit_tag(spec):
    """A folder name for an edit: ``interfacegan_age``, ``ganspace_54_7_8``, ``sefa_0``."""
    s = parse_edit(spec)
    if s.kind == "interfacegan":
        return f"interfacegan_{Path(s.path).stem}"
    if s.kind == "ganspace":
        return f"ganspace_{s.index}_{s.start}_{s.end}"
    return f"sefa_{s.index}"


def torch_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device("cuda" if name == "gpu" else name)


class InverterEncoder(nn.Module):
    """An inverter's ``encode`` (images -> W+; ``n_iters`` ReStyle passes) as the encoder callable
    OptimizationInversion takes; a submodule, so it follows the LightningModule to its device."""

    def __init__(self, inverter, n_iters=None):
        super().__init__()
        self.inverter, self.n_iters = inverter, n_iters

    def forward(self, x):
        return self.inverter.encode(x, n_iters=self.n_iters)


def build_loggers(cfg):
    """The config's loggers, once for the whole run; a CSV logger without a version gets this
    run's start time as its version, so a re-run never overwrites earlier loss curves."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    loggers = []
    for c in (cfg.get("logger") or {}).values():
        if c is not None:
            loggers.append(instantiate(c, **({"version": stamp} if c.get("version", None) == "" else {})))
    config = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(config)
    return loggers


def generator_given(cfg):
    """Whether the user chose a generator (``generator=checkpoint|random`` or a ``generator.path``
    other than the embedded one) rather than leaving the default."""
    g = cfg.generator
    if not str(g.get("_target_", "")).endswith("load_generator"):
        return True
    default = Path(str(cfg.paths.assets)) / "procedural64.pt"
    return os.path.realpath(str(g.path)) != os.path.realpath(default)


def check_generator_fits(generator, own, cfg, encoder_path):
    """The user's generator must take the codes the encoder gives: same W+ shape [n_latent, D]."""
    mine = (generator.n_latent, generator.style_dim)
    theirs = (own.n_latent, own.style_dim)
    if mine != theirs:
        given = f"generator.path={cfg.generator.path}" if "path" in cfg.generator else "generator="
        raise ValueError(f"{given} takes W+ codes [{mine[0]}, {mine[1]}], but the encoder {encoder_path} gives "
                         f"[{theirs[0]}, {theirs[1]}] (for the generator inside it); drop generator= to use "
                         "the encoder's own generator, or give an encoder trained for this one")


def parse_rows(value, key, minimum=0, limit=None):
    """latent_mask / resize_factors as the official comma string ("8,9,10"), a list or one integer
    -> a list of integers (each >= minimum and < limit); a one-line error naming the key."""
    items = str(value).split(",") if isinstance(value, str) else list(value) if hasattr(value, "__iter__") else [value]
    try:
        rows = [int(str(v).strip()) for v in items]
    except ValueError:
        raise ValueError(f"{key}={value}: expected integers, e.g. {key}='8,9,10'") from None
    bad = [r for r in rows if r < minimum or (limit is not None and r >= limit)]
    if not rows or bad:
        span = f"[{minimum}, {limit})" if limit is not None else f">= {minimum}"
        raise ValueError(f"{key}={value}: every entry must lie in {span}" + (f" (got {bad})" if bad else ""))
    return rows


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


def resize_output(img, size=OFFICIAL_OUTPUT_SIZE):
    """Outputs [B, 3, S, S] at ``size`` px, as the official scripts save them: larger images average-
    pooled (pSp's ``face_pool``), smaller ones upsampled bilinearly (PIL ``resize`` of ``tensor2im``)."""
    if img.shape[-1] == size:
        return img
    if img.shape[-1] > size:
        return F.adaptive_avg_pool2d(img, (size, size))
    return F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False).clamp(-1, 1)


def panel(img, like, nearest=False):
    """An input picture [3, h, w] resized to the size of ``like`` [3, H, W], for side-by-side files."""
    if tuple(img.shape[-2:]) == tuple(like.shape[-2:]):
        return img
    mode = dict(mode="nearest") if nearest else dict(mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(img[None], size=tuple(like.shape[-2:]), **mode)[0].clamp(-1, 1)


def key_generator(seed, key):
    """The random-number generator of one image's style-mixing draws: seeded by (run seed, output
    key), so an image's multimodal outputs do not depend on the batch or the listing order."""
    state = np.random.SeedSequence([seed, zlib.crc32(key.encode("utf-8"))]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


# -- the run ----------------------------------------------------------------------------------
class InversionRun:
    """Builds the networks once, then inverts batches of (key, image) pairs.

    The generator: the config's ``generator`` for method=optimize|idinvert without an encoder.
    With an encoder checkpoint (method=PATH, init=encoder, method=idinvert) the checkpoint's own
    generator is used unless the user chose one (:func:`generator_given`): then the user's
    generator is honoured -- a researcher naming a generator means to invert into it (e.g. a
    fine-tuned G with the encoder of its parent as the initialisation) -- after checking that it
    takes the encoder's codes (:func:`check_generator_fits`), and never replaced silently.
    """

    def __init__(self, cfg):
        self.cfg = cfg
        self.device = torch_device(cfg.device)
        method = str(cfg.inversion_method)
        self.method = method if method in METHODS else "encoder"
        encoder_path = cfg.inversion_encoder if self.method != "encoder" else method
        uses_encoder = self.method != "optimize" or cfg.init == "encoder"
        self.inverter = None
        if uses_encoder:
            from .checkpoints.inverter import load_inverter

            self.inverter = load_inverter(encoder_path, device=self.device).requires_grad_(False)
        if self.inverter is not None:
            self.generator = self.inverter.generator
            if generator_given(cfg):
                self.generator = instantiate(cfg.generator)
                check_generator_fits(self.generator, self.inverter.generator, cfg, encoder_path)
            self.encoder = InverterEncoder(self.inverter, cfg.restyle_iters)
        else:
            self.generator, self.encoder = instantiate(cfg.generator), None
        self.generator.requires_grad_(False).eval()
        self.transform = None
        if self.inverter is not None:
            transform = InputTransform(self.inverter, cfg.get("resize_factors"), encoder_path)
            if transform.kind != "rgb":
                if self.method != "encoder" or cfg.get("refine") is not None or cfg.align:
                    raise ValueError(f"{encoder_path}: an image-to-image checkpoint ({transform.kind} inputs) runs as "
                                     "method=PATH only, without refine=, align= or method=optimize/idinvert (they fit "
                                     "RGB targets)")
                self.transform = transform
        self.latent_mask, self.n_outputs = None, int(cfg.get("n_outputs") or 1)
        if cfg.get("latent_mask") is not None:
            if self.method != "encoder":
                raise ValueError("latent_mask= mixes an encoder's codes (pSp style mixing): it needs method=PATH")
            self.latent_mask = parse_rows(cfg.latent_mask, "latent_mask", limit=self.generator.n_latent)
        self.size, full = cfg.resize or self.generator.size, self.generator.size
        if self.size > full or full % self.size:
            raise ValueError(f"resize={self.size}: must divide the generator resolution {full}")
        self.optimize = None
        if self.method != "encoder":
            preset = cfg.inversion if self.method == "optimize" else cfg.idinvert
            extra = {"init": cfg.init} if self.method == "optimize" else {}
            self.optimize = functools.partial(instantiate(preset), **extra)
            self.w_stats = w_statistics(self.generator, preset.n_mean_latent, seed=cfg.seed)
        self.pti = instantiate(cfg.pti) if cfg.get("refine") == "pti" else None
        self.edits = {edit_tag(spec): Edit(spec, self.generator) for spec in edit_specs(cfg)}
        self.loggers = None

    def fit(self, module):
        if self.loggers is None:
            self.loggers = build_loggers(self.cfg)
        trainer = instantiate(self.cfg.trainer, logger=self.loggers or False)
        trainer.fit(module)
        return trainer.is_global_zero

    def render_edits(self, ws, generator, strips, index):
        """Edit strips of codes ws [k, n_latent, D] with ``generator`` into strips[tag][index]."""
        generator.to(self.device)
        for tag, edit in self.edits.items():
            images = edit_strip(generator, ws.to(self.device), edit).float().cpu()  # [k, S, 3, R, R]
            for row, i in enumerate(index):
                strips[tag][i] = images[row]

    @torch.no_grad()
    def multimodal(self, ws, keys):
        """pSp's style mixing (``scripts/style_mixing.py``, ``models/psp.py`` ``forward`` with
        ``latent_mask`` / ``inject_latent`` / ``alpha``): per image, ``n_outputs`` draws z ~ N(0, I)
        (seeded by (seed, key), :func:`key_generator`), each mapped to a w and broadcast
        (``net(z, input_code=True, return_latents=True)``); the ``latent_mask`` rows of the image's
        codes become that w (or ``mix_alpha``·w + (1 − mix_alpha)·code) and are decoded. Noise is the
        generator's constant noise (the official style_mixing.py randomises it).
        ws [n, n_latent, D] -> [(images [K, 3, R, R], codes [K, n_latent, D])] per image."""
        g, out = self.generator.to(self.device), []
        for w, key in zip(ws, keys):
            z = torch.randn(self.n_outputs, g.style_dim, generator=key_generator(self.cfg.seed, key))
            inject = g.broadcast(g.mapping(z.to(self.device)))
            codes = mix_styles(w[None].to(self.device).expand(self.n_outputs, -1, -1), inject, self.latent_mask,
                               self.cfg.get("mix_alpha"))
            out.append((g.synthesis(codes, noise_mode="const").float().cpu(), codes.float().cpu()))
        return out

    def extra_files(self):
        """(kind, suffix) of the files beyond the reconstruction that every image gets."""
        extra = [("multimodal", ".png"), ("multimodal", ".pt"), ("multimodal", ".npy")] if self.latent_mask else []
        return extra + ([("couples", ".png")] if self.cfg.get("couple_outputs") else [])

    def invert(self, x, keys, name):
        """x [n, 3, S, S] -> (is_global_zero, latents [n, n_latent, D], images [n, 3, R, R],
        noise maps per image or None, generator file per image or None, edit strips
        {tag: [n strips [S, 3, R, R]]}). Edits use the PTI-tuned generator when refining. Every rank
        runs every stage (DDP); only global rank zero writes files."""
        main, noises, generators = True, None, None
        strips = {tag: [None] * len(keys) for tag in self.edits}
        if self.optimize is not None:
            encoder = self.encoder
            module = self.optimize(generator=self.generator, targets=x, encoder=encoder, keys=keys,
                                   w_stats=self.w_stats, name=name)
            main = self.fit(module)
            ws, images = module.result["latents"], module.result["images"]
            if module.result["noises"] is not None:
                noises = [[n[i:i + 1] for n in module.result["noises"]] for i in range(len(keys))]
        else:
            self.generator.to(self.device)
            with torch.no_grad():
                ws = self.encoder(x.to(self.device)).float()
                images = self.generator.synthesis(ws, noise_mode="const").float()
            ws, images = ws.cpu(), images.cpu()
        if self.pti is not None:
            generators, noises = [None] * len(keys), None  # the tuned G has its own (constant) noise
            every = range(len(keys))
            for group in [[i] for i in every] if self.cfg.refine_per_image else [list(every)]:
                module = self.pti(generator=self.generator, targets=x[group], pivots=ws[group],
                                  keys=[keys[i] for i in group], name=f"{name}_pti")
                main = self.fit(module)
                images[group] = module.result["images"]
                self.render_edits(ws[group], module.generator, strips, group)
                tag = keys[group[0]] if self.cfg.refine_per_image else f"{keys[group[0]]}.batch"
                rel = Path("generators") / f"{tag}.pt"
                if main:
                    with writing(Path(self.cfg.output) / rel):
                        save_generator(Path(self.cfg.output) / rel, module.generator)
                for i in group:
                    generators[i] = rel.as_posix()
        else:
            self.render_edits(ws, self.generator, strips, range(len(keys)))
        return main, ws, images, noises, generators, strips


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


def write_grid(outputs, paths, keys, size, limit, align, transform=None):
    size = tuple(size) if not isinstance(size, int) else (size, size)
    rows = []
    for path, key in zip(paths, keys):
        if len(rows) >= limit:
            break
        if key not in outputs.rows or not outputs.path("reconstructions", key, ".png").is_file():
            continue
        source = outputs.path("aligned", key, ".png") if align else path
        try:
            target = transform.load(source).shown if transform is not None else load_image(source, size)
            recon = load_image(outputs.path("reconstructions", key, ".png"))
        except (ValueError, OSError):  # changed or removed since it was inverted
            continue
        rows.append((target, fit_to(recon[None], size)[0]))
    if rows:
        grid = image_grid([torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])])
        outputs.write_grid(grid * 2 - 1)
    return len(rows)


def _mean(rows, name):
    values = [float(r[name]) for r in rows if r.get(name) not in (None, "")]
    return sum(values) / len(values) if values else math.nan


def _quiet_lightning():
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*")
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")


def invert(cfg):
    """Run the inversion the config describes; returns the summary dict (also printed). Global
    rank zero holds the output folder's lock (:class:`ganinv.outputs.RunLock`) for the whole run."""
    check_config(cfg)
    rank_zero = all(os.environ.get(v, "0") == "0" for v in ("RANK", "LOCAL_RANK", "NODE_RANK"))
    inputs = find_inputs(cfg.input, cfg.output)
    with RunLock(cfg.output) if rank_zero else contextlib.nullcontext():
        return _invert(cfg, inputs, rank_zero)


def _invert(cfg, inputs, rank_zero):
    import pytorch_lightning as pl
    from tqdm import tqdm

    _quiet_lightning()
    if cfg.align:
        _dlib_models()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    paths, keys = inputs.paths, inputs.keys
    outputs = Outputs(cfg.output)
    refine = cfg.get("refine") == "pti"
    runner = InversionRun(cfg)
    todo = [(p, k) for p, k in zip(paths, keys) if not outputs.done(k, refine, runner.edits, runner.extra_files())]
    skipped = len(paths) - len(todo)
    metrics = ImageMetrics(cfg.metrics.lpips_net, runner.device)
    errors, diverged, inverted = list(inputs.problems), [], 0
    bar = tqdm(total=len(todo), unit="img", disable=None if rank_zero else True, file=sys.stderr)
    for start in range(0, len(todo), cfg.batch_size):
        batch = todo[start:start + cfg.batch_size]
        images, bad = load_inputs([p for p, _ in batch], runner.size, cfg.align, runner.transform)
        errors += bad
        good = [(k, img) for (_, k), img in zip(batch, images) if img is not None]
        bar.update(len(batch) - len(good))
        if not good:
            continue
        if runner.transform is not None:  # image-to-image: encoder inputs, their pictures, RGB targets
            x = torch.stack([img.x for _, img in good])
            pictures = torch.stack([img.shown for _, img in good])
            targets = [img.target for _, img in good]
            targets = torch.stack(targets) if targets[0] is not None else None
        else:
            x = pictures = targets = torch.stack([img for _, img in good])
        batch_keys = [k for k, _ in good]
        t0 = time.perf_counter()
        name = f"batch_{start // cfg.batch_size:05d}"
        main, ws, recon, noises, generators, strips = runner.invert(x, batch_keys, name)
        seconds = (time.perf_counter() - t0) / len(good)
        bar.update(len(good))
        if not main:
            continue
        blank = dict.fromkeys(("mse", "psnr", "ssim", "lpips"), "")
        scores = metrics(recon, targets) if targets is not None else [blank] * len(batch_keys)
        mixed = runner.multimodal(ws, batch_keys) if runner.latent_mask else None
        sized = resize_output if cfg.get("resize_outputs") else (lambda img: img)
        rows = []
        for i, key in enumerate(batch_keys):
            if not (torch.isfinite(ws[i]).all() and torch.isfinite(recon[i]).all()):
                diverged.append(key)
                continue
            out = sized(recon[i:i + 1])[0]
            outputs.write_image(key, out, ws[i], None if noises is None else noises[i],
                                x[i] if cfg.align else None)
            nearest = runner.transform is not None and runner.transform.kind == "labels"
            if mixed is not None:
                images_k = sized(mixed[i][0])
                outputs.write_multimodal(key, panel(pictures[i], images_k[0], nearest), images_k, mixed[i][1])
            if cfg.get("couple_outputs"):
                panels = [panel(pictures[i], out, nearest), out]
                if runner.transform is not None and runner.transform.kind == "superres":
                    # official: original | down-sampled (nearest) | output
                    panels = [panel(targets[i], out), panel(pictures[i], out, nearest=True), out]
                outputs.write_couple(key, panels)
            for tag, strip in strips.items():
                outputs.write_edit(tag, key, strip[i])
            generator = generators[i] if generators else ""
            rows.append({"image": key, **scores[i], "seconds": seconds, "generator": generator})
        if rows:
            outputs.add_rows(rows)
        inverted += len(rows)
        bar.set_postfix(mse=f"{_mean(rows, 'mse'):.4f}")
    bar.close()
    if not rank_zero:
        return None
    failed = errors + [f"{key}: the inversion diverged (non-finite latent or image), nothing written"
                       for key in diverged]
    if failed and not inverted and not skipped:
        raise ValueError(f"input={cfg.input}: no image could be inverted: {'; '.join(failed)}")
    grid_size = runner.transform.size if runner.transform is not None else runner.size
    shown = write_grid(outputs, paths, keys, grid_size, cfg.grid_max, cfg.align, runner.transform) \
        if cfg.grid_max else 0
    rows = list(outputs.rows.values())
    notes = inputs.notes + ([f"{outputs.csv}: {len(outputs.bad_rows)} bad rows ignored and dropped "
                             f"({'; '.join(outputs.bad_rows)})"] if outputs.bad_rows else [])
    summary = {"inverted": inverted, "skipped": skipped, "unreadable": errors, "diverged": diverged,
               "images": len(rows), "mse": _mean(rows, "mse"), "psnr": _mean(rows, "psnr"), "ssim": _mean(rows, "ssim"),
               "lpips": _mean(rows, "lpips"), "grid": shown, "output": str(outputs.root), "notes": notes,
               "keys": dict(zip(map(str, paths), keys))}
    lpips = f"{summary['lpips']:.4f}" if metrics.lpips is not None else f"blank ({metrics.lpips_missing})"
    bad = f" ({'; '.join(errors)})" if errors else ""
    diverged_text = f"{len(diverged)} diverged ({', '.join(diverged)}), nothing written; " if diverged else ""
    notes_text = f"; notes: {'; '.join(notes)}" if notes else ""
    print(f"invert.py: {inverted} inverted, {skipped} already done, {len(errors)} unreadable{bad}; {diverged_text}"
          f"over {len(rows)} images mse {summary['mse']:.4f} psnr {summary['psnr']:.2f} "
          f"ssim {summary['ssim']:.4f} lpips {lpips} -> {outputs.root}{notes_text}")
    return summary


def _output_os_error(e, output):
    """An OSError that is a write fault under the output folder (the CSV logger, Lightning, Hydra's
    log) as an OutputError naming the path, else None (it keeps its traceback)."""
    if e.errno not in WRITE_ERRNOS or not isinstance(e.filename, str):
        return None
    root = os.path.realpath(str(output))
    path = os.path.realpath(e.filename)
    if path != root and not path.startswith(root + os.sep):
        return None
    return OutputError(describe_os_error(e.filename, e))


def main(cfg):
    """invert() for the command line: a bad setting or file is one line on stderr, exit 2; so is a
    fault writing the output folder (disk full, read-only, a path that is a file)."""
    with one_line_errors("invert.py"):
        try:
            return invert(cfg)
        except OutputError:
            raise
        except OSError as e:
            error = _output_os_error(e, cfg.get("output") or ".")
            if error is None:
                raise
            raise error from e
