"""Read a bmz weights file (``models/NAME.pt``) without PyTorch (docs/FORMAT.md §10.5.5).

    python tools/ptweights.py models/cnn-ae-8.pt      # list its tensors

A weights file is a ZIP archive (PyTorch's serialisation, format version 3) holding

* ``<root>/data.pkl`` — a pickle (protocol 2) of ``{"format": "bmz-weights/1", "model_name",
  "config", "state_dict"}``, where every tensor is the call
  ``torch._utils._rebuild_tensor_v2(storage, offset, shape, stride, requires_grad, hooks)``
  and ``storage`` is a *persistent id* ``("storage", <torch XStorage>, key, "cpu", numel)``;
* ``<root>/data/<key>`` — the raw bytes of each storage, little-endian (``<root>/byteorder``
  says ``little``), stored (not compressed).

This module implements exactly that, with Python's ``pickle`` restricted to the handful of names
the files use (nothing else can be constructed), and numpy for the arrays. It is the reference
for the description in docs/FORMAT.md §10.5.5 and is used by the independent spec decoder
(:mod:`tools.spec_decoder`); bmz itself loads weights with ``torch.load``.
"""

from __future__ import annotations

import io
import pickle
import sys
import zipfile
from collections import OrderedDict

import numpy as np

#: the storage classes a weights file may name → little-endian numpy dtype
STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "HalfStorage": "<f2",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class _Storage:
    def __init__(self, cls: str):
        self.cls = cls


class _Rebuild:
    """Stands for ``torch._utils._rebuild_tensor_v2``: builds a numpy array."""


def _rebuild_tensor(storage, offset, shape, stride, *_rest):
    arr, cls = storage
    item = arr.dtype.itemsize
    shape, stride = tuple(int(s) for s in shape), tuple(int(s) for s in stride)
    n = int(np.prod(shape)) if shape else 1
    if n == 0:
        return np.zeros(shape, dtype=arr.dtype)
    last = offset + sum((s - 1) * st for s, st in zip(shape, stride))
    if offset < 0 or last >= arr.size:
        raise ValueError("tensor reaches outside its storage")
    view = np.lib.stride_tricks.as_strided(arr[offset:], shape=shape,
                                           strides=tuple(st * item for st in stride))
    return np.array(view)  # a copy, C order


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, zf: zipfile.ZipFile, root: str):
        super().__init__(f)
        self._zf, self._root, self._cache = zf, root, {}

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch" and name in STORAGE_DTYPES:
            return _Storage(name)
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        raise pickle.UnpicklingError(f"weights file names {module}.{name}, which is not allowed")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _Storage)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, cls, key, _location, numel = pid
        if key not in self._cache:
            raw = self._zf.read(f"{self._root}/data/{key}")
            dt = np.dtype(STORAGE_DTYPES[cls.cls])
            if len(raw) != numel * dt.itemsize:
                raise ValueError(f"storage {key}: {len(raw)} bytes, expected {numel} × {dt.itemsize}")
            self._cache[key] = (np.frombuffer(raw, dtype=dt), cls.cls)
        return self._cache[key]


def read(path) -> dict:
    """``{"format", "model_name", "config", "state_dict": OrderedDict name → numpy array}``."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise ValueError(f"{path}: not a PyTorch zip archive (no <root>/data.pkl)")
        root = pkl[0].split("/")[0]
        if f"{root}/byteorder" in names and zf.read(f"{root}/byteorder") != b"little":
            raise ValueError(f"{path}: storages are not little-endian")
        blob = _Unpickler(io.BytesIO(zf.read(pkl[0])), zf, root).load()
    if not isinstance(blob, dict) or blob.get("format") != "bmz-weights/1":
        raise ValueError(f"{path}: not a bmz weights file")
    return blob


def main(argv=None) -> int:
    for p in argv if argv is not None else sys.argv[1:]:
        blob = read(p)
        print(f"{p}: {blob['model_name']} {blob['config']}")
        for k, v in blob["state_dict"].items():
            print(f"  {k:55s} {str(v.shape):22s} {v.dtype.str}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
