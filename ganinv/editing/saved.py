"""Edit an invert.py output folder's saved latents without inverting again.

The folder (written by invert.py) holds ``latents/<key>.pt`` (W+ [n_latent, D]) and ``metrics.csv``,
whose ``generator`` column names the PTI-tuned generator of an image (``generators/<key>.pt``) when
the run refined. :func:`edit_saved` renders every edit the way invert.py's ``edit=`` does at
inversion time (``InversionRun.render_edits``): the edit is built once with the base generator (SeFa
factorises its weights), each image's codes are edited by :func:`~ganinv.editing.edits.edit_strip`
and synthesised with constant noise by the generator the image was inverted into (its tuned one
after PTI, else the base one). It returns the strips; the driver (``python -m ganinv.editing apply``,
:func:`ganinv.edit_cli.apply_saved`) reads metrics.csv and writes them as ``edits/<tag>/<key>.png``,
one column per strength, under the same tag invert.py uses (:func:`edit_tag`). Layer: editing reads
the latents itself (:func:`~ganinv.editing.labels.saved_latents`) but not the run-folder format of
:mod:`ganinv.outputs` (metrics.csv, the lock, the writers), which is the driver's.
"""
from pathlib import Path

import torch

from ganinv.checkpoints import load_generator
from ganinv.editing.edits import Edit, edit_strip, parse_edit
from ganinv.editing.labels import saved_latents


def edit_tag(spec):
    """A run folder's name (str) for an edit (``edits/<tag>/``): ``interfacegan_age``,
    ``ganspace_54_7_8``, ``sefa_0``."""
    s = parse_edit(spec)
    if s.kind == "interfacegan":
        return f"interfacegan_{Path(s.path).stem}"
    if s.kind == "ganspace":
        return f"ganspace_{s.index}_{s.start}_{s.end}"
    return f"sefa_{s.index}"


def image_generators(rows, keys):
    """{key (str): the tuned generator's path (str) relative to the run folder, metrics.csv's
    ``generator``, or None} for ``keys``; ``rows``: {image key: metrics.csv row dict}, as
    :func:`ganinv.outputs.read_metrics` reads them (an image without a row, or a blank ``generator``:
    None, the base generator)."""
    return {k: (rows.get(k, {}).get("generator") or None) for k in keys}


@torch.no_grad()
def edit_saved(run, specs, generator, rows, device="cpu"):
    """Render ``specs`` (edit strings, see :mod:`ganinv.editing.edits`) for every saved latent of the
    invert.py folder ``run`` -> {tag (str): {key (str): strip [S, 3, H, W] float32 on the CPU (~[-1, 1],
    unclamped)}}. Nothing is written.

    ``generator`` is the base generator the run inverted into (an invert.py run's ``generator=`` or
    its encoder's decoder); ``rows`` the run's metrics.csv rows ({image key: row dict}, ``{}`` for a
    folder without one), whose ``generator`` column picks each image's tuned generator
    (``run``/<path>) after PTI."""
    codes = saved_latents(run)
    tuned = image_generators(rows, codes)
    generator = generator.to(device).eval()
    edits = {edit_tag(spec): Edit(spec, generator) for spec in specs}
    groups = {}  # tuned generator path (or None) -> its keys
    for key, rel in tuned.items():
        groups.setdefault(rel, []).append(key)
    strips = {tag: {} for tag in edits}
    for rel, keys in groups.items():
        g = generator if rel is None else load_generator(Path(run) / rel, device=device)
        ws = torch.stack([codes[k] for k in keys]).to(device)
        for tag, edit in edits.items():
            images = edit_strip(g, ws, edit).float().cpu()  # [k, S, 3, R, R]
            strips[tag].update(zip(keys, images))
    return strips
