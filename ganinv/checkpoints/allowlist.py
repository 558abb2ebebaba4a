"""The one allow-list of everything a file may ask ganinv to build while it is unpickled, and the
restricted unpickler that enforces it. Every loader in ganinv (torch files, NVIDIA ``.pkl``,
IDInvert ``.npy`` dicts) goes through :class:`RestrictedUnpickler`.

A pickle is a program: each ``GLOBAL`` names a callable that the stream then calls (``REDUCE``,
``NEWOBJ``) or whose instances it mutates (``BUILD``, ``SETITEM``, ``APPEND``). Python's and torch's
unpicklers hand out the *real* global. That is how the numpy gadget worked: ``numpy.dtype`` and its
``__setstate__`` let a file clear a structured dtype's object flag, and ``numpy.core.multiarray.scalar``
then read eight bytes of the file as a ``PyObject*``. Here no global is ever imported: each allowed
name maps to a small function of ours that checks its arguments and builds a plain value:

=========================================  =====================================================
names                                      what we build, and why it is safe
=========================================  =====================================================
``collections.OrderedDict``, ``builtins``  empty containers the stream then fills; ``SETITEM`` /
``set`` / ``frozenset`` / ``complex``      ``APPEND`` are allowed on our containers only, never on
                                           a tensor or a record
``_codecs.encode``, ``builtins.bytearray``  protocol-2 ``bytes``: a ``str`` re-encoded as latin-1, no
                                           other codec (codecs can import modules); a bytearray
                                           only from bytes, never from a size
``argparse.Namespace``                     rosinality's ``args``; filled only with ``str`` keys
``numpy.dtype``                            a :class:`PlainDType`: one of the fixed numeric kinds in
                                           ``NUMPY_KINDS`` with byte order ``<``/``>``/``|``/``=``, or
                                           ``object`` with exactly numpy's own object flags;
                                           structured, void and metadata states, and any other
                                           flags, are refused
``numpy.(_)core.multiarray.scalar``        a Python ``bool``/``int``/``float``/``complex`` unpacked
                                           with :mod:`struct` from exactly ``itemsize`` bytes
``numpy.(_)core.multiarray._reconstruct``  a numeric ``numpy.ndarray`` copied from exactly
+ ``numpy.ndarray``                        ``prod(shape) * itemsize`` bytes; an object array only
                                           from a list of items this unpickler already built (never
                                           from bytes: that is where a pointer would be read)
``torch.<Kind>Storage``, ``torch.<dtype>`` markers naming a dtype (immutable values)
``torch.Size``, ``torch.device``           from ``int``\\ s / a device ``str``
``torch._utils._rebuild_tensor_v2/v3``     a strided CPU tensor viewing a :class:`Storage` that the
                                           *file format reader* filled; offset, sizes and strides
                                           are checked to lie inside it
``torch._utils._rebuild_parameter*``       the same tensor (no hooks, no state)
=========================================  =====================================================

Everything else (sparse, meta, quantised, nested and subclass tensors included) is refused with one
line naming the file and the global. Declared lengths (frames, byte strings) are checked against the
bytes that remain in the file before anything is allocated, and the finished object is walked by
:func:`check_structure` (no container that contains itself, nesting depth at most ``MAX_DEPTH``).
"""
import _compat_pickle
import argparse
import collections
import io
import math
import pickle
import struct

import numpy as np
import torch

OBJECT_FLAGS = 63  # numpy's flags of the object dtype (NPY_OBJECT_DTYPE_FLAGS)
MAX_DEPTH = 200  # nesting of containers in a checkpoint; real ones stay below 20

# numpy dtype char -> (struct format, Python type) for the only numpy kinds a file may hold.
NUMPY_KINDS = {
    "?": ("?", bool), "b": ("b", int), "B": ("B", int), "h": ("h", int), "H": ("H", int),
    "i": ("i", int), "I": ("I", int), "l": ("q", int), "L": ("Q", int), "q": ("q", int), "Q": ("Q", int),
    "e": ("e", float), "f": ("f", float), "d": ("d", float), "F": ("ff", complex), "D": ("dd", complex),
}
# torch dtypes a tensor in a file may have.
TORCH_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
                torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128)
# Tensor kinds refused with a reason (the name of the rebuild function -> the kind).
REFUSED_TENSORS = {"_rebuild_sparse_tensor": "sparse", "_rebuild_meta_tensor_no_storage": "meta-device",
                   "_rebuild_qtensor": "quantised", "_rebuild_nested_tensor": "nested",
                   "_rebuild_wrapper_subclass": "subclass", "_rebuild_from_type_v2": "subclass",
                   "_rebuild_device_tensor_from_numpy": "numpy-backed",
                   "_rebuild_device_tensor_from_cpu_tensor": "device"}


class UnsafeCheckpointError(ValueError):
    """A file asked for something outside the allow-list; it was refused before anything ran."""


class BadFileError(ValueError):
    """A file is malformed or declares more than it holds; the message is one line naming it."""


class Storage:
    """A tensor storage read by a file-format reader: ``flat`` is a 1-D CPU tensor of its dtype."""

    __slots__ = ("flat",)

    def __init__(self, flat):
        self.flat = flat


class StorageKind:
    """What ``torch.FloatStorage`` (and friends) stand for in a file: a dtype, nothing callable."""

    __slots__ = ("dtype",)

    def __init__(self, dtype):
        self.dtype = dtype


class PlainDType:
    """``numpy.dtype(spec, align, copy)`` + its ``BUILD`` state, restricted to ``NUMPY_KINDS``."""

    __slots__ = ("np_dtype",)

    def __init__(self, spec, align=False, copy=False):
        if not isinstance(spec, str):
            raise ValueError(f"numpy dtype spec {type(spec).__name__} is not a plain dtype name")
        dtype = np.dtype(spec) if len(spec) <= 4 and spec.isascii() and spec.isalnum() else None
        if dtype is None or (dtype.char not in NUMPY_KINDS and spec != "O8") or dtype.fields is not None:
            raise ValueError(f"numpy dtype {spec!r} is not a plain numeric type")
        self.np_dtype = dtype

    def __setstate__(self, state):
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])
        flags = OBJECT_FLAGS if self.np_dtype.hasobject else 0  # the flags numpy itself gives the kind
        if not (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)
                and state[1] in ("<", ">", "|", "=") and state[2:5] == (None, None, None)
                and state[5:7] == (-1, -1) and state[7] == flags and (len(state) == 8 or state[8] is None)):
            raise ValueError(f"numpy dtype state {state!r:.80} is not that of a plain numeric type")
        order = {"=": "<"}.get(state[1], state[1])
        self.np_dtype = self.np_dtype.newbyteorder(order) if order != "|" else self.np_dtype

    def unpack(self, data):
        if self.np_dtype.char not in NUMPY_KINDS:
            raise ValueError(f"numpy scalar of {self.np_dtype}: only numeric scalars are read from bytes")
        fmt, kind = NUMPY_KINDS[self.np_dtype.char]
        order = ">" if self.np_dtype.byteorder == ">" else "<"
        if not isinstance(data, bytes) or len(data) != struct.calcsize(order + fmt):
            raise ValueError(f"numpy scalar of {self.np_dtype} with {len(data)} bytes of data")
        values = struct.unpack(order + fmt, data)
        return kind(*values)


def numpy_scalar(dtype, data):
    if not isinstance(dtype, PlainDType):
        raise ValueError("numpy scalar without a plain dtype")
    return dtype.unpack(data)


NDARRAY = object()  # what ``numpy.ndarray`` stands for: only an argument of _reconstruct


class PlainArray:
    """``_reconstruct(ndarray, (0,), b'b')`` + its ``BUILD`` state, resolved to ``value``."""

    __slots__ = ("value",)

    def __init__(self, cls, shape, typecode):
        if cls is not NDARRAY:
            raise ValueError("numpy array reconstruction of a class other than numpy.ndarray")
        self.value = None

    def __setstate__(self, state):
        # (version, shape, dtype, is_fortran, raw bytes | list of already unpickled objects)
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], PlainDType)
                and isinstance(state[1], tuple) and all(type(n) is int and n >= 0 for n in state[1])):
            raise ValueError("numpy array state is not that of a plain array")
        dtype, shape = state[2].np_dtype, state[1]
        if dtype.hasobject:  # the items were unpickled through this allow-list: plain values
            if not isinstance(state[4], list) or len(state[4]) != math.prod(shape):
                raise ValueError(f"numpy object array {shape} without its {math.prod(shape)} items")
            flat = np.empty(len(state[4]), dtype=object)
            for i, item in enumerate(state[4]):
                flat[i] = item
            self.value = flat.reshape(shape, order="F" if state[3] else "C")
            return
        if not isinstance(state[4], bytes):
            raise ValueError("numpy array state without raw bytes")
        if len(state[4]) != math.prod(shape) * dtype.itemsize:
            raise ValueError(f"numpy array {shape} of {dtype} with {len(state[4])} bytes of data")
        order = "F" if state[3] else "C"
        self.value = np.frombuffer(state[4], dtype=dtype).reshape(shape, order=order).copy(order="K")


def plain_bytearray(data=b"", encoding=None):
    """``bytearray(b'...')`` (protocol 3/4) or ``bytearray('...', 'latin-1')`` (protocol 2); never
    ``bytearray(n)``, which would allocate whatever size the file names."""
    if isinstance(data, bytes) and encoding is None:
        return bytearray(data)
    if not isinstance(data, str):
        raise ValueError(f"bytearray built from a {type(data).__name__}, not from bytes (never from a size)")
    return bytearray(latin1_bytes(data, encoding or ""))


def latin1_bytes(text, encoding="latin1"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ValueError("_codecs.encode other than str -> latin-1 bytes")
    return text.encode("latin-1")


def torch_size(dims=()):
    if not all(type(n) is int and n >= 0 for n in dims):
        raise ValueError("torch.Size of non-integers")
    return torch.Size(dims)


def torch_device(spec, index=None):
    if not isinstance(spec, str) or (index is not None and type(index) is not int):
        raise ValueError("torch.device of a non-string")
    return torch.device(spec) if index is None else torch.device(spec, index)


def _ints(values, what):
    if not isinstance(values, (tuple, list, torch.Size)) or not all(type(n) is int for n in values):
        raise ValueError(f"tensor {what} is not a list of integers")
    return tuple(values)


def rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                   metadata=None):
    """A strided view into ``storage``: the last element it can reach must lie inside the storage."""
    if not isinstance(storage, Storage):
        raise ValueError(f"tensor built from a {type(storage).__name__}, not a storage of the file")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride) or type(storage_offset) is not int or storage_offset < 0:
        raise ValueError("tensor with mismatched size/stride or a bad storage offset")
    if backward_hooks or metadata:
        raise ValueError("tensor with backward hooks or metadata")
    if any(s < 0 for s in stride):
        raise ValueError("tensor with a negative stride")
    numel = storage.flat.numel()
    if 0 not in size:
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= numel:
            raise ValueError(f"tensor {list(size)} at offset {storage_offset} reaches element {last} of a "
                             f"storage of {numel}")
    elif storage_offset > numel:
        raise ValueError("tensor offset past the end of its storage")
    return torch.as_strided(storage.flat, size, stride, storage_offset)


def rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                      metadata=None):
    if dtype not in TORCH_DTYPES or storage.flat.dtype != dtype:
        raise ValueError(f"tensor of dtype {dtype} built from a {storage.flat.dtype} storage")
    return rebuild_tensor(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata)


def rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, torch.Tensor) or backward_hooks or state:
        raise ValueError("parameter that is not a plain tensor")
    return data


def _containers():
    return {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "complex"): complex,
        ("builtins", "bytearray"): plain_bytearray,
        ("_codecs", "encode"): latin1_bytes,
        ("argparse", "Namespace"): argparse.Namespace,
    }


def _numpy():
    out = {("numpy", "dtype"): PlainDType, ("numpy", "ndarray"): NDARRAY}
    for core in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(core, "scalar")] = numpy_scalar
        out[(core, "_reconstruct")] = PlainArray
    return out


def _torch():
    out = {("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
           ("torch._utils", "_rebuild_tensor"): rebuild_tensor,
           ("torch._utils", "_rebuild_tensor_v3"): rebuild_tensor_v3,
           ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
           ("torch._utils", "_rebuild_parameter_with_state"): rebuild_parameter,
           ("torch", "Size"): torch_size, ("torch", "device"): torch_device,
           ("torch", "UntypedStorage"): StorageKind(torch.uint8),
           ("torch.storage", "UntypedStorage"): StorageKind(torch.uint8)}
    for dtype, name in torch.storage._dtype_to_storage_type_map().items():
        if dtype in TORCH_DTYPES:
            out[("torch", name)] = StorageKind(dtype)
    for dtype in TORCH_DTYPES:
        out[("torch", str(dtype).removeprefix("torch."))] = dtype
    return out


# The profiles loaders pick from: plain data (.npy dicts), torch files, and NVIDIA pickles (which
# add their own record stubs in ganinv.checkpoints.nvidia_pickle).
PLAIN = {**_containers(), **_numpy()}
TORCH = {**PLAIN, **_torch()}

# Classes a stream may instantiate with NEWOBJ / mutate with BUILD / fill with SETITEM(S) and APPEND(S).
NEWOBJ_CLASSES = (collections.OrderedDict, set, frozenset, argparse.Namespace)
BUILD_TYPES = (PlainDType, PlainArray, argparse.Namespace, collections.OrderedDict)
MAPPING_TYPES = (dict,)  # dict and its subclasses the stream built (OrderedDict, EasyDict stand-ins)
SEQUENCE_TYPES = (list, set)


class BoundedReader:
    """A binary file whose ``read(n)`` refuses, before allocating, any ``n`` past the end."""

    def __init__(self, file, size):
        self.file, self.end = file, file.tell() + size

    def remaining(self):
        return self.end - self.file.tell()

    def read(self, n=-1):
        if n is None or n < 0:
            n = self.remaining()
        if n > self.remaining():
            raise ValueError(f"a record declares {n} bytes where {self.remaining()} remain")
        return self.file.read(n)

    def readline(self):
        return self.file.readline(max(self.remaining(), 0))

    def tell(self):
        return self.file.tell()


def _refusal(module, name):
    kind = REFUSED_TENSORS.get(name)
    if kind:
        return f"holds a {kind} tensor ({module}.{name}); only dense CPU tensors are accepted"
    return f"refused to load global '{module}.{name}' (it was not imported or executed)"


class RestrictedUnpickler(pickle._Unpickler):
    """Python's own unpickler (the pure-Python one, so every opcode can be checked) with ``GLOBAL``
    resolved through ``allowed`` ({(module, name): our constructor}), ``BUILD``/``NEWOBJ``/item
    opcodes limited to the types above, and every declared length bounded by the file.
    ``persistent_load`` is the file format's (torch storages) or refuses."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, size, name, allowed, persistent_load=None):
        self.reader = BoundedReader(file, size)
        super().__init__(self.reader, encoding="bytes")
        self.name, self.allowed = name, allowed
        self.callables = {id(v) for v in allowed.values() if callable(v)}
        self._persistent = persistent_load

    def find_class(self, module, name):
        if self.proto < 3:  # Python 2 spellings that protocol-2 pickles use (__builtin__.set, ...)
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        found = self.allowed.get((module, name))
        if found is None:
            raise UnsafeCheckpointError(f"{self.name}: {_refusal(module, name)}")
        return found

    def persistent_load(self, pid):
        if self._persistent is None:
            raise ValueError("persistent ids are not used by this kind of file")
        return self._persistent(pid)

    def _check_callable(self, func):
        if id(func) not in self.callables:
            raise ValueError(f"the stream calls a {type(func).__name__} that is not an allowed constructor")

    def load_reduce(self):
        self._check_callable(self.stack[-2])
        super().load_reduce()
    dispatch[pickle.REDUCE[0]] = load_reduce

    def load_newobj(self):
        cls = self.stack[-2]
        stub = isinstance(cls, type) and issubclass(cls, dict) and id(cls) in self.callables
        if not (stub or any(cls is c for c in NEWOBJ_CLASSES)):
            raise ValueError(f"the stream instantiates {cls!r:.60}, which is not an allowed class")
        super().load_newobj()
    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_refused(self):
        raise ValueError("the stream uses INST/OBJ/NEWOBJ_EX/EXT opcodes, which checkpoints never need")
    for _op in (pickle.INST, pickle.OBJ, pickle.NEWOBJ_EX, pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_op[0]] = load_refused
    del _op

    def load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, (PlainDType, PlainArray)):
            inst.__setstate__(state)
            if isinstance(inst, PlainArray):  # the array replaces its placeholder everywhere
                self.stack[-1] = inst.value
                for key, value in list(self.memo.items()):
                    if value is inst:
                        self.memo[key] = inst.value
            return
        if not isinstance(inst, BUILD_TYPES) and not (isinstance(inst, dict) and id(type(inst)) in self.callables):
            raise ValueError(f"the stream sets the state of a {type(inst).__name__}")
        if state is None:
            return
        if not isinstance(state, dict) or not all(isinstance(k, str) and not k.startswith("__") for k in state):
            raise ValueError(f"the state of a {type(inst).__name__} is not a dict of plain attribute names")
        for key, value in state.items():
            setattr(inst, key, value)
    dispatch[pickle.BUILD[0]] = load_build

    def _target(self, types, what):
        target = self.stack[-1]
        if not isinstance(target, types):
            raise ValueError(f"the stream {what} a {type(target).__name__}")
        return target

    def load_setitem(self):
        value, key = self.stack.pop(), self.stack.pop()
        self._target(MAPPING_TYPES, "sets an item of")[key] = value
    dispatch[pickle.SETITEM[0]] = load_setitem

    def load_setitems(self):
        items = self.pop_mark()
        target = self._target(MAPPING_TYPES, "sets items of")
        for i in range(0, len(items) - 1, 2):
            target[items[i]] = items[i + 1]
    dispatch[pickle.SETITEMS[0]] = load_setitems

    def load_append(self):
        value = self.stack.pop()
        self._target((list,), "appends to").append(value)
    dispatch[pickle.APPEND[0]] = load_append

    def load_appends(self):
        items = self.pop_mark()
        self._target((list,), "appends to").extend(items)
    dispatch[pickle.APPENDS[0]] = load_appends

    def load_additems(self):
        items = self.pop_mark()
        self._target((set,), "adds to").update(items)
    dispatch[pickle.ADDITEMS[0]] = load_additems

    def load_bytearray8(self):
        (n,) = struct.unpack("<Q", self.read(8))
        self.append(bytearray(self.read(n)))  # read first: the length is checked against the file
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8


def check_structure(obj, name, records=()):
    """Walk what was unpickled: refuse a container that contains itself and nesting deeper than
    ``MAX_DEPTH`` (both would make later code recurse without end). Shared sub-objects are walked
    once, so a file of repeated references costs its size, not 2^depth. Instances of ``records``
    (stand-in classes of a loader) are walked through their ``state``."""
    done, on_path = set(), set()
    stack = [(obj, 0, False)]
    while stack:
        item, depth, leaving = stack.pop()
        if leaving:
            on_path.discard(id(item))
            done.add(id(item))
            continue
        if isinstance(item, records):
            children = [item.state]
        elif isinstance(item, argparse.Namespace):
            children = list(vars(item).values())
        elif isinstance(item, dict):
            children = [*item.keys(), *item.values()]
        elif isinstance(item, (list, tuple, set, frozenset)):
            children = list(item)
        else:
            continue
        if id(item) in on_path:
            raise BadFileError(f"{name} holds a {type(item).__name__} that contains itself")
        if id(item) in done:
            continue
        if depth > MAX_DEPTH:
            raise BadFileError(f"{name} nests containers deeper than {MAX_DEPTH} levels")
        on_path.add(id(item))
        stack.append((item, depth, True))
        stack.extend((child, depth + 1, False) for child in children)
    return obj


def unpickle(file, size, name, allowed, persistent_load=None, records=()):
    """Unpickle ``size`` bytes of ``file`` with :class:`RestrictedUnpickler`, then
    :func:`check_structure`. Refusals raise :class:`UnsafeCheckpointError`; anything malformed raises
    ValueError; both one line naming ``name``."""
    try:
        obj = RestrictedUnpickler(file, size, name, allowed, persistent_load).load()
    except (UnsafeCheckpointError, BadFileError):
        raise
    except RecursionError:
        raise BadFileError(f"{name} nests objects too deeply to be a checkpoint") from None
    except MemoryError:
        raise BadFileError(f"{name} declares more data than fits in memory") from None
    except Exception as e:  # a malformed stream surfaces as many exception types
        text = str(e).splitlines()[0] if str(e) else ""
        raise BadFileError(f"{name} is corrupt or not a supported file ({type(e).__name__}: {text})") from None
    return check_structure(obj, name, records)


def unpickle_bytes(data, name, allowed, persistent_load=None):
    return unpickle(io.BytesIO(data), len(data), name, allowed, persistent_load)
