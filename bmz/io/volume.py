"""The volume bmz's readers give and its writers take (:class:`Volume`, :class:`SliceStack`), and
the dtype rules they share (:func:`as_integer_array`, :func:`integer_slices`, :func:`cast_exact`):
see :mod:`bmz.io` for what they guarantee."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError, OutputError

__all__ = ["SliceStack", "Volume", "smallest_int_dtype", "as_integer_array", "integer_slices",
           "cast_exact"]


class SliceStack:
    """A stack of 2-D slices ``(n, H, W)`` produced one at a time: how bmz streams a volume through
    encode and decode without ever holding all of it.

    ``stack[k]`` (an integer ``k``) returns slice ``k`` as a C-contiguous 2-D array of ``dtype``;
    iteration yields the slices in order; ``shape``, ``dtype``, ``ndim``, ``size`` and ``nbytes``
    are those of the whole volume; ``np.asarray(stack)`` materialises it (for small volumes and
    tests). ``vmin``/``vmax`` hold the value range when the producer knows it (the lazy readers
    check every slice once when they open a file, so the encoder needs no further pass).
    Slices are not cached: reading slice ``k`` twice produces it twice.
    """

    ndim = 3

    def __init__(self, shape: tuple[int, int, int], dtype, get, vmin: int | None = None,
                 vmax: int | None = None, close=None):
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) != 3:
            raise ValueError(f"SliceStack shape must be (n, H, W), got {shape}")
        self.dtype = np.dtype(dtype)
        self._get = get
        self._close = close
        self.vmin, self.vmax = vmin, vmax

    @classmethod
    def of(cls, data) -> "SliceStack":
        """``data`` itself if it is a SliceStack, else a stack over an ``(n, H, W)`` array."""
        if isinstance(data, SliceStack):
            return data
        arr = np.asarray(data)
        return cls(arr.shape, arr.dtype, lambda k: np.ascontiguousarray(arr[k]))

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, k) -> np.ndarray:
        if not isinstance(k, (int, np.integer)):
            raise TypeError("a SliceStack is indexed by slice number only; use np.asarray(stack) "
                            "for other indexing")
        n = self.shape[0]
        k = int(k)
        if not -n <= k < n:
            raise IndexError(f"slice {k} out of range for {n} slices")
        a = self._get(k % n)
        if a.shape != self.shape[1:] or a.dtype != self.dtype:  # a producer bug, never user input
            raise RuntimeError(f"slice {k}: produced {a.shape} {a.dtype}, expected "
                               f"{self.shape[1:]} {self.dtype}")
        return a

    def __iter__(self):
        for k in range(self.shape[0]):
            yield self[k]

    def __array__(self, dtype=None, copy=None):
        out = np.empty(self.shape, dtype=self.dtype)
        for k in range(self.shape[0]):
            out[k] = self[k]
        return out if dtype is None else out.astype(dtype)

    def map(self, fn, dtype) -> "SliceStack":
        """A stack whose slice ``k`` is ``fn(self[k])`` (of ``dtype``)."""
        return SliceStack(self.shape, dtype, lambda k: fn(self[k]), close=self.close)

    def close(self) -> None:
        """Release what the producer holds open (a file); idempotent."""
        if self._close is not None:
            close, self._close = self._close, None
            close()


@dataclass
class Volume:
    """An image as bmz encodes it.

    Attributes:
        data: integer array ``(n_slices, H, W)`` of the STORED values (never rescaled), or a
            :class:`SliceStack` producing them slice by slice (``read(..., lazy=True)``), in the
            dtype stored on disk (uint8, int8, uint16, int16, int32, uint32...; possibly
            big-endian such as ``'>i2'``).
        source: ``'nifti'``, ``'dicom'`` or ``'numpy'``.
        meta: JSON-serialisable dict (str/int/float/bool/list/dict/None; bytes as base64 str) with
            everything needed to rebuild the original file.
        path: the file or folder it was read from, if any.
        attachment: bytes the source needs besides ``data`` and ``meta``, stored as the
            ``.bmz`` attachment (docs/FORMAT.md §5.6): for DICOM, every file's bytes but its
            pixel data (:mod:`bmz.io.dicom.kept`); ``None`` for other sources.
    """

    data: np.ndarray
    source: str
    meta: dict = field(default_factory=dict)
    path: str | None = None
    attachment: bytes | None = None

    @property
    def n_slices(self) -> int:
        """Number of slices (``data.shape[0]``)."""
        return int(self.data.shape[0])


# --------------------------------------------------------------------------------------------
# dtype rules shared by the readers and writers
# --------------------------------------------------------------------------------------------

_SMALL_INTS = (np.dtype(np.uint8), np.dtype(np.int8), np.dtype(np.uint16), np.dtype(np.int16))


def smallest_int_dtype(lo: int, hi: int) -> np.dtype | None:
    """The smallest of uint8, int8, uint16, int16 holding ``[lo, hi]``, or ``None``."""
    for dt in _SMALL_INTS:
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return dt
    return None


def as_integer_array(arr: np.ndarray, where: str) -> tuple[np.ndarray, str | None]:
    """Check that ``arr`` holds an integer image bmz can encode; convert it if needed.

    Returns ``(array, original_dtype)`` where ``original_dtype`` is ``None`` when the array is
    returned unchanged (an integer dtype), or the original ``dtype.str`` when it was converted
    (bool -> uint8; float with integer values -> smallest fitting integer dtype).

    Raises :class:`InputError` naming ``where`` (and the slice, for a 3-D array) for non-integer
    floats, NaN/inf, negative zeros, values outside 16 bits, complex/object/string/structured
    (e.g. RGB) dtypes and empty arrays. The rules are those of :func:`integer_slices`.
    """
    if arr.size == 0:
        raise InputError(f"{where}: empty image (shape {_shape_str(arr.shape)})")
    stack = SliceStack.of(arr.reshape((-1,) + arr.shape[-2:]) if arr.ndim >= 2
                          else arr.reshape(1, 1, -1))
    out, converted = integer_slices(stack, where, label_slices=arr.ndim == 3)
    if converted is None:
        return arr, None
    return np.asarray(out).reshape(arr.shape), converted


def integer_slices(stack: "SliceStack", where: str,
                   label_slices: bool = True) -> tuple["SliceStack", str | None]:
    """The dtype rules of bmz's readers, applied to a stack one slice at a time (one pass).

    Returns ``(stack, original_dtype)``: the same stack (integer dtypes; ``original_dtype`` None)
    or one converting each slice (bool -> uint8, integer-valued float -> the smallest integer
    dtype holding the whole volume's range; ``original_dtype`` its ``dtype.str``). The returned
    stack's ``vmin``/``vmax`` hold the volume's value range. Errors name ``where`` and the slice.
    """
    dt = stack.dtype
    if stack.size == 0:
        raise InputError(f"{where}: empty image (shape {_shape_str(stack.shape)})")
    if dt.fields is not None or dt.kind == "V":
        raise InputError(
            f"{where}: structured/RGB dtype {dt} is not supported; bmz encodes single-channel "
            "integer images"
        )
    if dt.kind not in "biuf":
        raise InputError(f"{where}: dtype {dt} is not supported; bmz encodes integer images")
    lo = hi = None
    for k, s in enumerate(stack):
        at = f"{where}: slice {k}" if label_slices else where
        if dt.kind == "f":
            if not np.all(np.isfinite(s)):
                raise InputError(f"{at}: has NaN or infinite values ({dt.name}); bmz encodes "
                                 "integer images")
            if not np.array_equal(np.round(s), s):
                raise InputError(f"{at}: has non-integer values ({dt.name}); bmz encodes integer "
                                 "images")
            if np.any(np.signbit(s) & (s == 0)):
                raise InputError(f"{at}: has negative zeros (-0.0) in a {dt.name} image, which an "
                                 "integer encoding cannot restore exactly")
        s_lo, s_hi = int(s.min()), int(s.max())
        lo = s_lo if lo is None else min(lo, s_lo)
        hi = s_hi if hi is None else max(hi, s_hi)
    assert lo is not None and hi is not None
    if dt.kind == "b":
        out = stack.map(lambda s: s.astype(np.uint8), np.uint8)
        out.vmin, out.vmax = lo, hi
        return out, dt.str
    target = smallest_int_dtype(lo, hi)
    if target is None and (dt.kind == "f" or dt.itemsize > 2):
        raise InputError(f"{where}: {dt.name} values span [{lo}, {hi}], outside the 16-bit range "
                         "bmz encodes")
    if dt.kind in "iu":
        stack.vmin, stack.vmax = lo, hi
        return stack, None
    out = stack.map(lambda s: s.astype(target), target)
    out.vmin, out.vmax = lo, hi
    return out, dt.str


def cast_exact(arr, dtype: np.dtype | str, where: str):
    """Cast ``arr`` (an array or a :class:`SliceStack`, cast lazily slice by slice) to ``dtype``
    if every value survives unchanged, else raise :class:`OutputError` naming ``where``."""
    dtype = np.dtype(dtype)
    if arr.dtype == dtype:
        return arr
    if isinstance(arr, SliceStack):
        return arr.map(lambda s: cast_exact(s, dtype, where), dtype)
    out = arr.astype(dtype)
    if dtype.kind == "b":
        ok = np.array_equal(out.astype(arr.dtype), arr)
    else:
        ok = np.array_equal(out, arr)
    if not ok:
        raise OutputError(
            f"{where}: values of the {arr.dtype.name} data do not fit the output dtype {dtype}"
        )
    return out


def _shape_str(shape: tuple[int, ...]) -> str:
    return "x".join(str(int(s)) for s in shape)
