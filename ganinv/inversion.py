"""The body of invert.py: walk the input, invert it batch by batch, write every output.

Per image, under ``output``: ``reconstructions/<key>.png`` (generator resolution),
``latents/<key>.pt`` and ``.npy`` (W+ [n_latent, D]), ``noises/<key>.pt`` (per-image noise maps,
when the method optimised them and no PTI followed), ``generators/<key>.pt`` (refine=pti: the
tuned generator, rosinality layout), ``aligned/<key>.png`` (align=true). For the run:
``metrics.csv`` (one row per image), ``grid.png`` (input | reconstruction), ``curves/<first key>.png``
per optimisation batch and ``curves/pti/<key>.png`` per PTI run (loss per step and image), ``index.html``
(every image and its outputs, the metrics and the curves: :func:`ganinv.report.write_index`) and a
summary line. Every ``progress_every`` steps an optimisation or PTI run logs ``step k/N``, its loss and ETA.
Tasks (:mod:`ganinv.invert.tasks`): ``mask`` weights the image terms, ``inpaint`` adds
``composites/<key>.png``, ``crossover`` / ``style`` are Image2StyleGAN++'s edits, ``blend`` adds
``blend/<key>.png``; encoder runs: ``save_steps`` adds ``steps/<key>.png`` / ``.pt`` (every pass),
``bootstrap`` is ReStyle's encoder bootstrapping; a StyleALAE file as method=PATH is x -> E(x) -> G
(:mod:`ganinv.invert.alae`).

Image-to-image pSp checkpoints (sketch, segmentation, super-resolution; official or ganinv
exports) read their inputs as the official ``configs/transforms_config.py`` ``transform_inference``
of their ``dataset_type`` does (:class:`ganinv.invert.inputs.InputTransform`). ``latent_mask`` adds
``multimodal/<key>.png`` / ``.pt`` (``n_outputs`` style-mixed outputs, ``InversionRun.multimodal``,
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

Where each part lives (drivers at the top; nothing below imports this module): the settings check
:mod:`ganinv.invert.settings`, the input walk and loading :mod:`ganinv.invert.inputs` (FFHQ
alignment :mod:`ganinv.data.align`), the networks and one batch's inversion
:mod:`ganinv.invert.run`, scores, files per image, the grid and the summary
:mod:`ganinv.invert.results`, the folder layout :mod:`ganinv.outputs`.
"""

import contextlib
import logging
import os
import sys
import time
import warnings

import pytorch_lightning as pl
from tqdm import tqdm

from .cli import one_line_errors
from .data import align
from .invert.inputs import find_inputs, load_inputs, stack_batch
from .invert.results import ImageMetrics, Tally, mean, summarize, write_batch, write_grid
from .invert.run import InversionRun
from .invert.settings import check_config
from .invert.tasks import write_blends
from .outputs import WRITE_ERRNOS, OutputError, Outputs, RunLock, describe_os_error
from .report import write_index

log = logging.getLogger(__name__)


def invert(cfg):
    """Run the inversion the config describes; returns the summary dict (also printed), None on the
    ranks other than global rank zero, which holds the output folder's lock
    (:class:`ganinv.outputs.RunLock`) for the whole run."""
    log.info("Checking the settings")
    check_config(cfg)
    rank_zero = all(os.environ.get(v, "0") == "0" for v in ("RANK", "LOCAL_RANK", "NODE_RANK"))
    inputs = find_inputs(cfg.input, cfg.output)
    log.info(f"Found {len(inputs.paths)} images under <{cfg.input}>")
    with RunLock(cfg.output) if rank_zero else contextlib.nullcontext():
        quiet_lightning()
        if cfg.align:
            align.dlib_models()
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        outputs = Outputs(cfg.output)
        log.info(f"Building the networks for method={cfg.method}")
        run = InversionRun(cfg, outputs)
        metrics = ImageMetrics(cfg.metrics.lpips_net, run.device, weights_dir=cfg.paths.weights_dir)
        todo = [(p, k) for p, k in zip(inputs.paths, inputs.keys)
                if not outputs.done(k, run.pti is not None, run.edits, run.extra_files())]
        log.info(f"Inverting {len(todo)} images ({len(inputs.paths) - len(todo)} already done) into <{cfg.output}>")
        tally = invert_batches(cfg, run, outputs, todo, metrics, Tally(list(inputs.problems)), rank_zero)
        if not rank_zero:
            return None
        skipped = len(inputs.paths) - len(todo)
        if tally.errors + tally.diverged and not tally.inverted and not skipped:
            failed = tally.errors + [f"{key}: the inversion diverged (non-finite latent or image), nothing written"
                                     for key in tally.diverged]
            raise ValueError(f"input={cfg.input}: no image could be inverted: {'; '.join(failed)}")
        shown = write_run_files(cfg, run, outputs, inputs)
        return summarize(cfg, inputs, outputs, tally, skipped, metrics, shown)


def write_run_files(cfg, run, outputs, inputs):
    """The run's own files after every image: blends (blend=), grid.png, index.html -> images in the grid."""
    if cfg.get("blend") is not None:
        blended = write_blends(cfg, run.generator, outputs, inputs.keys, run.device)
        log.info(f"Wrote {blended} activation blends with {cfg.blend['with']} to blend/")
    shown = 0
    if cfg.grid_max:
        log.info(f"Writing grid.png (at most {cfg.grid_max} images)")
        size = run.transform.size if run.transform is not None else run.size
        shown = write_grid(outputs, inputs, size, cfg.grid_max, cfg.align, run.transform)
    page = write_index(outputs.root, inputs=dict(zip(inputs.keys, inputs.paths)))
    log.info(f"Wrote {page} (every image, its outputs, metrics.csv and the loss curves)")
    return shown


def invert_batches(cfg, run, outputs, todo, metrics, tally, rank_zero):
    """Load, invert and write the (path, key) pairs ``todo`` batch by batch -> ``tally``."""
    bar = tqdm(total=len(todo), unit="img", disable=None if rank_zero else True, file=sys.stderr)
    for start in range(0, len(todo), cfg.batch_size):
        chunk = todo[start:start + cfg.batch_size]
        images, errors = load_inputs([p for p, _ in chunk], run.size, cfg.align, run.transform)
        tally.errors += errors
        loaded = [(k, img) for (_, k), img in zip(chunk, images) if img is not None]
        bar.update(len(chunk) - len(loaded))
        if not loaded:
            continue
        batch = stack_batch(loaded, run.transform)
        t0 = time.perf_counter()
        result = run.invert(batch.x, batch.keys, f"batch_{start // cfg.batch_size:05d}")
        seconds = (time.perf_counter() - t0) / len(loaded)
        bar.update(len(loaded))
        if result.is_global_zero:
            rows = write_batch(cfg, run, outputs, batch, result, metrics, seconds, tally)
            bar.set_postfix(mse=f"{mean(rows, 'mse'):.4f}")
    bar.close()
    return tally


def quiet_lightning():
    """Lightning's per-fit chatter off: invert.py fits one module per batch."""
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*")
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")


def output_os_error(e, output):
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
            error = output_os_error(e, cfg.get("output") or ".")
            if error is None:
                raise
            raise error from e
