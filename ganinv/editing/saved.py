"""Edit an invert.py output folder's saved latents without inverting again.

The folder (written by invert.py, its format :mod:`ganinv.outputs`) holds ``latents/<key>.pt`` (W+
[n_latent, D]) and ``metrics.csv``, whose ``generator`` column names the PTI-tuned generator of an
image (``generators/<key>.pt``) when the run refined. :func:`edit_saved` renders every edit the way
invert.py's ``edit=`` does at inversion time (``InversionRun.render_edits``): the edit is built once
with the base generator (SeFa factorises its weights), each image's codes are edited by
:func:`~ganinv.editing.edits.edit_strip` and synthesised with constant noise by the generator the
image was inverted into (its tuned one after PTI, else the base one), and the strip is written as
``edits/<tag>/<key>.png``, one column per strength, under the same tag invert.py uses
(:func:`edit_tag`).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ganinv.checkpoints import load_generator
from ganinv.editing.edits import Edit, edit_strip, parse_edit
from ganinv.editing.labels import saved_latents
from ganinv.outputs import Outputs, RunLock, read_metrics


def edit_tag(spec) -> str:
    """A run folder's name for an edit (``edits/<tag>/``): ``interfacegan_age``, ``ganspace_54_7_8``,
    ``sefa_0``."""
    s = parse_edit(spec)
    if s.kind == "interfacegan":
        return f"interfacegan_{Path(s.path).stem}"
    if s.kind == "ganspace":
        return f"ganspace_{s.index}_{s.start}_{s.end}"
    return f"sefa_{s.index}"


def image_generators(run, keys) -> dict[str, str | None]:
    """{key: the tuned generator's path relative to ``run`` (metrics.csv ``generator``), or None}."""
    rows, _ = read_metrics(Path(run) / "metrics.csv")
    return {k: (rows.get(k, {}).get("generator") or None) for k in keys}


@torch.no_grad()
def edit_saved(run, specs, generator, out=None, device="cpu", write=True) -> dict[str, dict[str, Tensor]]:
    """Render ``specs`` (edit strings, see :mod:`ganinv.editing.edits`) for every saved latent of the
    invert.py folder ``run`` -> {tag: {key: strip [S, 3, H, W] (~[-1, 1], unclamped)}}; with ``write``
    also ``<out or run>/edits/<tag>/<key>.png`` (atomic; one run per folder, as invert.py's lock).

    ``generator`` is the base generator the run inverted into (an invert.py run's ``generator=`` or
    its encoder's decoder)."""
    codes = saved_latents(run)
    tuned = image_generators(run, codes)
    generator = generator.to(device).eval()
    edits = {edit_tag(spec): Edit(spec, generator) for spec in specs}
    groups: dict[str | None, list[str]] = {}
    for key, rel in tuned.items():
        groups.setdefault(rel, []).append(key)
    strips = {tag: {} for tag in edits}
    for rel, keys in groups.items():
        g = generator if rel is None else load_generator(Path(run) / rel, device=device)
        ws = torch.stack([codes[k] for k in keys]).to(device)
        for tag, edit in edits.items():
            images = edit_strip(g, ws, edit).float().cpu()  # [k, S, 3, R, R]
            strips[tag].update(zip(keys, images))
    if write:
        target = Path(out or run)
        with RunLock(target):
            outputs = Outputs(target)
            for tag, by_key in strips.items():
                for key, strip in by_key.items():
                    outputs.write_edit(tag, key, strip)
    return strips
