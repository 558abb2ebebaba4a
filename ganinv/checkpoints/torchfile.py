"""Read ``torch.save`` files without ``torch.load``: the zip format (torch >= 1.6) and the legacy
format (what ``Storage.__reduce__`` still writes inside NVIDIA pickles), through the restricted
unpickler of :mod:`ganinv.checkpoints.allowlist`.

Why not ``torch.load(weights_only=True)``: its allow-list can only hand out real globals (the numpy
``dtype``/``scalar`` pair a checkpoint needs is exactly the gadget that reads a pointer from the
file), it admits sparse / meta / quantised / subclass tensors by default, and it allocates what a
storage record declares. Here every storage is checked against the bytes the file really holds
before it is allocated, storages are CPU, little-endian, of the dtypes in
``allowlist.TORCH_DTYPES``, and zip records must be stored uncompressed (as ``torch.save`` writes
them), so no declared size can exceed the file.
"""
import io
import zipfile

import torch

from .allowlist import TORCH, BadFileError, Storage, StorageKind, unpickle

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
LEGACY_HEAD = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."  # the pickled magic number


def _storage_kind(kind, name):
    if not isinstance(kind, StorageKind):
        raise BadFileError(f"{name}: storage of an unsupported type {kind!r:.60}")
    return kind.dtype


def _check_location(location, name):
    if not isinstance(location, str):
        raise BadFileError(f"{name}: storage location {location!r:.40} is not a device name")


def _flat(data, dtype, numel, name):
    """``numel`` elements of ``dtype`` from the bytes ``data`` (a copy we own)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    if len(data) != numel * itemsize:
        raise BadFileError(f"{name}: a storage declares {numel} x {itemsize} bytes but holds {len(data)}")
    if numel == 0:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(data if isinstance(data, bytearray) else bytearray(data), dtype=dtype)


def _load_zip(file, total, name, allowed):
    try:
        archive = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise BadFileError(f"{name} is truncated or corrupt ({e})") from None
    with archive:
        infos = {info.filename: info for info in archive.infolist()}
        pickles = [n for n in infos if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise BadFileError(f"{name} is a zip file but not a torch.save archive (no single data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]
        order = infos.get(prefix + "byteorder")
        if order is not None and archive.read(order).strip() not in (b"little", b""):
            raise BadFileError(f"{name} was saved big-endian; only little-endian files are supported")
        for info in infos.values():
            if info.compress_type != zipfile.ZIP_STORED:
                raise BadFileError(f"{name}: record {info.filename} is compressed; torch.save stores records raw")
            if info.header_offset + info.file_size > total:
                raise BadFileError(f"{name}: record {info.filename} declares {info.file_size} bytes, past the end "
                                   "of the file")
        storages = {}

        def storage(pid):
            if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
                raise BadFileError(f"{name}: persistent id {pid!r:.60} is not a tensor storage")
            _, kind, key, location, numel = pid
            dtype = _storage_kind(kind, name)
            _check_location(location, name)
            if key in storages:
                if storages[key].flat.dtype != dtype or storages[key].flat.numel() != numel:
                    raise BadFileError(f"{name}: storage {key} is declared twice, differently")
                return storages[key]
            info = infos.get(f"{prefix}data/{key}") if isinstance(key, str) else None
            if info is None:
                raise BadFileError(f"{name}: storage record {key!r:.40} is missing")
            if type(numel) is not int or numel < 0:
                raise BadFileError(f"{name}: storage {key} declares {numel!r:.20} elements")
            itemsize = torch.empty((), dtype=dtype).element_size()
            if info.file_size != numel * itemsize:
                raise BadFileError(f"{name}: storage {key} declares {numel} x {itemsize} bytes but its record "
                                 f"holds {info.file_size}")
            data = bytearray(info.file_size)  # read straight into the buffer the tensor keeps
            with archive.open(info) as record:
                if record.readinto(data) != info.file_size:
                    raise BadFileError(f"{name}: storage record {key} is truncated")
            storages[key] = Storage(_flat(data, dtype, numel, name))
            return storages[key]

        info = infos[pickles[0]]
        with archive.open(info) as f:
            return unpickle(f, info.file_size, name, allowed, storage)


def _load_legacy(file, size, name, allowed):
    """magic, protocol, sys_info, the object (storages as persistent ids), the storage keys, then
    each storage as int64 element count + raw bytes. Tensors are rebuilt while the object is read,
    before the bytes that follow it, so storages are allocated first (only as much as the rest of
    the file can hold, all storages together) and filled in place afterwards, as torch does."""
    head = [unpickle(file, size - file.tell(), name, allowed) for _ in range(3)]
    if head[0] != LEGACY_MAGIC or head[1] != LEGACY_PROTOCOL or not isinstance(head[2], dict):
        raise BadFileError(f"{name} is not a torch.save file (bad legacy header)")
    if head[2].get("little_endian", True) is not True:
        raise BadFileError(f"{name} was saved big-endian; only little-endian files are supported")
    storages, declared = {}, [0]

    def storage(pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] in ("storage", b"storage")):
            raise BadFileError(f"{name}: persistent id {pid!r:.60} is not a tensor storage")
        _, kind, key, location, numel, view = pid
        dtype = _storage_kind(kind, name)
        _check_location(location, name)
        if view is not None:
            raise BadFileError(f"{name}: storage views (pre-1.0 files) are not supported")
        if not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise BadFileError(f"{name}: storage {key!r:.40} declares {numel!r:.20} elements")
        if key not in storages:
            declared[0] += numel * torch.empty((), dtype=dtype).element_size()
            if declared[0] > size - file.tell():
                raise BadFileError(f"{name}: storages declare {declared[0]} bytes where "
                                 f"{size - file.tell()} remain in the file")
            storages[key] = Storage(torch.zeros(numel, dtype=dtype))
        if storages[key].flat.dtype != dtype or storages[key].flat.numel() != numel:
            raise BadFileError(f"{name}: storage {key} is declared twice, differently")
        return storages[key]

    obj = unpickle(file, size - file.tell(), name, allowed, storage)
    keys = unpickle(file, size - file.tell(), name, allowed)
    if not isinstance(keys, list) or sorted(keys) != sorted(storages):
        raise BadFileError(f"{name}: the storage key list does not match the storages used")
    for key in keys:
        flat = storages[key].flat
        count = file.read(8)
        if len(count) != 8 or int.from_bytes(count, "little", signed=True) != flat.numel():
            raise BadFileError(f"{name}: storage {key} is truncated or its size does not match")
        data = file.read(flat.numel() * flat.element_size())
        flat.copy_(_flat(data, flat.dtype, flat.numel(), name))
    return obj


def load(path, name=None, allowed=TORCH):
    """The object saved by ``torch.save`` in ``path`` (zip or legacy format), tensors on CPU."""
    name = name or str(path)
    with open(path, "rb") as f:
        head = f.read(len(LEGACY_HEAD))
        f.seek(0, 2)
        size = f.tell()
        f.seek(0)
        if head.startswith(b"PK\x03\x04"):
            return _load_zip(f, size, name, allowed)
        if head == LEGACY_HEAD:
            return _load_legacy(f, size, name, allowed)
    raise BadFileError(f"{name} is not a torch.save file")


def load_bytes(data, name, allowed=TORCH):
    """:func:`load` of a ``torch.save`` file held in ``data`` (bytes)."""
    file = io.BytesIO(data)
    if data.startswith(b"PK\x03\x04"):
        return _load_zip(file, len(data), name, allowed)
    if data.startswith(LEGACY_HEAD):
        return _load_legacy(file, len(data), name, allowed)
    raise BadFileError(f"{name} is not a torch.save file")
