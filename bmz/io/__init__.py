"""Reading and writing the images bmz encodes: NIfTI, DICOM and NumPy ``.npy``.

Every reader returns a :class:`Volume`: the STORED integer values of the image as an array of
slices ``(n_slices, H, W)`` (slices always along axis 0, values never rescaled), plus a
JSON-serialisable ``meta`` dict holding everything needed to rebuild the original file (it is
stored verbatim in the ``.bmz`` container).

Public API::

    read(path, series=None) -> Volume        # .nii, .nii.gz, .npy, a DICOM file or a DICOM folder
    write(volume, path, force=True, lossy=None) -> notes  # .nii, .nii.gz, .npy by the suffix;
                                             # a folder: DICOM series (bmz.io.dicom.write_dicom)
    list_series(folder) -> list[dict]        # the DICOM series in a folder

Layout of ``meta`` by source (each source's module documents its part in detail):

* NIfTI: ``{"nifti": {...}}`` -- on-disk header bytes, bytes up to ``vox_offset`` (extensions),
  version, original shape and dtype (see :mod:`bmz.io.nifti`).
* DICOM: ``{"dicom": {...}, "bits_stored": int, "photometric": str}`` -- the files, slice order,
  geometry and how each file's kept bytes restore it (see :mod:`bmz.io.dicom`); the kept bytes
  themselves (every file but its pixel data, so that a lossless ``.bmz`` decodes to the
  original files) are the Volume's ``attachment`` (:mod:`bmz.io.dicom_kept`).
* NumPy: ``{"npy": {"dtype": str, "ndim": 2|3, "fortran_order": bool}}`` (see
  :mod:`bmz.io.numpy`).

A volume may be written to any supported format whatever its source (a DICOM series to
``.nii.gz``, a NIfTI to ``.npy``...). Where the source recorded an original dtype that bmz had to
convert (float with integer values, bool), writing restores it when the output format allows.

Shared rules (:func:`as_integer_array`): integer dtypes are taken as they are, 32/64-bit ones only
if their values fit 16 bits; float arrays only if every value is a finite integer (they are cast to
the smallest integer dtype that holds them and the original dtype is recorded); bool becomes
uint8 0/1; complex, object, string and structured (RGB) dtypes are refused.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, OutputError

__all__ = ["Volume", "SliceStack", "read", "write", "is_folder_output", "list_series",
           "SUPPORTED_INPUTS", "SUPPORTED_OUTPUTS"]

#: Human-readable list of the formats :func:`read` accepts (used in error messages).
SUPPORTED_INPUTS = "NIfTI (.nii, .nii.gz), DICOM (a file or a folder of one series), NumPy (.npy)"
#: Human-readable list of the formats :func:`write` produces (used in error messages).
SUPPORTED_OUTPUTS = ".nii, .nii.gz or .npy"


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
            pixel data (:mod:`bmz.io.dicom_kept`); ``None`` for other sources.
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


# --------------------------------------------------------------------------------------------
# format detection
# --------------------------------------------------------------------------------------------


def _suffix(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return path.suffix.lower()


def _sniff(path: Path) -> str:
    """Guess the format of the file at ``path``: ``'nifti'``, ``'numpy'``, ``'dicom'`` or
    ``'unknown'`` (by content first, then by suffix)."""
    try:
        with open(path, "rb") as f:
            head = f.read(544)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if head[:6] == b"\x93NUMPY":
        return "numpy"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head[:2] == b"\x1f\x8b":  # gzip: look at the NIfTI magic inside
        try:
            with gzip.open(path, "rb") as g:
                head = g.read(544)
        except (OSError, EOFError):
            return "unknown"
    if len(head) >= 348 and head[344:347] in (b"n+1", b"ni1"):
        return "nifti"
    if len(head) >= 8 and head[4:7] in (b"n+2", b"ni2"):
        return "nifti"
    suffix = _suffix(path)
    if suffix in (".dcm", ".dicom", ".ima"):
        return "dicom"
    return "unknown"


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------

from . import dicom as _dicom  # noqa: E402  (the submodules use the helpers above)
from . import nifti as _nifti  # noqa: E402
from . import numpy as _numpy  # noqa: E402


def read(path: str | os.PathLike, series: str | None = None, lazy: bool = False,
         keep_encapsulated: bool = False) -> Volume:
    """Read an image file or DICOM folder into a :class:`Volume`.

    With ``lazy``, a NIfTI or ``.npy`` volume's ``data`` is a :class:`SliceStack` that reads one
    slice at a time from the file (after one pass checking every slice), so that encoding a
    volume of any size holds only a few slices; a DICOM series is read whole either way.

    Args:
        path: a ``.nii``/``.nii.gz`` file (NIfTI-1 or -2), a ``.npy`` file, a DICOM file, or a
            folder holding DICOM files (searched recursively).
        series: for a DICOM folder with several series, which one: a whole SeriesInstanceUID,
            a SeriesNumber (digits only: always a series number), or a prefix of exactly one
            series' UID. Only valid for DICOM input.
        keep_encapsulated: DICOM only: also keep the encapsulated (compressed) pixel bytes of
            compressed originals, so that a lossless decode gives them back byte-identical
            (otherwise their pixels come back native, every other element identical).

    Raises:
        InputError: the path does not exist, is not a supported format, or holds an image bmz
            cannot encode (the message names the file and the reason).
        MissingDependencyError: a compressed DICOM needs a decoder package that is not installed.
    """
    p = Path(os.fspath(path))
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    if p.is_dir():
        return _dicom.read_dicom(p, series=series, keep_encapsulated=keep_encapsulated)
    kind = _sniff(p)
    if kind == "unknown" and _suffix(p) == "":
        # a DICOM file without the 128-byte preamble and without a suffix (e.g. "IM0001")
        ds = _dicom._open(p, strict=False)
        if ds is not None and _dicom._is_image(ds):
            kind = "dicom"
    if kind == "unknown":
        suffix = _suffix(p)
        if suffix in (".nii", ".nii.gz"):
            raise InputError(f"{p}: not a valid NIfTI file (no NIfTI header found)")
        if suffix == ".npy":
            raise InputError(f"{p}: not a valid .npy file (no NumPy header found)")
        raise InputError(f"{p}: unknown or unsupported file format; bmz reads {SUPPORTED_INPUTS}")
    if series is not None and kind != "dicom":
        raise InputError(f"{p}: series= (--series) applies to DICOM input only")
    if keep_encapsulated and kind != "dicom":
        raise InputError(f"{p}: keep_encapsulated (--keep-encapsulated) applies to DICOM input "
                         "only")
    if kind == "nifti":
        return _nifti.read_nifti(p, lazy=lazy)
    if kind == "numpy":
        return _numpy.read_npy(p, lazy=lazy)
    return _dicom.read_dicom(p, series=series, keep_encapsulated=keep_encapsulated)


def write(volume: Volume, path: str | os.PathLike, force: bool = True,
          lossy: "_dicom.LossyCoding | None" = None) -> list[str]:
    """Write ``volume`` to ``path``; the format follows the suffix: ``.nii``, ``.nii.gz`` or
    ``.npy``; a folder (see :func:`is_folder_output`) gets a DICOM series, for a DICOM-origin
    volume decoded from a ``.bmz`` (``lossy`` says how it was compressed; see
    :func:`bmz.io.dicom.write_dicom`). The output appears atomically (complete or not at all).
    Returns notes on what the output could not keep as it was (DICOM).

    A NIfTI-origin volume written to NIfTI gets back its original header bytes (same affine,
    scaling, dtype and byte order); any other volume gets a new header (see
    :func:`bmz.io.nifti.write_nifti`). ``force=False`` refuses to overwrite an existing file.

    Raises:
        OutputError: unsupported output suffix, folder missing, file exists without ``force``,
            data that cannot be stored in the output dtype, or DICOM output of a volume that is
            not DICOM-origin.
    """
    p = Path(os.fspath(path))
    if not isinstance(volume, Volume):
        raise TypeError(f"write() expects a bmz.io.Volume, got {type(volume).__name__}")
    data = volume.data
    if not isinstance(data, (np.ndarray, SliceStack)) or data.ndim != 3:
        raise OutputError(
            f"{p}: Volume.data must be an array of slices (n_slices, H, W), got "
            f"{getattr(data, 'shape', type(data).__name__)}"
        )
    if is_folder_output(path):
        _dicom.check_dicom_source(volume.source, os.fspath(path))
        if lossy is None:
            raise OutputError(f"{os.fspath(path)}: DICOM output records the lossy compression; "
                              "pass lossy= (bmz.decode_file does)")
        return _dicom.write_dicom(volume, path, lossy=lossy, force=force)
    suffix = _suffix(p)
    if suffix in (".nii", ".nii.gz"):
        _nifti.write_nifti(volume, p, force=force)
    elif suffix == ".npy":
        _numpy.write_npy(volume, p, force=force)
    else:
        what = ("DICOM output goes to a folder (e.g. outdir/); "
                if suffix in (".dcm", ".dicom", ".ima") else "")
        raise OutputError(f"{p}: {what}cannot write '{suffix or p.name}'; write {SUPPORTED_OUTPUTS}")
    return []


def is_folder_output(path: str | os.PathLike) -> bool:
    """Whether :func:`write` writes a DICOM series folder at ``path``: an existing folder, a path
    ending in ``/``, or a name without a suffix."""
    text = os.fspath(path)
    p = Path(text)
    return p.is_dir() or text.endswith(("/", os.sep)) or _suffix(p) == ""


def list_series(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """The DICOM image series found (recursively) in ``folder``.

    Returns one dict per series, sorted by SeriesNumber then UID: ``{"uid": str,
    "description": str, "series_number": int | None, "n_files": int, "modality": str}``.
    Files that are not DICOM, or DICOM without pixel data, are ignored.
    """
    p = Path(os.fspath(folder))
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    if not p.is_dir():
        raise InputError(f"{p}: not a folder")
    return _dicom.list_series(p)
