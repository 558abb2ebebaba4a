"""``python -m ganinv.editing fit-boundary | ganspace | sefa | apply``: directions from data, and edits
of saved latents (driver level: it uses editing, metrics and ganinv.cli; ganinv/editing/__main__.py
only runs it). Every file is written atomically in the official layouts; bad input is one line
naming the file or field, with exit status 2.

    fit-boundary --latents RUN_OR_FILE --scores CSV_OR_NPY [--attribute NAME] --out age.npy|age.pt
    fit-boundary --procedural FACTOR[,FACTOR..]|all [--generator G] [--n-samples 20000] --out DIR [--prefix P]
    ganspace [--generator G] [--n-samples 300000] [--components 80] --out ffhq_pca.pt
    sefa [--generator G] [--layers all] [--num 5] --out DIR
    apply RUN --edit SPEC [--edit SPEC ..] [--generator G | --encoder E] [--out DIR]

fit-boundary is InterFaceGAN's ``train_boundary.py`` (:mod:`ganinv.editing.boundary`; defaults
``--chosen-ratio 0.02 --split-ratio 0.7`` as there) and also writes a JSON beside its output with
the validation accuracies and the recipe. ``.npy`` outputs are InterFaceGAN's ``boundary.npy``
layout, ``.pt`` e4e's direction layout. With ``--procedural`` the latents are w = mapping(z) of
the generator and the labels its images' factors as read by a factor regressor
(:mod:`ganinv.editing.labels`); the directory then gets ``<prefix><factor>.pt`` per factor and
``<prefix>directions.json`` (one factor and a ``.npy``/``.pt`` ``--out``: that file and its JSON).
The directions shipped for the embedded generator (``ganinv/assets/procedural64_<factor>.pt``, with
their validation accuracies and strengths in ``procedural64_directions.json``) and its PCA
(``procedural64_pca.pt``) were made by

    python -m ganinv.editing fit-boundary --procedural all --n-samples 20000 --out ganinv/assets --prefix procedural64_
    python -m ganinv.editing ganspace --out ganinv/assets/procedural64_pca.pt

ganspace writes e4e's ``ffhq_pca.pt`` layout (GANSpace's recipe,
:mod:`ganinv.editing.ganspace`); sefa writes ``sefa_<k>.npy`` in IDInvert's layer-wise layout
(:func:`ganinv.editing.sefa.save_sefa`) and ``sefa.json``. The generator defaults to the embedded
``ganinv/assets/procedural64.pt``.
"""
import argparse
import json
import sys
from pathlib import Path

from ganinv.cli import one_line_errors

PROG = "python -m ganinv.editing"


def _generator(args):
    from ganinv.checkpoints import load_generator, load_inverter
    from ganinv.config import ASSETS

    if getattr(args, "encoder", None):
        return load_inverter(args.encoder, device=args.device).generator
    return load_generator(args.generator or ASSETS / "procedural64.pt", device=args.device)


def _write_json(path, obj):
    """``obj`` as indented JSON at ``path``, atomically -> the Path written."""
    from ganinv.checkpoints.safe import atomic_write

    text = json.dumps(obj, indent=1) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode()))


def _recipe(args):
    return {"chosen_num_or_ratio": args.chosen_ratio, "split_ratio": args.split_ratio, "seed": args.seed,
            "classifier": "sklearn.svm.SVC(kernel='linear')", "command": args.command_line}


def fit_boundary(args):
    from ganinv.data.procedural import FACTORS
    from ganinv.editing.boundary import save_boundary, train_boundary
    from ganinv.editing.labels import load_latents, procedural_scores, read_scores

    fit = dict(chosen_ratio=args.chosen_ratio, split_ratio=args.split_ratio, seed=args.seed)
    if args.procedural is None:
        if not args.latents or not args.scores:
            raise ValueError("fit-boundary: give --latents and --scores, or --procedural FACTOR")
        keys, ws = load_latents(args.latents, args.row)
        index, scores = read_scores(args.scores, keys, args.attribute)
        result = train_boundary(ws[index], scores, **fit)
        out = save_boundary(result.normal, args.out)
        record = {"boundary": out.name, "latents": str(args.latents), "scores": str(args.scores),
                  "attribute": args.attribute, "samples": len(index), "val_accuracy": result.val_accuracy,
                  "remaining_accuracy": result.remaining_accuracy, **_recipe(args)}
        _write_json(out.with_suffix(".json"), record)
        print(f"fit-boundary: {len(index)} samples, validation accuracy {result.val_accuracy} -> {out}")
        return
    names = list(FACTORS) if args.procedural == "all" else [f.strip() for f in args.procedural.split(",")]
    unknown = [f for f in names if f not in FACTORS]
    if unknown:
        raise ValueError(f"--procedural: unknown factor {unknown[0]!r}; known: {', '.join(FACTORS)}")
    from ganinv.metrics.editability import load_regressor, save_regressor, train_factor_regressor

    g = _generator(args)
    if args.regressor and Path(args.regressor).is_file():
        regressor, stats = load_regressor(args.regressor), None
    else:
        print(f"fit-boundary: training the factor regressor ({args.regressor_steps} steps) ...", flush=True)
        regressor, stats = train_factor_regressor(steps=args.regressor_steps, seed=args.seed, size=min(g.size, 64))
        if args.regressor:
            save_regressor(regressor, args.regressor, stats)
    print(f"fit-boundary: scoring {args.n_samples} samples of the generator ...", flush=True)
    w, scores = procedural_scores(g, regressor, args.n_samples, seed=args.seed)
    out = Path(args.out)
    one_file = len(names) == 1 and out.suffix in (".npy", ".pt")
    factors = {}
    for name in names:
        result = train_boundary(w, scores[:, FACTORS.index(name)], **fit)
        path = save_boundary(result.normal, out if one_file else out / f"{args.prefix}{name}.pt")
        factors[name] = {"file": path.name, "val_accuracy": result.val_accuracy,
                         "remaining_accuracy": result.remaining_accuracy,
                         "sigma": (w.double() @ result.normal[0].double()).std().item()}
        print(f"  {name}: validation accuracy {result.val_accuracy:.4f} -> {path}")
    record = {"generator": str(getattr(args, "encoder", None) or args.generator or "ganinv/assets/procedural64.pt"),
              "samples": args.n_samples, "labels": "FactorRegressor readings of G(w), const noise",
              "regressor": stats if stats is not None else str(args.regressor), **_recipe(args),
              "sigma": "std of w·normal over the samples (a strength of k·sigma moves k standard deviations)",
              "factors": factors}
    summary = out.with_suffix(".json") if one_file else out / f"{args.prefix}directions.json"
    print(f"fit-boundary: wrote {_write_json(summary, record)}")


def ganspace(args):
    from ganinv.editing.ganspace import ganspace_pca, save_ganspace_pca

    pca = ganspace_pca(_generator(args), args.n_samples, args.components, seed=args.seed)
    print(f"ganspace: {args.n_samples} samples, {args.components} components -> {save_ganspace_pca(pca, args.out)}")


def sefa(args):
    from ganinv.editing.sefa import save_sefa, sefa_directions

    g = _generator(args)
    result = sefa_directions(g, args.layers)
    if not 1 <= args.num <= result.directions.shape[0]:
        raise ValueError(f"--num must be in [1, {result.directions.shape[0]}], got {args.num}")
    out = Path(args.out)
    files = [save_sefa(result, g.n_latent, out / f"sefa_{k}.npy", k).name for k in range(args.num)]
    _write_json(out / "sefa.json", {"layers": result.layers, "eigenvalues": result.eigenvalues[:args.num].tolist(),
                                    "files": files, "command": args.command_line})
    print(f"sefa: {args.num} directions of rows {result.layers} -> {out}")


def apply_saved(run, specs, generator, out=None, device="cpu"):
    """Edit the saved latents of the invert.py folder ``run`` (:func:`ganinv.editing.saved.edit_saved`,
    the tuned generators named by its metrics.csv) and write ``<out or run>/edits/<tag>/<key>.png``
    (atomic; under the folder's lock, one run per folder as invert.py) -> the strips, {tag (str):
    {key (str): [S, 3, H, W]}}."""
    from ganinv.editing.saved import edit_saved
    from ganinv.outputs import Outputs, RunLock, read_metrics

    rows, _ = read_metrics(Path(run) / "metrics.csv")
    strips = edit_saved(run, specs, generator, rows, device=device)
    target = Path(out or run)
    with RunLock(target):
        outputs = Outputs(target)
        for tag, by_key in strips.items():
            for key, strip in by_key.items():
                outputs.write_edit(tag, key, strip)
    return strips


def apply(args):
    from ganinv.editing.edits import parse_edit

    for spec in args.edit:
        parse_edit(spec)
    strips = apply_saved(args.run, args.edit, _generator(args), out=args.out, device=args.device)
    n = len(next(iter(strips.values())))
    print(f"apply: {n} images x {len(strips)} edits -> {Path(args.out or args.run) / 'edits'} ({', '.join(strips)})")


def parser():
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit-boundary", help="InterFaceGAN boundary (sklearn linear SVM) from latents + labels")
    fit.add_argument("--latents", help="invert.py output folder, or a codes file [N, D] (.pt / .npy)")
    fit.add_argument("--scores", help="CSV (key column + attribute columns) or scores.npy [N, 1]")
    fit.add_argument("--attribute", help="the CSV column to fit (needed when it has several)")
    fit.add_argument("--row", default="mean", help="W+ codes: 'mean' of the rows (default) or a row index")
    fit.add_argument("--procedural", help="factor names (comma-separated) or 'all': label the generator's samples")
    fit.add_argument("--n-samples", type=int, default=20000, help="--procedural: samples of the generator")
    fit.add_argument("--regressor", help="--procedural: factor regressor file to read (or to write after training)")
    fit.add_argument("--regressor-steps", type=int, default=600)
    fit.add_argument("--prefix", default="", help="--procedural: file name prefix in --out")
    fit.add_argument("--chosen-ratio", type=float, default=0.02, help="InterFaceGAN chosen_num_or_ratio")
    fit.add_argument("--split-ratio", type=float, default=0.7)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--out", required=True, help="boundary .npy/.pt (or a folder with --procedural)")
    pca = sub.add_parser("ganspace", help="GANSpace PCA of w, e4e's ffhq_pca.pt layout")
    pca.add_argument("--n-samples", type=int, default=300_000, help="GANSpace's default, 300000")
    pca.add_argument("--components", type=int, default=80)
    pca.add_argument("--seed", type=int, default=0)
    pca.add_argument("--out", required=True)
    sf = sub.add_parser("sefa", help="SeFa directions of the modulation weights, IDInvert .npy layout")
    sf.add_argument("--layers", default="all", help="W+ rows, e.g. 2-5 (genforce's syntax)")
    sf.add_argument("--num", type=int, default=5, help="how many directions to write (largest eigenvalues)")
    sf.add_argument("--out", required=True)
    ap = sub.add_parser("apply", help="edit an invert.py output folder's saved latents")
    ap.add_argument("run", help="invert.py output folder (latents/<key>.pt)")
    ap.add_argument("--edit", action="append", required=True, help="edit spec, as invert.py edit= (repeatable)")
    ap.add_argument("--encoder", help="take the generator from this encoder checkpoint (pSp/e4e/ReStyle/ganinv)")
    ap.add_argument("--out", help="folder for edits/<tag>/<key>.png (default: the run folder)")
    for s in (fit, pca, sf, ap):
        s.add_argument("--generator", help="rosinality .pt / NVIDIA .pkl (default: the embedded procedural64.pt)")
        s.add_argument("--device", default="cpu")
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = parser().parse_args(argv)
    args.command_line = " ".join([PROG, *argv])
    with one_line_errors(PROG):
        {"fit-boundary": fit_boundary, "ganspace": ganspace, "sefa": sefa, "apply": apply}[args.command](args)
    return 0
