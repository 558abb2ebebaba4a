"""Pictures and pages of a run's results: loss-curve PNGs and the per-run ``index.html``.

- :func:`write_loss_curves`: the loss per step of each image of an inversion batch
  (``TargetsModule.curves`` [steps, N]) as a PNG, one coloured line per image, drawn with PIL
  (no plotting dependency); log-scaled when every value is positive.
- :func:`write_index`: ``index.html`` of an invert.py output folder (the layout of
  :mod:`ganinv.outputs`): a row per image, input | reconstruction | each edit (| multimodal |
  couple), with relative links; metrics.csv as a table, verbatim; the loss curves and grid.png.
- :func:`html_table`, :func:`write_html`: the page pieces the demo's ``report.html`` uses too.

Every file is written atomically (:func:`ganinv.checkpoints.safe.atomic_write`).
"""
import html
import math
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from PIL import Image, ImageDraw, ImageFont

from .checkpoints.safe import atomic_write
from .outputs import METRICS, NUMERIC, read_metrics, writing

# matplotlib's tab10 colours: one per image, repeating after ten
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
BACKGROUND, FRAME, GRID, TEXT = (255, 255, 255), (90, 90, 90), (225, 225, 225), (30, 30, 30)
STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}td,th{padding:4px 10px;text-align:right}"
         "img{image-rendering:pixelated}")
INDEX = "index.html"


@dataclass
class Axes:
    """Where a loss curve PNG puts step ``s`` (0 .. steps − 1) and a loss value, in pixels."""
    left: int
    top: int
    width: int
    height: int
    steps: int
    low: float
    high: float
    log: bool

    def scale(self, value):
        return math.log10(value) if self.log else value

    def x(self, step):
        return self.left + (self.width * step / (self.steps - 1) if self.steps > 1 else self.width / 2)

    def y(self, value):
        low, high = self.scale(self.low), self.scale(self.high)
        return self.top + self.height * (high - self.scale(value)) / (high - low)


def curve_axes(curves, size, legend_width):
    """The :class:`Axes` of curves [steps, N] in a ``size`` (W, H) picture."""
    finite = [v for v in curves.flatten().tolist() if math.isfinite(v)] or [0.0]
    log = min(finite) > 0
    low, high = min(finite), max(finite)
    if high == low:  # a flat curve: a band around it
        low, high = (low / 2, high * 2) if log else (low - 1, high + 1)
    left, top, bottom = 64, 24, 30
    return Axes(left, top, size[0] - left - legend_width - 10, size[1] - top - bottom, int(curves.shape[0]),
                low, high, log)


def write_loss_curves(path, curves, keys, title="loss", size=(640, 360)):
    """Draw curves [steps, N] (loss per step and image) to the PNG ``path``, ``size`` (W, H) pixels:
    one line per image in :data:`PALETTE` order, legend ``keys`` on the right, min/max loss and
    first/last step marked. Non-finite values leave gaps. Returns the :class:`Axes` used."""
    curves = curves.detach().float().cpu() if hasattr(curves, "detach") else curves
    if curves.ndim != 2 or curves.shape[1] != len(keys):
        raise ValueError(f"loss curves must be [steps, {len(keys)}] for {len(keys)} keys, got {tuple(curves.shape)}")
    font = ImageFont.load_default()
    axes = curve_axes(curves, size, legend_width=min(160, size[0] // 4) if len(keys) else 0)
    image = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    right, bottom = axes.left + axes.width, axes.top + axes.height
    for value in (axes.low, axes.high):
        y = axes.y(value)
        draw.line([(axes.left, y), (right, y)], fill=GRID)
        draw.text((4, y - 5), f"{value:.3g}", fill=TEXT, font=font)
    draw.rectangle([axes.left - 1, axes.top - 1, right + 1, bottom + 1], outline=FRAME)
    draw.text((axes.left, bottom + 6), "0", fill=TEXT, font=font)
    draw.text((right - 30, bottom + 6), f"{max(axes.steps - 1, 0)}", fill=TEXT, font=font)
    draw.text((axes.left + axes.width / 2 - 12, bottom + 6), "step", fill=TEXT, font=font)
    draw.text((axes.left, 6), f"{title}{' (log scale)' if axes.log else ''}", fill=TEXT, font=font)
    for i, key in enumerate(keys):
        colour = PALETTE[i % len(PALETTE)]
        points = []
        for step, value in enumerate(curves[:, i].tolist()):
            if math.isfinite(value):
                points.append((axes.x(step), axes.y(value)))
                continue
            draw_line(draw, points, colour)
            points = []
        draw_line(draw, points, colour)
        if i < 20:  # legend
            y = axes.top + 14 * i
            draw.line([(right + 12, y + 6), (right + 28, y + 6)], fill=colour, width=3)
            draw.text((right + 32, y), str(key)[:22], fill=TEXT, font=font)
    with writing(path):
        atomic_write(path, lambda f: image.save(f, format="PNG"))
    return axes


def draw_line(draw, points, colour):
    if len(points) == 1:
        (x, y), = points
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
    elif points:
        draw.line(points, fill=colour, width=2, joint="curve")


def html_table(header, rows, escape=True):
    """``<table>`` of a header row and body rows (lists of cells; HTML-escaped unless ``escape`` is false)."""
    cell = html.escape if escape else str
    head = "".join(f"<th>{cell(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_html(path, title, body, style=STYLE):
    """A UTF-8 page with ``title`` and the HTML ``body``, written atomically."""
    page = (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{style}</style></head><body>\n{body}\n</body></html>\n")
    with writing(path):
        atomic_write(path, lambda f: f.write(page.encode()))
    return Path(path)


def link(path, root):
    """``path`` as an escaped URL relative to the folder ``root`` (a file URI when it has none)."""
    try:
        rel = Path(os.path.relpath(Path(path).absolute(), Path(root).absolute())).as_posix()
    except ValueError:  # another drive
        return html.escape(Path(path).absolute().as_uri(), quote=True)
    return html.escape(quote(rel), quote=True)


def picture(path, root, width=128):
    return f'<a href="{link(path, root)}"><img src="{link(path, root)}" style="max-width:{width * 4}px" ' \
           f'height="{width}" loading="lazy" alt=""></a>' if Path(path).is_file() else "—"


def column_mean(rows, field):
    """Mean of a numeric metrics.csv column over ``rows`` (blank cells left out), as text; '' otherwise."""
    values = [float(r[field]) for r in rows if r.get(field)] if field in METRICS + NUMERIC else []
    return f"{sum(values) / len(values):.6g}" if values else ""


def write_index(out_dir, inputs=None, title=None):
    """Write ``<out_dir>/index.html`` for an invert.py output folder and return its path.

    ``inputs``: {image key: input file} (the files the run read); without it, or for keys it lacks,
    ``aligned/<key>.png`` is shown when it exists. Images are metrics.csv's rows (in its order)
    and any further ``reconstructions/<key>.png``; columns are input, reconstruction, each
    ``edits/<tag>``, ``multimodal`` and ``couples`` when any image has that file. The metrics table
    shows metrics.csv's fields verbatim, with their means over the rows below."""
    root = Path(out_dir)
    rows, bad = read_metrics(root / "metrics.csv")
    found = sorted(p.relative_to(root / "reconstructions").with_suffix("").as_posix()
                   for p in (root / "reconstructions").rglob("*.png")) if (root / "reconstructions").is_dir() else []
    keys = list(rows) + [k for k in found if k not in rows]
    inputs = {str(k): Path(p) for k, p in (inputs or {}).items()}
    tags = sorted(p.name for p in (root / "edits").iterdir() if p.is_dir()) if (root / "edits").is_dir() else []
    columns = {"input": lambda k: inputs.get(k, root / "aligned" / f"{k}.png"),
               "reconstruction": lambda k: root / "reconstructions" / f"{k}.png",
               **{f"edit {t}": (lambda k, t=t: root / "edits" / t / f"{k}.png") for t in tags},
               "multimodal": lambda k: root / "multimodal" / f"{k}.png",
               "couple": lambda k: root / "couples" / f"{k}.png"}
    columns = {name: where for name, where in columns.items() if any(where(k).is_file() for k in keys)}
    images = [[html.escape(k), *(picture(where(k), root) for where in columns.values())] for k in keys]
    fields = list(next(iter(rows.values()))) if rows else []
    parts = [f"<h1>{html.escape(title or root.name)}</h1>",
             f"<p>{len(keys)} images in {html.escape(str(root))}.</p>"]
    if (root / "grid.png").is_file():
        parts.append('<p><a href="grid.png"><img src="grid.png" style="max-width:100%" alt="grid"></a></p>')
    parts += ["<h2>Images</h2>", html_table(["image", *columns], images, escape=False)]
    if rows:
        mean_row = ["mean" if f == "image" else column_mean(rows.values(), f) for f in fields]
        parts += ['<h2>Metrics (<a href="metrics.csv">metrics.csv</a>)</h2>',
                  html_table(fields, [list(r.values()) for r in rows.values()] + [mean_row])]
    if bad:
        parts.append(f"<p>{len(bad)} unusable rows of metrics.csv left out: {html.escape('; '.join(bad))}</p>")
    curves = sorted((root / "curves").rglob("*.png")) if (root / "curves").is_dir() else []
    if curves:
        parts.append("<h2>Loss curves</h2>" + "".join(
            f'<figure><a href="{link(p, root)}"><img src="{link(p, root)}" alt=""></a><figcaption>'
            f"{html.escape(p.relative_to(root / 'curves').with_suffix('').as_posix())}</figcaption></figure>"
            for p in curves))
    return write_html(root / INDEX, title or f"ganinv: {root.name}", "\n".join(parts))
