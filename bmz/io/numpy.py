"""NumPy ``.npy`` reading and writing.

Reading (:func:`read_npy`): a 2-D array ``(H, W)`` becomes one slice ``(1, H, W)``; a 3-D array is
taken as slices along axis 0: slice ``k`` is ``arr[k]`` (an ``(H, W, 3)`` array is H slices of
``(W, 3)``; bmz never treats a last axis of 3 as RGB in a ``.npy``). Other ranks are refused. Files are loaded with ``allow_pickle=False``.

dtypes follow :func:`bmz.io.as_integer_array`: integer dtypes as they are (byte order kept), 32/64
bit only within 16-bit values; ``bool`` is accepted as uint8 0/1; float only when every value is a
finite integer (cast to the smallest integer dtype); complex, object, string and structured
dtypes are refused. The original dtype is recorded, so writing restores bool/float.

``meta["npy"] = {"dtype": original dtype str, "ndim": 2 | 3, "fortran_order": bool}``.

Writing (:func:`write_npy`) restores, for a ``.npy``-origin volume, the original dtype, rank (a
2-D array comes back 2-D when there is one slice) and memory order. For a NIfTI-origin volume the
original on-disk dtype is restored (e.g. ``'>i2'``, or float32 for an integer-valued float file);
other volumes are written in their data dtype. The array written is always ``(n_slices, H, W)``
(slices along axis 0), so reading it back gives the same ``data``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .._fileutil import atomic_output
from ..errors import InputError
from .volume import SliceStack, Volume, as_integer_array, cast_exact, integer_slices


def _read_header(path: Path) -> tuple[tuple[int, ...], bool, np.dtype, int, int]:
    """Shape, fortran_order, dtype, data offset and file size from the ``.npy`` header."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = fmt.read_array_header_2_0(f)
            else:
                shape, fortran, dtype = fmt._read_array_header(f, version)  # type: ignore[attr-defined]  # v3.0
            start = f.tell()
            size = os.fstat(f.fileno()).st_size
    except (ValueError, OSError, SyntaxError, EOFError) as exc:
        raise InputError(f"{path}: not a valid .npy file ({exc})") from None
    return shape, fortran, dtype, start, size


def read_npy(path: Path, lazy: bool = False) -> Volume:
    """Read a 2-D or 3-D integer (or integer-valued float, or bool) ``.npy`` array.

    With ``lazy``, ``data`` is a :class:`~bmz.io.SliceStack` over a read-only memory map of the
    file: slices are read when asked for (after one pass checking every slice)."""
    path = Path(path)
    shape, fortran_order, dtype, start, size = _read_header(path)
    if dtype.hasobject:
        raise InputError(f"{path}: object dtype arrays are not supported (and never unpickled)")
    if dtype.fields is not None or dtype.kind == "V":
        raise InputError(
            f"{path}: structured/RGB dtype {dtype} is not supported; bmz encodes single-channel "
            "integer images"
        )
    if dtype.kind == "c":
        raise InputError(f"{path}: complex dtype {dtype} is not supported; bmz encodes integer images")
    if len(shape) not in (2, 3):
        raise InputError(
            f"{path}: {len(shape)}-D array {'x'.join(map(str, shape)) or 'scalar'}; bmz encodes "
            "2-D (H, W) and 3-D (slices, H, W) arrays"
        )
    if any(s == 0 for s in shape):
        raise InputError(f"{path}: empty array (shape {'x'.join(map(str, shape))})")
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size - start < need:  # refuse before allocating what the header claims
        raise InputError(f"{path}: truncated: its header declares a {'x'.join(map(str, shape))} "
                         f"{dtype} array ({need} bytes) but the file holds {size - start}")
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r" if lazy else None)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path}: cannot read the .npy data ({exc})") from None
    if lazy:
        arr3 = arr[np.newaxis] if arr.ndim == 2 else arr
        raw = SliceStack(arr3.shape, arr3.dtype, lambda k: np.ascontiguousarray(arr3[k]))
        data, _ = integer_slices(raw, str(path), label_slices=arr.ndim == 3)
    else:
        data, _ = as_integer_array(np.ascontiguousarray(arr), str(path))
        data = data[np.newaxis] if data.ndim == 2 else data
    meta = {"npy": {"dtype": dtype.str, "ndim": len(shape), "fortran_order": bool(fortran_order)}}
    return Volume(data=data, source="numpy", meta=meta, path=str(path))


def write_npy(volume: Volume, path: Path, force: bool = True) -> None:
    """Write ``volume`` as a ``.npy`` file (slices along axis 0), atomically, one slice at a time
    (an original in Fortran order with several slices interleaves them, and is assembled whole)."""
    path = Path(path)
    data = volume.data
    meta = volume.meta if isinstance(volume.meta, dict) else {}
    dtype = data.dtype
    ndim = 3
    fortran = False
    npy = meta.get("npy")
    nifti = meta.get("nifti")
    if isinstance(npy, dict):
        dtype = np.dtype(npy.get("dtype", dtype))
        ndim = int(npy.get("ndim", 3))
        fortran = bool(npy.get("fortran_order", False))
    elif isinstance(nifti, dict) and nifti.get("dtype"):
        dtype = np.dtype(nifti["dtype"])
    stack = SliceStack.of(cast_exact(data, dtype, str(path)))
    shape = stack.shape[1:] if ndim == 2 and stack.shape[0] == 1 else stack.shape
    fmt = np.lib.format
    with atomic_output(path, force=force) as f:
        if fortran and len(shape) == 3 and shape[0] > 1:
            fmt.write_array(f, np.asfortranarray(np.asarray(stack)), allow_pickle=False)
            return
        fmt.write_array_header_1_0(f, {"descr": fmt.dtype_to_descr(dtype),
                                       "fortran_order": fortran, "shape": tuple(shape)})
        for s in stack:
            f.write(s.tobytes(order="F" if fortran else "C"))
