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
  original files) are the Volume's ``attachment`` (:mod:`bmz.io.dicom.kept`).
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

import importlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, OutputError
from . import discover
from . import numpy as _numpy
from .volume import (SliceStack, Volume, as_integer_array, cast_exact,  # noqa: F401 (re-exported)
                     integer_slices, smallest_int_dtype)

__all__ = ["Volume", "SliceStack", "read", "write", "is_folder_output", "list_series",
           "SUPPORTED_INPUTS", "SUPPORTED_OUTPUTS"]



def _dicom():
    """:mod:`bmz.io.dicom`, imported when DICOM is read or written (pydicom is heavy: reading or
    writing NumPy, and decoding to it, does without)."""
    from . import dicom

    return dicom


def _nifti():
    """:mod:`bmz.io.nifti`, imported when NIfTI is read or written (nibabel, which imports
    scipy)."""
    from . import nifti

    return nifti


def __getattr__(name):
    # bmz.io.dicom / bmz.io.nifti stay reachable as attributes of bmz.io, imported on first use
    if name in ("dicom", "nifti"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: Human-readable list of the formats :func:`read` accepts (used in error messages).
SUPPORTED_INPUTS = "NIfTI (.nii, .nii.gz), DICOM (a file or a folder of one series), NumPy (.npy)"
#: Human-readable list of the formats :func:`write` produces (used in error messages).
SUPPORTED_OUTPUTS = ".nii, .nii.gz or .npy"


# --------------------------------------------------------------------------------------------
# dispatch by format
# --------------------------------------------------------------------------------------------


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
        return _dicom().read_dicom(p, series=series, keep_encapsulated=keep_encapsulated)
    kind = discover.sniff(p)
    if kind == "unknown" and discover.suffix(p) == "":
        # a DICOM file without the 128-byte preamble and without a suffix (e.g. "IM0001")
        if _dicom().is_dicom_image(p):
            kind = "dicom"
    if kind == "unknown":
        suffix = discover.suffix(p)
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
        return _nifti().read_nifti(p, lazy=lazy)
    if kind == "numpy":
        return _numpy.read_npy(p, lazy=lazy)
    return _dicom().read_dicom(p, series=series, keep_encapsulated=keep_encapsulated)


def write(volume: Volume, path: str | os.PathLike, force: bool = True,
          lossy: "dicom.LossyCoding | None" = None) -> list[str]:
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
        _dicom().check_dicom_source(volume.source, os.fspath(path))
        if lossy is None:
            raise OutputError(f"{os.fspath(path)}: DICOM output records the lossy compression; "
                              "pass lossy= (bmz.decode_file does)")
        return _dicom().write_dicom(volume, path, lossy=lossy, force=force)
    suffix = discover.suffix(p)
    if suffix in (".nii", ".nii.gz"):
        _nifti().write_nifti(volume, p, force=force)
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
    return p.is_dir() or text.endswith(("/", os.sep)) or discover.suffix(p) == ""


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
    return _dicom().list_series(p)
