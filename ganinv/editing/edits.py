"""Edit specs: one string names an edit and its strengths, e.g. for ``invert.py edit=...``.

Fields are separated by ``:``; ``key=value`` fields are options and may stand anywhere after the kind.

* ``interfacegan:PATH:STRENGTHS[:layers=ROWS]`` — w + s·d for a direction file (e4e ``.pt``,
  InterFaceGAN ``.npy`` or IDInvert ``.npy``; an IDInvert file brings its own rows, ``layers=``
  overrides them). Example: ``interfacegan:editings/age.pt:-3,0,3``.
* ``ganspace:PATH:INDEX,START,END:STRENGTHS`` — e4e's GANSpace edit of component INDEX on W+ rows
  [START, END); a strength is the target coordinate in standard deviations (see
  :func:`~ganinv.editing.ganspace.apply_ganspace`). Example: ``ganspace:ffhq_pca.pt:54,7,8:-20,20``.
* ``sefa:INDEX:STRENGTHS[:layers=ROWS]`` — SeFa direction INDEX (0 = largest eigenvalue) of the
  generator's modulation weights on ROWS (default all). Example: ``sefa:0:-5,0,5:layers=2-5``.

STRENGTHS is a comma-separated list of numbers, one output per number. ROWS is a W+ row list in
genforce's syntax: ``2-5`` (inclusive), ``0,3,6-8`` or ``all``. PATH may itself contain ``:``.
"""
from dataclasses import dataclass

import torch

from ganinv.editing.ganspace import apply_ganspace, load_ganspace_pca
from ganinv.editing.interfacegan import Direction, apply_direction, load_direction, parse_layers
from ganinv.editing.sefa import apply_sefa, sefa_directions

KINDS = ("interfacegan", "ganspace", "sefa")
_OPTIONS = {"interfacegan": {"layers"}, "ganspace": set(), "sefa": {"layers"}}


@dataclass(frozen=True)
class EditSpec:
    """A parsed edit string (see the module docstring)."""

    kind: str
    strengths: tuple[float, ...]
    path: str | None = None
    index: int | None = None
    start: int | None = None
    end: int | None = None
    layers: str | None = None


def _numbers(field, what, spec, cast=float):
    try:
        values = tuple(cast(v) for v in field.split(","))
    except ValueError:
        raise ValueError(f"edit spec {spec!r}: {what} must be comma-separated numbers, "
                         f"got {field!r}") from None
    return values


def parse_edit(spec):
    """Parse an edit string; raises one-line ValueErrors naming the spec and the bad field."""
    kind, _, rest = spec.strip().partition(":")
    if kind not in KINDS:
        raise ValueError(f"edit spec {spec!r}: unknown kind {kind!r}; expected one of {list(KINDS)}")
    fields, options = [], {}
    for field in rest.split(":") if rest else []:
        key, eq, value = field.partition("=")
        if eq and key.isidentifier():
            if key not in _OPTIONS[kind]:
                raise ValueError(f"edit spec {spec!r}: unknown option {key!r} for {kind}")
            options[key] = value
        else:
            fields.append(field)
    if kind == "interfacegan":
        if len(fields) < 2:
            raise ValueError(f"edit spec {spec!r}: expected interfacegan:PATH:STRENGTHS[:layers=ROWS]")
        return EditSpec(kind, _numbers(fields[-1], "STRENGTHS", spec), path=":".join(fields[:-1]), **options)
    if kind == "ganspace":
        if len(fields) < 3:
            raise ValueError(f"edit spec {spec!r}: expected ganspace:PATH:INDEX,START,END:STRENGTHS")
        triple = _numbers(fields[-2], "INDEX,START,END", spec, int)
        if len(triple) != 3:
            raise ValueError(f"edit spec {spec!r}: INDEX,START,END needs three integers, got {fields[-2]!r}")
        return EditSpec(kind, _numbers(fields[-1], "STRENGTHS", spec), path=":".join(fields[:-2]),
                        index=triple[0], start=triple[1], end=triple[2])
    if len(fields) != 2:
        raise ValueError(f"edit spec {spec!r}: expected sefa:INDEX:STRENGTHS[:layers=ROWS]")
    (index,) = _numbers(fields[0], "INDEX", spec, int)
    return EditSpec(kind, _numbers(fields[1], "STRENGTHS", spec), index=index, **options)


class Edit:
    """An edit with its file or factorisation loaded once; ``edit(ws)`` maps ws [B, n_latent, D] to
    [n_strengths, B, n_latent, D]. SeFa needs the generator."""

    def __init__(self, spec, generator=None):
        self.spec = parse_edit(spec) if isinstance(spec, str) else spec
        s = self.spec
        if s.kind == "interfacegan":
            direction = load_direction(s.path)
            layers = parse_layers(s.layers) if s.layers is not None else direction.layers
            self._data = Direction(direction.vector, layers)
        elif s.kind == "ganspace":
            self._data = load_ganspace_pca(s.path)
        else:
            if generator is None:
                raise ValueError(f"edit {s.kind}:{s.index}: SeFa needs the generator")
            self._data = sefa_directions(generator, "all" if s.layers is None else s.layers)

    def __call__(self, ws):
        s = self.spec
        if s.kind == "interfacegan":
            return apply_direction(ws, self._data, s.strengths)
        if s.kind == "ganspace":
            return apply_ganspace(ws, self._data, s.index, s.start, s.end, s.strengths)
        return apply_sefa(ws, self._data, s.index, s.strengths)


def apply_edit(ws, spec, generator=None):
    """ws [B, n_latent, D] -> edited codes [n_strengths, B, n_latent, D]."""
    edit = spec if isinstance(spec, Edit) else Edit(spec, generator)
    return edit(ws)


@torch.no_grad()
def edit_strip(generator, ws, spec, noise_mode="const", batch=16):
    """Render an edit strip per code: ws [B, n_latent, D] -> images [B, n_strengths, 3, H, W]
    (generator output, ~[-1, 1]), synthesised ``batch`` codes at a time."""
    edit = spec if isinstance(spec, Edit) else Edit(spec, generator)
    codes = edit(ws).transpose(0, 1)  # [B, S, n_latent, D]
    flat = codes.reshape(-1, *codes.shape[2:])
    images = torch.cat([generator.synthesis(flat[i:i + batch], noise_mode)
                        for i in range(0, len(flat), batch)])
    return images.reshape(*codes.shape[:2], *images.shape[1:])
