"""Hostile inputs and real-world faults against invert.py (issue 14, items 3-5), table-driven.

Families: per-image isolation (undecodable names, corrupt files, broken links, alignment failures,
divergence), unique output keys, outputs never read back as inputs, symbolic links, writers that
survive faults (concurrent runs, foreign or garbage metrics.csv, write errors) and value checks
of the configuration. Where a case concerns the command line it is a subprocess of ``invert.py``
as a user runs it: exit 2 means exactly one ``invert.py: ...`` line on stderr and no traceback.

How write faults are injected, honestly: the tests run as root, for whom chmod does not stop a
write, and a read-only bind mount needs privileges CI may not have. So subprocess cases use
faults any user can create -- an output path under a regular file (ENOTDIR), a regular file where
a subfolder must go (EEXIST), a folder where metrics.csv must be -- and ENOSPC / EROFS / EACCES
are simulated in-process by monkeypatching ``os.open`` / ``os.mkdir`` / ``os.replace`` to raise
``OSError(errno.X)`` for paths under the chosen folder, which is what the kernel would do.
"""
import csv
import dataclasses
import errno
import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from conftest import compose_config

from ganinv import inversion
from ganinv.checkpoints import load_generator, save_atomic
from ganinv.data import align
from ganinv.data.folder import image_keys, walk_images
from ganinv.data.images import load_image, save_image
from ganinv.invert import inputs, run, settings
from ganinv.nets.idinvert_encoder import IDInvertEncoder
from ganinv.nets.stylegan2 import Generator
from ganinv.outputs import COLUMNS, is_output_folder, read_metrics

ROOT = Path(__file__).resolve().parent.parent
FAST = ["generator=checkpoint", "generator.path=g.pt", "inversion.steps=2", "inversion.n_mean_latent=100",
        "batch_size=2"]
HEADER = ",".join(COLUMNS)


def run_invert(*overrides, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_HOME": str(Path(cwd) / "torch_home")}
    return subprocess.run([sys.executable, str(ROOT / "invert.py"), *overrides], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def start_invert(*overrides, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_HOME": str(Path(cwd) / "torch_home")}
    return subprocess.Popen([sys.executable, str(ROOT / "invert.py"), *overrides], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd, env=env)


def summary_line(r):
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.strip().splitlines()[-1]


def one_error_line(r):
    """The single ``invert.py: ...`` line of a run that exited 2 (and had no traceback)."""
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("invert.py: ")]
    assert len(lines) == 1 and r.stderr.strip().splitlines()[-1] == lines[0], r.stderr[-3000:]
    return lines[0]


def metrics_keys(path):
    with open(path, newline="") as f:
        return [row["image"] for row in csv.DictReader(f)]


def flock_held(folder):
    """Whether some process holds a flock on ``folder`` (Linux /proc/locks: ``FLOCK ... dev:inode``)."""
    st = os.stat(folder)
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino} "
    return any("FLOCK" in line and ident in line for line in Path("/proc/locks").read_text().splitlines())


def leftovers(folder):
    return sorted(p.name for p in Path(folder).rglob("*.tmp"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """g.pt (a tiny 32 px generator), faces rendered by it, and the hostile input folder."""
    root = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    g = Generator(32, 64, n_mlp=2, channel_max=32).eval()
    save_atomic({"g_ema": g.state_dict()}, root / "g.pt")
    with torch.no_grad():
        faces = g(torch.randn(6, 64), noise_mode="const").clamp(-1, 1)
    h = root / "hostile"
    for name, face in zip(["x.png", "x.jpg", "x_png.png", "real/face.png"], faces):
        save_image(face, h / name)
    save_image(faces[4], root / "outside" / "face2.png")  # reachable only through the link below
    (h / "linked").symlink_to(root / "outside", target_is_directory=True)
    (h / "real" / "loop").symlink_to("..", target_is_directory=True)  # a cycle
    (h / "again").symlink_to("real", target_is_directory=True)  # a second path to a walked folder
    (h / "dead.png").symlink_to("nowhere.png")  # a broken link
    (h / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    save_image(faces[5], root / "tmp_bad.png")
    os.rename(bytes(root / "tmp_bad.png"), os.fsencode(h) + b"/bad\xff.png")  # a name that is not UTF-8
    old = h / "old_run"  # an earlier ganinv output folder inside the input folder
    save_image(faces[0], old / "reconstructions" / "x.png")
    (old / "metrics.csv").write_text(HEADER + "\nx,0.1,16,0.5,,1,\n")
    for name, face in zip(["a.png", "b.png"], faces):
        save_image(face, root / "two" / name)
    (root / "torch_home").mkdir()  # no pretrained LPIPS: metrics.csv lpips is blank, as on CI
    yield root
    shutil.rmtree(root, ignore_errors=True)


# -- unique keys: the rule, order independence ------------------------------------------------------
KEY_CASES = [
    ("issue-example", ["x.png", "x.jpg", "x_png.png"], ["x_png~2", "x_jpg", "x_png"]),
    ("plain-stems-untouched", ["a.png", "sub/a.png", "b.jpg"], ["a", "sub/a", "b"]),
    ("dots-in-folders", ["d.1/a.png", "d.1/a.jpg"], ["d_1/a_png", "d_1/a_jpg"]),
    ("suffix-skips-a-taken-key", ["x.png", "x.jpg", "x_png.png", "x_png~2.png"],
     ["x_png~3", "x_jpg", "x_png", "x_png~2"]),
    ("case-insensitive-file-systems", ["A.png", "a.png"], ["A_png", "a_png~2"]),
    ("two-groups-no-clash", ["k.png", "k.jpg", "k_png.png", "k_png.jpg"], ["k_png", "k_jpg", "k_png_png", "k_png_jpg"]),
    ("derived-against-derived", ["a.b.png", "a.b.jpg", "a_b.png", "a_b.jpg"],
     ["a_b_png", "a_b_jpg", "a_b_png~2", "a_b_jpg~2"]),
]


@pytest.mark.parametrize("rels, expected", [pytest.param(r, e, id=i) for i, r, e in KEY_CASES])
def test_keys_are_unique_and_independent_of_listing_order(rels, expected):
    keys, renames = image_keys(rels)
    assert keys == expected
    assert len({k.casefold() for k in keys}) == len(keys)
    assert renames == [f"{r} -> {k}" for r, k in zip(rels, keys) if k != str(Path(r).with_suffix(""))]
    for order in (rels[::-1], rels[1:] + rels[:1]):  # any listing order gives the same mapping
        again, _ = image_keys(order)
        assert dict(zip(order, again)) == dict(zip(rels, expected))


# -- the walk: symlinks once, excluded outputs, undecodable names -----------------------------------
def test_walk_follows_links_once_and_reports_the_rest(workdir):
    h = workdir / "hostile"
    found = walk_images(h, exclude=[h / "out"], is_excluded=is_output_folder)
    rels = [p.relative_to(h).as_posix() for p in found.paths]
    assert rels == ["corrupt.png", "linked/face2.png", "real/face.png", "x.jpg", "x.png", "x_png.png"]
    assert len(found.problems) == 2
    assert found.problems[0].startswith(f"{h}/dead.png: broken symbolic link (to nowhere.png)")
    assert found.problems[1] == f"{h}/bad\\xff.png: file name is not valid UTF-8; rename the file"
    assert sorted(found.notes) == sorted([
        f"{h}/old_run: an earlier ganinv output folder, not read as input",
        f"{h}/again: the same folder as {h}/real, walked once",
        f"{h}/real/loop: the same folder as {h}, walked once"])


# -- the CLI over the hostile folder: isolation, keys, links, output inside the input ---------------
def test_hostile_folder_inverts_every_usable_image_then_reruns_clean(workdir):
    h, out = workdir / "hostile", workdir / "hostile" / "out"  # the output folder inside the input
    args = ["input=hostile", "output=hostile/out", *FAST]
    line = summary_line(run_invert(*args, cwd=workdir))
    assert line.startswith("invert.py: 5 inverted, 0 already done, 3 unreadable (")
    for needle in ["hostile/bad\\xff.png: file name is not valid UTF-8", "hostile/dead.png: broken symbolic link",
                   "hostile/corrupt.png: not a recognised image format",
                   "2 output keys made unique (x.jpg -> x_jpg, x.png -> x_png~2)",
                   "hostile/real/loop: the same folder as hostile, walked once",
                   "hostile/again: the same folder as hostile/real",
                   "hostile/old_run: an earlier ganinv output folder"]:
        assert needle in line, line
    keys = {"x_png~2": "x.png", "x_jpg": "x.jpg", "x_png": "x_png.png", "real/face": "real/face.png",
            "linked/face2": "linked/face2.png"}
    assert sorted(metrics_keys(out / "metrics.csv")) == sorted(keys)
    g = load_generator(workdir / "g.pt")
    rows, _ = read_metrics(out / "metrics.csv")
    recons = {}
    for key, source in keys.items():  # each reconstruction belongs to its own input: nothing overwritten
        latent = torch.load(out / "latents" / f"{key}.pt", weights_only=True)
        recons[key] = load_image(out / "reconstructions" / f"{key}.png")
        noises = torch.load(out / "noises" / f"{key}.pt", weights_only=True)
        with torch.no_grad():
            again = g.synthesis(latent[None], noise_mode=noises)[0].clamp(-1, 1)
        assert (again - recons[key]).abs().max() <= 1 / 127.5 + 1e-5, key
        target = load_image(h / source)  # the row and files of a key belong to its own input file
        assert float(rows[key]["mse"]) == pytest.approx((recons[key] - target).pow(2).mean().item(), abs=2e-3)
    assert len({tuple(r.flatten()[:64].tolist()) for r in recons.values()}) == len(recons)

    second = summary_line(run_invert(*args, cwd=workdir))  # the outputs inside the input are not inputs
    assert second.startswith("invert.py: 0 inverted, 5 already done, 3 unreadable (")
    assert "hostile/out: the output folder, not read as input" in second
    assert sorted(metrics_keys(out / "metrics.csv")) == sorted(keys)
    assert not leftovers(workdir / "hostile")


def test_output_folder_that_is_the_input_folder_is_refused(workdir, tmp_path, capsys):
    """In process (the check runs before anything is built): one line, exit 2, nothing written."""
    (tmp_path / "same").mkdir()
    shutil.copy(workdir / "two" / "a.png", tmp_path / "same" / "a.png")
    cfg = _config(workdir, f"{tmp_path / 'same'}/", source=tmp_path / "same")
    with pytest.raises(SystemExit) as exit_:
        inversion.main(cfg)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (f"invert.py: output={tmp_path / 'same'}/: is the input folder itself; its "
                                       "outputs would be read as inputs on the next run: choose another output "
                                       "folder\n")
    assert sorted(p.name for p in (tmp_path / "same").rglob("*")) == ["a.png"]


# -- per-image isolation in process: alignment failure, divergence, an unexpected decoder error --------
def _config(workdir, out, *extra, source="two", generator=True):
    chosen = ["generator=checkpoint", f"generator.path={workdir / 'g.pt'}"] if generator else []
    return compose_config("invert", [f"input={workdir / source}", f"output={out}", *chosen, "inversion.steps=2",
                                     "inversion.n_mean_latent=100", "logger=none", *extra], out)


def _fail_alignment(monkeypatch):
    """align=true without dlib: landmarks are made up, and b.png has no face."""
    monkeypatch.setattr(align, "dlib_models", lambda: None)

    def landmarks(image, name):
        if name.endswith("b.png"):
            raise ValueError(f"{name}: no face found for alignment")
        lm = np.zeros((68, 2))
        lm[36:42], lm[42:48], lm[48], lm[54] = (11, 12), (21, 12), (13, 22), (19, 22)
        return lm
    monkeypatch.setattr(align, "face_landmarks", landmarks)
    return ["align=true"], "b.png: no face found for alignment"


def _diverge(monkeypatch):
    """b's latent becomes NaN inside the batch: it alone is reported and not written."""
    invert = run.InversionRun.invert

    def diverging(self, x, keys, name):
        result = invert(self, x, keys, name)
        ws = result.latents.clone()
        ws[keys.index("b")] = float("nan")
        return dataclasses.replace(result, latents=ws)
    monkeypatch.setattr(run.InversionRun, "invert", diverging)
    return [], None


def _plugin_crash(monkeypatch):
    """An image plugin raising something other than the usual OSError/ValueError for b.png."""
    load = inputs.load_image

    def crashing(path, size=None):
        if str(path).endswith("b.png"):
            raise IndexError("list index out of range")
        return load(path, size)
    monkeypatch.setattr(inputs, "load_image", crashing)
    return [], "b.png: IndexError: list index out of range"


@pytest.mark.parametrize("inject", [_fail_alignment, _diverge, _plugin_crash], ids=["alignment", "divergence",
                                                                                    "decoder-exception"])
def test_one_image_failing_never_stops_the_others(workdir, tmp_path, monkeypatch, inject):
    extra, unreadable = inject(monkeypatch)
    summary = inversion.invert(_config(workdir, tmp_path / "out", *extra))
    assert summary["inverted"] == 1 and summary["images"] == 1
    assert metrics_keys(tmp_path / "out" / "metrics.csv") == ["a"]
    assert (tmp_path / "out" / "latents" / "a.pt").is_file() and not (tmp_path / "out" / "latents" / "b.pt").exists()
    if unreadable is None:
        assert summary["diverged"] == ["b"] and summary["unreadable"] == []
    else:
        assert len(summary["unreadable"]) == 1 and unreadable in summary["unreadable"][0]
    if extra:  # aligned input of the image that worked is written
        assert load_image(tmp_path / "out" / "aligned" / "a.png").shape == (3, 32, 32)


# -- writers: concurrent runs ---------------------------------------------------------------------------
def test_a_second_run_into_a_locked_output_folder_refuses_with_one_line(workdir, tmp_path, capsys):
    """This test holds the output folder's flock, as a running invert.py does; a run in process
    refuses with one line before it builds anything (the subprocess race is the next test)."""
    out = tmp_path / "locked"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SystemExit) as exit_:
            inversion.main(_config(workdir, out))
    finally:
        os.close(fd)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (f"invert.py: output={out}: another invert.py run is writing into this "
                                       "folder (it holds the folder's lock); wait for it to finish or choose "
                                       "another output folder\n")
    assert list(out.iterdir()) == []


def test_two_concurrent_runs_lose_no_rows(workdir):
    """Two invert.py processes started together on one output folder: each either finishes (exit 0) or
    refuses with the one-line lock message (exit 2); no crash, and metrics.csv ends with every image
    exactly once. The second starts once /proc/locks shows the first holding the folder's flock
    (read there rather than probed with flock, which could make the first run refuse)."""
    out = workdir / "together"
    args = ["input=hostile", "output=together", *FAST, "inversion.steps=30"]
    first = start_invert(*args, cwd=workdir)
    deadline = time.time() + 120
    held = False
    while time.time() < deadline and first.poll() is None and not held:
        held = out.is_dir() and flock_held(out)
        time.sleep(0.05)
    second = start_invert(*args, cwd=workdir)
    results = []
    for p in (first, second):
        stdout, stderr = p.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    assert held, "the first run never held the output folder's lock"
    assert results[0].returncode == 0, results[0].stderr[-3000:]
    if results[1].returncode == 2:
        assert "another invert.py run is writing into this folder" in one_error_line(results[1])
    else:
        assert summary_line(results[1]).startswith("invert.py: 0 inverted, 5 already done")
    rows = metrics_keys(out / "metrics.csv")
    assert sorted(rows) == sorted(["x_png~2", "x_jpg", "x_png", "real/face", "linked/face2"])
    assert not leftovers(out)


# -- writers: a foreign or damaged metrics.csv -----------------------------------------------------------
def test_metrics_csv_without_an_image_column_is_refused_untouched(workdir):
    out = workdir / "foreign"
    out.mkdir()
    (out / "metrics.csv").write_text("step,loss\n1,0.5\n")
    line = one_error_line(run_invert("input=two", "output=foreign", *FAST, cwd=workdir))
    assert line == ("invert.py: foreign/metrics.csv: not a ganinv metrics file (its header 'step,loss' has no "
                    "'image' column); move it away or choose another output folder")
    assert (out / "metrics.csv").read_text() == "step,loss\n1,0.5\n"
    assert not (out / "latents").exists()


GARBAGE = [  # (row text, why it is ignored)
    ("b,0.2,13,0.4,,1,,extra", "line 3: 8 fields, the header has 7"),
    ("../../etc/passwd,0.1,16,0.5,,1,", "line 4: image key '../../etc/passwd' is not a relative path"),
    ("c,abc,16,0.5,,1,", "line 5: mse='abc' is not a number"),
    ("d\x00,0.1,16,0.5,,1,", "line 6: bytes that are not UTF-8 text (or NUL)"),
    ("e,nan,16,0.5,,1,", "line 7: mse is nan"),
    ("f,0.1,16,0.5,,1,/etc/passwd", "line 8: generator='/etc/passwd' leaves the output folder"),
]


def test_garbage_rows_are_ignored_reported_and_dropped(workdir):
    out = workdir / "garbage"
    args = ["input=two", "output=garbage", *FAST]
    summary_line(run_invert(*args, cwd=workdir))
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0] == HEADER and [r.split(",")[0] for r in rows[1:]] == ["a", "b"]
    good_a = rows[1]
    # b's only row becomes garbage: b must count as not done and be inverted again
    damaged = "\n".join([HEADER, good_a, *(text for text, _ in GARBAGE)]) + "\n"
    (out / "metrics.csv").write_bytes(damaged.encode())
    line = summary_line(run_invert(*args, cwd=workdir))
    assert line.startswith("invert.py: 1 inverted, 1 already done, 0 unreadable; over 2 images mse ")
    assert f"garbage/metrics.csv: {len(GARBAGE)} bad rows ignored and dropped (" in line
    for _, why in GARBAGE:
        assert why in line, line
    rows = (out / "metrics.csv").read_text().splitlines()  # rewritten with the valid rows only
    assert rows[0] == HEADER and rows[1] == good_a and [r.split(",")[0] for r in rows[1:]] == ["a", "b"]
    rows_read, bad = read_metrics(out / "metrics.csv")
    assert sorted(rows_read) == ["a", "b"] and bad == []
    mse = [float(r["mse"]) for r in rows_read.values()]
    assert f"over 2 images mse {sum(mse) / 2:.4f}" in line  # the means come from valid rows only


ROW = b"a,0.1,16,0.5,,1,"
READ_CASES = [  # (id, file bytes, rows kept, bad-row notes, or the refusal)
    ("spreadsheet-bom-and-crlf", b"\xef\xbb\xbf" + HEADER.encode() + b"\r\n" + ROW + b"\r\n", ["a"], [], None),
    ("empty-file", b"", [], [], None),
    ("latin-1-row", HEADER.encode() + b"\nb\xe9,0.1,16,0.5,,1,\n" + ROW + b"\n", ["a"],
     ["line 2: bytes that are not UTF-8 text (or NUL)"], None),
    ("huge-field", HEADER.encode() + b"\n" + b"x" * 200_000 + b",1\n" + ROW + b"\n", ["a"],
     ["line 2: field larger than field limit (131072)"], None),
    ("no-image-column", b"step,loss\n1,0.5\n", None, None, "its header 'step,loss' has no 'image' column"),
    ("repeated-column", b"image,image\na,b\n", None, None, "its header 'image,image' repeats a column"),
]


@pytest.mark.parametrize("data, kept, bad, refusal", [pytest.param(*c[1:], id=c[0]) for c in READ_CASES])
def test_metrics_csv_reader_keeps_good_rows_and_refuses_foreign_files(tmp_path, data, kept, bad, refusal):
    path = tmp_path / "metrics.csv"
    path.write_bytes(data)
    if refusal is not None:
        with pytest.raises(ValueError, match=f"^{path}: not a ganinv metrics file \\({refusal}\\)"):
            read_metrics(path)
        return
    rows, notes = read_metrics(path)
    assert sorted(rows) == kept and notes == bad
    if kept:
        assert rows["a"] == dict(zip(COLUMNS, ROW.decode().split(",")))


# -- writers: write faults as the user meets them (subprocess) -----------------------------------------
def _under_a_file(workdir):
    (workdir / "plainfile").write_text("a file, not a folder\n")
    # Hydra creates its run folder (= output) before invert.py's code runs; pointed elsewhere so that
    # the output folder reaches invert.py's own writer (see the report on invert.py)
    return ["output=plainfile/out", f"hydra.run.dir={workdir / 'runs' / 'under_a_file'}"], \
        "invert.py: plainfile/out: cannot write (Not a directory)", workdir / "plainfile"


def _under_a_file_as_typed(workdir):
    (workdir / "plainfile").write_text("a file, not a folder\n")
    # Hydra's own mkdir of its run folder fails first; ganinv.cli reports it (its wording)
    return ["output=plainfile/new"], "plainfile/new", workdir / "plainfile"


def _subfolder_is_a_file(workdir):
    out = workdir / "blocked"
    out.mkdir()
    (out / "latents").write_text("a file where the latents folder goes\n")
    return ["output=blocked"], "invert.py: blocked/latents/a.pt: cannot write (File exists at blocked/latents)", out


def _metrics_is_a_folder(workdir):
    out = workdir / "csvdir"
    (out / "metrics.csv").mkdir(parents=True)
    return ["output=csvdir"], "invert.py: csvdir/metrics.csv: cannot read (Is a directory)", out


@pytest.mark.parametrize("make", [_under_a_file, _under_a_file_as_typed, _subfolder_is_a_file, _metrics_is_a_folder],
                         ids=["new-output-under-a-file", "new-output-under-a-file-hydra-run-dir",
                              "one-subfolder-blocked", "metrics-csv-is-a-folder"])
def test_write_faults_are_one_line_naming_the_path(workdir, make):
    args, expected, folder = make(workdir)
    before = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) if folder.is_dir() else None
    line = one_error_line(run_invert("input=two", *args, *FAST, cwd=workdir))
    assert line == expected if expected.startswith("invert.py: ") else expected in line, line
    assert not leftovers(folder.parent if folder.is_file() else folder)
    if folder.is_dir():  # nothing partial: no latents, no metrics rows; at most the whole reconstruction
        after = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
        new = {p for p in set(after) - set(before) if not p.startswith((".hydra", "csv")) and not p.endswith(".log")}
        assert new <= {"reconstructions", "reconstructions/a.png"}, new


# -- writers: ENOSPC / EROFS / EACCES simulated in process ------------------------------------------------
def _refuse(monkeypatch, folder, code, calls=("open", "mkdir", "replace"), suffix=None):
    """Make os.open (for writing), os.mkdir and os.replace raise OSError(code) for paths under
    ``folder`` (optionally only destinations ending in ``suffix``), as a read-only or full file
    system would."""
    folder = os.path.realpath(folder)
    real = {name: getattr(os, name) for name in ("open", "mkdir", "replace")}

    def hit(path):
        path = os.path.realpath(os.fsdecode(path))
        return (path == folder or path.startswith(folder + os.sep)) and (suffix is None or path.endswith(suffix))

    def fake_open(path, flags, *args, **kwargs):
        if "open" in calls and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and hit(path):
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        return real["open"](path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if "mkdir" in calls and hit(path):
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        return real["mkdir"](path, *args, **kwargs)

    def fake_replace(src, dst, *args, **kwargs):
        if "replace" in calls and hit(dst):
            raise OSError(code, os.strerror(code), os.fsdecode(src), os.fsdecode(dst))
        return real["replace"](src, dst, *args, **kwargs)
    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    monkeypatch.setattr(os, "replace", fake_replace)


class Fault(NamedTuple):
    id: str
    prepare: str  # "new" (output folder absent), "existing" (empty, exists), "rerun" (a finished run exists)
    where: str  # the folder (relative to the output) the fault hits
    code: int
    calls: tuple
    suffix: object
    message: str  # {out} is the output folder


FAULTS = [
    Fault("read-only-new-folder", "new", "", errno.EROFS, ("mkdir",), None,
          "{out}: cannot write (Read-only file system)"),
    Fault("read-only-existing-folder", "existing", "", errno.EROFS, ("open", "mkdir", "replace"), None,
          "{out}: cannot write (Read-only file system)"),
    Fault("read-only-latents-subfolder", "existing", "latents", errno.EROFS, ("open", "mkdir", "replace"), None,
          "{out}/latents/a.pt: cannot write (Read-only file system)"),
    Fault("disk-full-on-a-latent", "existing", "latents", errno.ENOSPC, ("replace",), ".npy",
          "{out}/latents/a.npy: cannot write (No space left on device)"),
    Fault("permission-denied-on-metrics", "rerun", "metrics.csv", errno.EACCES, ("replace",), None,
          "{out}/metrics.csv: cannot write (Permission denied)"),
]


@pytest.mark.parametrize("fault", [pytest.param(f, id=f.id) for f in FAULTS])
def test_enospc_erofs_eacces_are_one_line_exit_2_nothing_partial(workdir, tmp_path, monkeypatch, capsys, fault):
    out = tmp_path / "out"
    if fault.prepare == "existing":
        (out / "latents").mkdir(parents=True)
    before_csv = None
    if fault.prepare == "rerun":  # a finished run on a; b is added and the rewrite of metrics.csv fails
        (tmp_path / "one").mkdir()
        shutil.copy(workdir / "two" / "a.png", tmp_path / "one" / "a.png")
        inversion.invert(_config(workdir, out, source=tmp_path / "one"))
        before_csv = (out / "metrics.csv").read_bytes()
    listing = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    _refuse(monkeypatch, out / fault.where if fault.where else out, fault.code, fault.calls, fault.suffix)
    with pytest.raises(SystemExit) as exit_:
        inversion.main(_config(workdir, out))
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"invert.py: {fault.message.format(out=out)}\n"
    monkeypatch.undo()
    assert not leftovers(tmp_path)
    new = sorted(set(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) - set(listing))
    if fault.id == "disk-full-on-a-latent":  # the whole files before the fault stay; no row, no .npy
        assert new == ["out/latents/a.pt", "out/reconstructions", "out/reconstructions/a.png"]
    elif fault.prepare == "rerun":
        assert (out / "metrics.csv").read_bytes() == before_csv  # the old file is whole and unchanged
    elif fault.id == "read-only-latents-subfolder":
        assert new == ["out/reconstructions", "out/reconstructions/a.png"]
    else:
        assert new == []
    if fault.prepare != "rerun":
        assert not (out / "metrics.csv").exists()
    again = inversion.invert(_config(workdir, out))  # after the fault is gone, a rerun completes
    assert sorted(metrics_keys(out / "metrics.csv")) == ["a", "b"]
    assert again["inverted"] + again["skipped"] == 2


# -- configuration values -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def encoders(workdir):
    """A tiny IDInvert checkpoint (decoder = g.pt's generator), a second generator of the same shape
    (another random init) and one of another resolution."""
    torch.manual_seed(1)
    enc = IDInvertEncoder(32, w_space_dim=64, encoder_channels_base=8, encoder_channels_max=32)
    g = load_generator(workdir / "g.pt")
    state = {f"encoder.{k}": v for k, v in enc.state_dict().items()}
    state.update({f"decoder.{k}": v for k, v in g.state_dict().items()})
    opts = {"encoder_type": "IDInvertEncoder", "start_from_latent_avg": False, "input_nc": 3}
    save_atomic({"state_dict": state, "opts": opts}, workdir / "enc.pt")
    torch.manual_seed(2)
    save_atomic({"g_ema": Generator(32, 64, n_mlp=2, channel_max=32).state_dict()}, workdir / "tuned.pt")
    save_atomic({"g_ema": Generator(64, 64, n_mlp=2, channel_max=32).state_dict()}, workdir / "g64.pt")
    return workdir


# inversion.n_mean_latent=0 / idinvert.n_mean_latent and seed ranges: in-process rows of
# tests/test_invert_cli.py::test_bad_settings_name_the_field (the same check_config, no process start)
CONFIG_CASES = [  # (id, overrides, the one line)
    ("seed-not-a-number", ["seed=abc"], "seed abc"),
    ("init-encoder-with-an-incompatible-generator", ["init=encoder", "encoder=enc.pt", "generator.path=g64.pt"],
     "invert.py: generator.path=g64.pt takes W+ codes [10, 64], but the encoder enc.pt gives [8, 64] (for the "
     "generator inside it); drop generator= to use the encoder's own generator, or give an encoder trained for "
     "this one"),
]


@pytest.mark.parametrize("overrides, message", [pytest.param(o, m, id=i) for i, o, m in CONFIG_CASES])
def test_bad_values_are_one_line_naming_the_key(encoders, overrides, message):
    out = encoders / "cfg" / overrides[0].split("=")[0]
    line = one_error_line(run_invert("input=two", f"output={out}", *FAST, *overrides, cwd=encoders))
    # seed's type is also checked by ganinv.cli before settings.check_config runs: either line names it
    assert line == message if message.startswith("invert.py: ") else all(w in line for w in message.split()), line
    assert not (out / "metrics.csv").exists()


def test_device_cuda_without_a_gpu_names_the_key(tmp_path, monkeypatch):
    """Whether this machine has a GPU or not, torch.cuda.is_available() is made False here."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "gpu"):
        cfg = compose_config("invert", ["input=x", "output=y", f"device={device}"], tmp_path)
        with pytest.raises(ValueError, match=rf"^device={device}: no CUDA GPU is available here "
                                             r"\(torch.cuda.is_available\(\) is False\); use device=cpu"):
            settings.check_config(cfg)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    cfg = compose_config("invert", ["input=x", "output=y", "device=mps"], tmp_path)
    with pytest.raises(ValueError, match=r"^device=mps: Apple's MPS backend is not available here"):
        settings.check_config(cfg)


def test_init_encoder_honours_the_generator_the_user_gave(encoders, tmp_path):
    """init=encoder with generator.path: the latents are optimised in (and rendered by) the user's
    generator, not the decoder inside the encoder file; with the default generator (none chosen)
    the encoder's own decoder is used."""
    tuned, own = load_generator(encoders / "tuned.pt"), load_generator(encoders / "g.pt")
    common = ["init=encoder", f"encoder={encoders / 'enc.pt'}", "inversion.latent_space=w+",
              "inversion.noise_init=const", "inversion.optimize_noise=false", "inversion.latent_noise=0"]
    cases = [("given", [f"generator.path={encoders / 'tuned.pt'}"], True, tuned, own),
             ("default", [], False, own, tuned)]
    for name, extra, chosen, generator, other in cases:
        out = tmp_path / name
        cfg = _config(encoders, out, *common, *extra, generator=chosen)
        inversion.invert(cfg)
        latent = torch.load(out / "latents" / "a.pt", weights_only=True)
        recon = load_image(out / "reconstructions" / "a.png")
        with torch.no_grad():
            expected = generator.synthesis(latent[None], noise_mode="const")[0].clamp(-1, 1)
            wrong = other.synthesis(latent[None], noise_mode="const")[0].clamp(-1, 1)
        assert (expected - recon).abs().max() <= 1 / 127.5 + 1e-5, name
        assert (wrong - recon).abs().max() > 4 / 127.5, name
