"""Hostile files against every loader (issue 14, items 1 and 2): the numpy dtype/scalar gadget, files
that contain themselves or nest without end, declared sizes larger than the file, tensor kinds other
than dense CPU, and the paths that are not files. Each file is built here, byte by byte where
``pickle``/``torch.save`` would not write it. Each hostile load runs in a subprocess (a crash there
cannot take pytest down, and its exit status proves there was none): the loader must end with exit 2
and exactly one line on stderr naming the file, and the marker file a gadget would create must not
exist. Legitimate files must still load exactly as ``torch.load`` reads them.
"""
import argparse
import ast
import collections
import errno
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ganinv.checkpoints import load_torch
from ganinv.checkpoints.allowlist import MAX_DEPTH, TORCH, unpickle_bytes
from ganinv.checkpoints.safe import load_storage_bytes
from ganinv.nets.stylegan2 import Generator

ROOT = Path(__file__).resolve().parent.parent

# A subprocess that calls loaders on files, as the entry points do: a ValueError (the contract of
# every loader for a bad file) is one line; anything else is a traceback and exit 1. With one
# (loader, path) pair it ends like an entry point (stderr line, exit 2); with several it prints one
# JSON line per pair on stdout and exits 0 (a crash on any pair ends it early, with no exit 0).
DRIVER = r"""
import json, sys
from ganinv.checkpoints import load_generator, load_inverter, load_torch
from ganinv.checkpoints.stylegan import describe
from ganinv.editing import load_direction

def resume(path):
    from ganinv.runner import SafeCheckpointIO
    return SafeCheckpointIO().load_checkpoint(path)

LOADERS = {"generator": load_generator, "info": describe, "inverter": load_inverter,
           "direction": load_direction, "resume": resume, "torch": load_torch}
pairs = list(zip(sys.argv[1::2], sys.argv[2::2]))
for loader, path in pairs:
    try:
        LOADERS[loader](path)
        message, rc = "loaded", 0
    except ValueError as e:
        message, rc = f"{loader}: {e}", 2
    if len(pairs) == 1:
        print(message, file=sys.stderr if rc else sys.stdout)
        sys.exit(rc)
    print(json.dumps({"path": path, "rc": rc, "message": message}), flush=True)
"""


def _run(pairs, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [str(x) for pair in pairs for x in pair]
    return subprocess.run([sys.executable, "-c", DRIVER, *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


def _run_many(pairs, cwd):
    """{path: (rc, message)} from one driver subprocess over all ``pairs``; it must end normally."""
    r = _run(pairs, cwd)
    assert r.returncode == 0, f"the loader process crashed (rc {r.returncode}): {r.stderr[-3000:]}"
    results = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(results) == len(pairs), r.stdout
    return {res["path"]: (res["rc"], res["message"]) for res in results}


def _assert_one_line_refusal(r, path, *fragments):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, f"rc {r.returncode}: {r.stderr[-2000:]}"
    assert len(lines) == 1 and str(Path(path).name) in lines[0], r.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# -- the numpy dtype / scalar gadget ----------------------------------------------------------------

class _Reduce:
    """Pickles as ``func(*args)`` [+ BUILD ``state``]: how a crafted file spells any call."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


POINTER = b"\x41" * 8  # what the scalar constructor would dereference


def _gadget_dtype_flags_cleared():
    """A structured dtype with an object field whose state clears the object flags (0, not 63), so
    numpy no longer treats it as holding objects; ``scalar`` then reads 8 file bytes as a PyObject*."""
    state = (3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 0)
    return _Reduce(np._core.multiarray.scalar, (_Reduce(np.dtype, ("V8", False, True), state), POINTER))


def _gadget_float_dtype_made_structured():
    """A float64 dtype (a class the old allow-list admitted) whose state turns it into a structured
    dtype with an object field and no object flags; then a scalar of it from 8 bytes."""
    state = (3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 0)
    return _Reduce(np._core.multiarray.scalar, (_Reduce(np.dtype, ("f8", False, True), state), POINTER))


def _gadget_object_dtype():
    """The object dtype itself with its flags cleared, then a scalar of it from 8 bytes."""
    state = (3, "|", None, None, None, -1, -1, 0)
    return _Reduce(np._core.multiarray.scalar, (_Reduce(np.dtype, ("O8", False, True), state), POINTER))


def _gadget_object_scalar():
    """The object dtype with numpy's own flags, then a scalar of it from 8 bytes."""
    state = (3, "|", None, None, None, -1, -1, 63)
    return _Reduce(np._core.multiarray.scalar, (_Reduce(np.dtype, ("O8", False, True), state), POINTER))


def _gadget_numeric_flags():
    """A float64 dtype given the object flags."""
    state = (3, "<", None, None, None, -1, -1, 63)
    return _Reduce(np._core.multiarray.scalar, (_Reduce(np.dtype, ("f8", False, True), state), POINTER))


def _gadget_array_of_pointers():
    """An object ndarray rebuilt from raw bytes (each 8 bytes a pointer)."""
    dtype = _Reduce(np.dtype, ("O8", False, True), (3, "|", None, None, None, -1, -1, 63))
    array = _Reduce(np._core.multiarray._reconstruct, (np.ndarray, (0,), b"b"), (1, (2,), dtype, False, POINTER * 2))
    return array


GADGETS = {"dtype_flags_cleared": _gadget_dtype_flags_cleared,
           "float_dtype_made_structured": _gadget_float_dtype_made_structured,
           "object_dtype_flags": _gadget_object_dtype,
           "object_scalar": _gadget_object_scalar, "numeric_dtype_object_flags": _gadget_numeric_flags,
           "object_array_from_bytes": _gadget_array_of_pointers}


def _write(kind, path, payload):
    """``payload`` inside the file a loader of ``kind`` reads, where a real file holds user data."""
    if kind in ("generator", "info"):
        torch.save({"g_ema": {"style.1.weight": torch.zeros(1)}, "args": payload}, path)
    elif kind == "nvidia":
        path.write_bytes(pickle.dumps({"G_ema": payload, "training_set_kwargs": {}}, protocol=4))
    elif kind == "inverter":
        torch.save({"state_dict": {}, "opts": {"encoder_type": "Encoder4Editing", "x": payload}}, path)
    elif kind == "direction":
        np.save(path, np.array({"boundary": payload}, dtype=object), allow_pickle=True)
    elif kind == "resume":
        torch.save({"state_dict": {}, "callbacks": {"best": payload}}, path)
    return path


# (loader the driver calls, file kind, suffix)
GADGET_ROUTES = [("generator", "generator", ".pt"), ("info", "nvidia", ".pkl"), ("inverter", "inverter", ".pt"),
                 ("direction", "direction", ".npy"), ("resume", "resume", ".ckpt")]


def test_numpy_gadget_is_refused_by_every_loader(tmp_path):
    """Every gadget variant through every loader route, in one loader process that must survive
    them all; each is refused with one line that names the file and the numpy construct."""
    pairs = []
    for gadget in sorted(GADGETS):
        for loader, kind, suffix in GADGET_ROUTES:
            pairs.append((loader, _write(kind, tmp_path / f"{gadget}_{kind}{suffix}", GADGETS[gadget]())))
    results = _run_many(pairs, tmp_path)
    for _, path in pairs:
        rc, message = results[str(path)]
        assert rc == 2 and "\n" not in message and path.name in message and "numpy" in message, message
    assert not (tmp_path / "marker").exists()


@pytest.mark.parametrize("loader, kind, suffix", GADGET_ROUTES, ids=[r[1] for r in GADGET_ROUTES])
def test_numpy_gadget_alone_exits_2_with_one_line(tmp_path, loader, kind, suffix):
    """The pointer-reading gadget alone in a fresh process per route: exit 2, one stderr line."""
    path = _write(kind, tmp_path / f"evil{suffix}", _gadget_dtype_flags_cleared())
    r = _run([(loader, path)], tmp_path)
    _assert_one_line_refusal(r, path, "numpy")


def test_numpy_gadget_through_invert_py_is_one_line(tmp_path):
    """The same file given to the real entry point (invert.py method=<encoder checkpoint>)."""
    path = _write("inverter", tmp_path / "evil.pt", _gadget_dtype_flags_cleared())
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (32, 32), (120, 80, 40)).save(tmp_path / "photos" / "face.png")
    r = subprocess.run([sys.executable, str(ROOT / "invert.py"), f"input={tmp_path / 'photos'}",
                        f"output={tmp_path / 'out'}",
                        f"method={path}", f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True,
                       cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert lines[0].startswith("invert.py: ") and "evil.pt" in lines[0] and "numpy" in lines[0]


def test_real_numpy_numbers_still_load_as_plain_python_values(tmp_path):
    """What official pSp/e4e files hold (``best_val_loss`` as np.float64) and numpy 1.x spellings."""
    values = {"f8": np.float64(0.25), "f4": np.float32(-1.5), "i8": np.int64(-7), "u1": np.uint8(200),
              "b": np.bool_(True), "c16": np.complex128(1 - 2j), "be": np.dtype(">f8").type(3.5),
              "arr": np.arange(6, dtype=np.int16).reshape(2, 3)}
    torch.save(values, tmp_path / "ok.pt")
    loaded = load_torch(tmp_path / "ok.pt")
    for key in ("f8", "f4", "i8", "u1", "b", "c16"):
        assert loaded[key] == values[key].item() and type(loaded[key]) is type(values[key].item()), key
    assert loaded["be"] == 3.5
    assert loaded["arr"].dtype == np.int16 and (loaded["arr"] == values["arr"]).all()
    legacy = pickle.dumps({"loss": np.float64(0.5)}, protocol=2)
    legacy = legacy.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert unpickle_bytes(legacy, "numpy 1.x pickle", TORCH) == {"loss": 0.5}


# -- objects that contain themselves, or nest without end --------------------------------------------

def _ops(*parts):
    return b"".join(p if isinstance(p, bytes) else p.encode() for p in parts)


def _str(s):
    data = s.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _self_containing_record():
    """An NVIDIA persistent record whose ``state['_modules']`` holds the record itself (set after the
    record was built, through the memo): ``pickle`` cannot write this, a crafted file can."""
    return _ops(b"\x80\x02}q\x00", _str("G_ema"),
                b"ctorch_utils.persistence\n_reconstruct_persistent_obj\n",
                b"}q\x01", _str("class_name"), _str("Generator"), b"s", _str("state"), b"}q\x02s",
                b"\x85Rq\x03",  # record = _reconstruct_persistent_obj(meta)
                b"s",  # outer['G_ema'] = record
                b"h\x02", _str("_modules"), b"}q\x04s0",  # state['_modules'] = {}
                b"h\x04", _str("self"), b"h\x03s0",  # _modules['self'] = record
                b".")


def _nested_lists(depth):
    return b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."


def _torch_zip(path, data_pkl, records=(), compress=False):
    """A torch.save-style archive written by hand: ``archive/data.pkl`` + ``archive/data/<key>``."""
    mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", mode) as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        for key, data in records:
            z.writestr(f"archive/data/{key}", data)
    return path


class _StoragePickler(pickle.Pickler):
    """Pickles ``_StorageRef`` objects as torch storage persistent ids of our choosing."""

    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, _StorageRef) else None


class _StorageRef:
    def __init__(self, *pid):
        self.pid = pid


def _pickle_with_storages(obj):
    buf = io.BytesIO()
    _StoragePickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _tensor(storage, offset, size, stride):
    return _Reduce(torch._utils._rebuild_tensor_v2, (storage, offset, size, stride, False, collections.OrderedDict()))


def _files(tmp_path):
    """(case id, loader, path, expected fragment of the one-line message)."""
    d = tmp_path
    cases = []

    def add(case, loader, path, fragment):
        cases.append((case, loader, path, fragment))

    looped = []
    looped.append(looped)
    torch.save({"g_ema": looped}, d / "self_list.pt")
    add("list that contains itself (.pt)", "generator", d / "self_list.pt", "contains itself")
    loop = {}
    loop["me"] = loop
    torch.save({"state_dict": {}, "opts": loop}, d / "self_dict.pt")
    add("dict that contains itself (encoder opts)", "inverter", d / "self_dict.pt", "contains itself")
    (d / "self_record.pkl").write_bytes(_self_containing_record())
    add("NVIDIA record that contains itself", "info", d / "self_record.pkl", "contains itself")
    (d / "deep.pkl").write_bytes(_nested_lists(50_000))
    add("lists nested 50000 deep (.pkl)", "info", d / "deep.pkl", f"deeper than {MAX_DEPTH}")
    _torch_zip(d / "deep.pt", _nested_lists(50_000))
    add("lists nested 50000 deep (.pt)", "torch", d / "deep.pt", f"deeper than {MAX_DEPTH}")

    # declared sizes
    with open(d / "huge.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)})
    add(".npy header declaring 1e12 floats", "direction", d / "huge.npy", "declares")
    _torch_zip(d / "huge_storage.pt", _pickle_with_storages(
        {"w": _tensor(_StorageRef("storage", torch.FloatStorage, "0", "cpu", 10**12), 0, (10**12,), (1,))}),
        [("0", b"\0" * 16)])
    add("zip storage declaring 1e12 floats, 16 bytes held", "torch", d / "huge_storage.pt", "declares")
    _torch_zip(d / "past_end.pt", _pickle_with_storages(
        {"w": _tensor(_StorageRef("storage", torch.FloatStorage, "0", "cpu", 4), 2, (4,), (1,))}),
        [("0", b"\0" * 16)])
    add("tensor view past the end of its storage", "torch", d / "past_end.pt", "reaches element")
    _torch_zip(d / "missing_record.pt", _pickle_with_storages(
        {"w": _tensor(_StorageRef("storage", torch.FloatStorage, "7", "cpu", 4), 0, (4,), (1,))}))
    add("storage record missing", "torch", d / "missing_record.pt", "missing")
    _torch_zip(d / "compressed.pt", _pickle_with_storages({"w": 1}), [("0", b"\0" * 4096)], compress=True)
    add("compressed records (a zip bomb's way in)", "torch", d / "compressed.pt", "compressed")
    buf = io.BytesIO()
    torch.save(torch.zeros(4), buf, _use_new_zipfile_serialization=False)
    legacy = bytearray(buf.getvalue())
    at = legacy.rindex(b"K\x04N")  # the storage's numel (4) in its persistent id
    legacy[at:at + 3] = b"J" + struct.pack("<i", 2**30) + b"N"
    (d / "legacy_huge.pt").write_bytes(bytes(legacy))
    add("legacy storage declaring 2^30 floats", "torch", d / "legacy_huge.pt", "declare")
    (d / "frame.pkl").write_bytes(b"\x80\x04\x95" + struct.pack("<Q", 10**15) + b"}.")
    add("pickle frame declaring 1e15 bytes", "info", d / "frame.pkl", "declares")
    (d / "bytes8.pkl").write_bytes(b"\x80\x04\x8e" + struct.pack("<Q", 10**15) + b".")
    add("BINBYTES8 declaring 1e15 bytes", "info", d / "bytes8.pkl", "declares")
    (d / "bytearray8.pkl").write_bytes(b"\x80\x05\x96" + struct.pack("<Q", 10**15) + b".")
    add("BYTEARRAY8 declaring 1e15 bytes", "info", d / "bytearray8.pkl", "declares")

    # opcodes used on what they were not made for (crafted streams, as NVIDIA .pkl files)
    streams = {
        "bytearray(1e12) by REDUCE": (b"\x80\x02cbuiltins\nbytearray\n\x8a\x06\x00\x10\xa5\xd4\xe8\x00\x85R.",
                                      "never from a size"),
        "SETITEM on a numpy dtype": (b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00f8\x89\x88\x87R"
                                     b"X\x01\x00\x00\x00kK\x01s.", "sets an item of a PlainDType"),
        "BUILD setting __class__": (b"\x80\x02cargparse\nNamespace\n)\x81}X\t\x00\x00\x00__class__"
                                    b"cargparse\nNamespace\nsb.", "plain attribute names"),
        "INST opcode": (b"\x80\x02(iargparse\nNamespace\n.", "INST/OBJ"),
        "NEWOBJ_EX of an allowed class": (b"\x80\x04\x95\x1e\x00\x00\x00\x00\x00\x00\x00\x8c\x0bcollections"
                                          b"\x94\x8c\x0bOrderedDict\x93)}\x92.", "INST/OBJ/NEWOBJ_EX"),
        "a persistent id": (b"\x80\x02X\x01\x00\x00\x00xQ.", "persistent ids"),
        "os.system by STACK_GLOBAL": (b"\x80\x04\x8c\x05posix\x8c\x06system\x93.", "'posix.system'"),
    }
    for i, (case, (data, fragment)) in enumerate(streams.items()):
        (d / f"stream{i}.pkl").write_bytes(data)
        add(case, "info", d / f"stream{i}.pkl", fragment)

    # tensor kinds
    torch.save({"g_ema": {"w": torch.eye(3).to_sparse()}}, d / "sparse.pt")
    add("sparse tensor in a state dict", "generator", d / "sparse.pt", "sparse tensor")
    torch.save({"g_ema": {"w": torch.empty(3, device="meta")}}, d / "meta.pt")
    add("meta-device tensor in a state dict", "generator", d / "meta.pt", "meta-device tensor")
    torch.save({"g_ema": {"w": torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8)}}, d / "quant.pt")
    add("quantised tensor", "generator", d / "quant.pt", "quantised tensor")
    torch.save({"state_dict": {"w": torch.eye(2).to_sparse_csr()}}, d / "csr.ckpt")
    add("sparse CSR tensor in a resume checkpoint", "resume", d / "csr.ckpt", "sparse tensor")

    # paths that are not checkpoint files
    (d / "a_dir.pt").mkdir()
    add("a directory as a checkpoint", "generator", d / "a_dir.pt", "is a directory")
    (d / "empty.pt").write_bytes(b"")
    add("an empty file", "inverter", d / "empty.pt", "empty")
    torch.save({"g_ema": {"w": torch.zeros(64)}}, d / "truncated.pt")
    (d / "truncated.pt").write_bytes((d / "truncated.pt").read_bytes()[:300])
    add("a truncated torch file", "generator", d / "truncated.pt", "corrupt")
    return cases


@pytest.mark.filterwarnings("ignore:.*quantized tensor creation:UserWarning", "ignore:Sparse CSR:UserWarning")
def test_loader_limits_table(tmp_path):
    """Every limit case in one loader process that must survive them all (no crash, no MemoryError,
    no RecursionError): each is one line naming the file and saying what is wrong."""
    cases = _files(tmp_path)
    results = _run_many([(loader, path) for _, loader, path, _ in cases], tmp_path)
    failures = []
    for case, _, path, fragment in cases:
        rc, message = results[str(path)]
        if not (rc == 2 and "\n" not in message and path.name in message and fragment in message):
            failures.append(f"{case}: rc {rc}: {message}")
    assert not failures, "\n".join(failures)


# -- legitimate files load as torch.load reads them -----------------------------------------------

def test_reader_equals_torch_load_on_real_files(tmp_path):
    """Zip and legacy format, shared storages, views with offsets and strides, every dtype we admit,
    0-d / empty tensors, parameters, OrderedDict metadata, Namespace and nested containers."""
    torch.manual_seed(0)
    g = Generator(16, 32, n_mlp=2, channel_max=16)
    base = torch.arange(24.0)
    obj = {"g_ema": g.state_dict(), "args": argparse.Namespace(size=16, lr=0.002, name="x"),
           "views": [base[3:9], base.view(4, 6).t(), base[::5]], "shared": base,
           "dtypes": {str(dt): torch.arange(5).to(dt) for dt in (torch.float16, torch.bfloat16, torch.int8,
                                                             torch.uint8, torch.int32, torch.bool, torch.float64)},
           "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 3), "param": torch.nn.Parameter(torch.ones(2)),
           "nested": {"a": (1, 2.5, "s", None, b"raw", {1, 2}, frozenset({3})), "c": 1 + 2j}}
    for legacy in (False, True):
        path = tmp_path / f"real_{legacy}.pt"
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
        ours = load_torch(path)
        theirs = torch.load(path, weights_only=False)
        assert ours["g_ema"].keys() == theirs["g_ema"].keys()
        assert getattr(ours["g_ema"], "_metadata", None) == getattr(theirs["g_ema"], "_metadata", None)
        for k, v in theirs["g_ema"].items():
            assert torch.equal(ours["g_ema"][k], v), k
        for a, b in zip(ours["views"], theirs["views"]):
            assert torch.equal(a, b) and a.stride() == b.stride()
        assert ours["views"][0].untyped_storage().data_ptr() == ours["shared"].untyped_storage().data_ptr()
        for k, v in theirs["dtypes"].items():
            assert ours["dtypes"][k].dtype == v.dtype and torch.equal(ours["dtypes"][k], v)
        assert vars(ours["args"]) == vars(theirs["args"])
        assert ours["nested"] == theirs["nested"] and torch.equal(ours["param"], theirs["param"])
        assert ours["scalar"].shape == () and ours["empty"].shape == (0, 3)


def test_storage_bytes_as_nvidia_pickles_carry_them():
    """``Storage.__reduce__`` writes legacy torch.save bytes; the reader returns that storage."""
    t = torch.randn(7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # TypedStorage is deprecated; NVIDIA's files have them
        func, (data,) = torch.storage.TypedStorage(wrap_storage=t.untyped_storage(), dtype=torch.float32).__reduce__()
    assert func.__name__ == "_load_from_bytes"
    assert torch.equal(load_storage_bytes(data, "net.pkl").flat, t)
    _, (raw,) = t.untyped_storage().__reduce__()
    assert torch.equal(load_storage_bytes(raw, "net.pkl").flat, t.view(torch.uint8))


# -- one allow-list, no other unpickling -----------------------------------------------------------

def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield ast.unparse(node.func), node
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                yield f"class({ast.unparse(base)})", node


def test_no_unpickling_outside_the_allow_list_module():
    """No ``torch.load``, ``pickle.load(s)``, ``numpy.load`` with pickles, or Unpickler subclass
    anywhere in the package or the entry points, except the restricted unpickler in allowlist.py."""
    found = []
    for path in [*(ROOT / "ganinv").rglob("*.py"), ROOT / "train.py", ROOT / "invert.py"]:
        rel = path.relative_to(ROOT).as_posix()
        for name, node in _calls(ast.parse(path.read_text())):
            if name in ("torch.load", "pickle.load", "pickle.loads", "pickle.Unpickler", "pickle._Unpickler",
                        "class(pickle.Unpickler)", "class(pickle._Unpickler)", "torch.serialization.load"):
                found.append(f"{rel}: {name}")
            if name in ("np.load", "numpy.load") and "allow_pickle" in ast.unparse(node):
                found.append(f"{rel}: {ast.unparse(node)}")
    assert found == ["ganinv/checkpoints/allowlist.py: class(pickle._Unpickler)"]


# -- writers ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_atomic_write_fault_names_the_file_and_leaves_nothing(tmp_path, monkeypatch, code):
    """A full disk / read-only folder while renaming into place (injected: os.replace raises, since
    the tests run as root): the error names the target, not the hidden temporary; no file remains."""
    from ganinv.checkpoints.safe import atomic_write

    def refuse(src, dst):
        raise OSError(code, os.strerror(code), src)

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError) as err:
        atomic_write(tmp_path / "out" / "g.pt", lambda f: f.write(b"data"))
    assert err.value.errno == code and err.value.filename == str(tmp_path / "out" / "g.pt")
    assert list((tmp_path / "out").iterdir()) == []
