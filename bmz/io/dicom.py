"""DICOM reading and writing (pydicom 3): single files, series folders, enhanced multi-frame
files, and the same held in memory.

* :func:`read_dicom` (a path) and :func:`read_datasets` (pydicom Datasets, file objects or bytes,
  nothing touches the disk) give a :class:`Volume` whose ``attachment`` keeps every file's bytes
  but its pixel data (:mod:`bmz.io.dicom_kept`) and whose ``meta`` describes the series;
* :func:`write_dicom` (a folder, atomically) and :func:`series_files` (in memory) turn a
  decoded DICOM-origin volume back into its series: the original files for a lossless ``.bmz``,
  derived, lossy-marked files otherwise (the rules: :func:`series_files`; what changes:
  :mod:`bmz.io.dicom_derive`; the method string :data:`LOSSY_METHOD`).

What :func:`read_dicom` accepts:

* a single DICOM file: its frame(s) become the slices (a classic file gives ``(1, H, W)``, an
  enhanced multi-frame file ``(n_frames, H, W)``);
* a folder (searched recursively; hidden files ignored) holding ONE image series, or several
  series with ``series=`` choosing one: a whole SeriesInstanceUID, a SeriesNumber (a key of
  digits only is always a series number), or a prefix of exactly one series' UID. Several
  series and no choice -> :class:`InputError` listing them. Files that are not DICOM, or DICOM
  without PixelData (DICOMDIR, SR, presentation states...) are skipped. A series may hold
  several multi-frame files; their frames are all stacked.

Slice order: when every slice has ImagePositionPatient and the same ImageOrientationPatient
(per-frame functional groups for enhanced files) and their positions along the slice normal
``n = cross(row_cosines, col_cosines)`` are all distinct, slices are sorted by ``dot(n, position)``
(ascending). Otherwise (missing geometry, several orientations, repeated positions as in a time
series) by InstanceNumber, then file name and frame number; the rule used is recorded in
``meta["dicom"]["geometry"]["sorted_by"]``.

Pixel values are the STORED values (``ds.pixel_array``: no modality/VOI rescale), dtype from
BitsAllocated/PixelRepresentation as pydicom gives it (uint8/int8/uint16/int16, ``'>u2'``/``'>i2'``
for big-endian files; 32-bit only if values fit 16 bits). pydicom masks bits above BitsStored;
the kept bytes keep them (a lossless decode restores them). Compressed transfer syntaxes are
decoded by pydicom's plugins (pylibjpeg + pylibjpeg-libjpeg / -openjpeg, Pillow; RLE natively);
a missing decoder raises :class:`MissingDependencyError` naming the pip package. Colour
(SamplesPerPixel > 1 or PhotometricInterpretation other than MONOCHROME1/2), 1-bit pixel data
(segmentations), slices of different sizes or dtypes in one series, and files whose bytes would
not come back exactly from what bmz keeps are refused.

``meta`` layout (DICOM meta layout 2; layout 1, of older files, is :mod:`bmz.io.dicom_legacy`)::

    {"dicom": {
        "layout": 2,
        "multiframe": bool,            # an enhanced / multi-frame file is involved
        "files": [...],                # per file: name relative to the folder read (or basename)
        "order": [...],                # per slice (data[k]): the file name it came from
        "frames": [[file, frame], ...] # per slice: index into "files" and frame in that file
        "series_uid": str | None,
        "geometry": {"positions": [[x, y, z] | None per slice], "orientation": [6] | None,
                     "pixel_spacing": [row, col] | None, "slice_thickness": float | None,
                     "spacing_between_slices": float | None, "sorted_by": str,
                     "rescale": [[slope, intercept] per slice] | None},
        "kept": {...},                 # per file: how its kept bytes restore it
                                       # (bmz.io.dicom_kept.pack; the bytes: the attachment)
        "notes": [str, ...]},          # what a decode cannot give back as it was, per file
     "bits_stored": int, "photometric": str}

Files in "files" are in order of first appearance in the slices, so for a classic series
``files[k]`` is the file of slice ``k``.

:func:`nifti_geometry` turns that geometry into a NIfTI (RAS+) affine for DICOM -> NIfTI writing.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import BmzError, FormatError, InputError, MissingDependencyError, OutputError
from . import Volume, as_integer_array, dicom_kept
from .discover import has_dicom_preamble
from .dicom_derive import (LOSSY_METHOD, LossyCoding, derive, file_meta, set_series_range,
                           to_little_endian)

#: the DICOM meta layout bmz writes (``meta["dicom"]["layout"]``; 1: :mod:`bmz.io.dicom_legacy`)
LAYOUT = 2

__all__ = ["read_dicom", "read_datasets", "list_series", "write_dicom", "series_files",
           "SeriesFiles", "LossyCoding", "LOSSY_METHOD", "nifti_geometry", "dicom_datasets",
           "dicom_file_meta", "check_output_folder", "check_dicom_source", "summarise_notes"]

try:
    import pydicom
    from pydicom.dataset import Dataset, FileDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
except ImportError:  # pragma: no cover - pydicom is a hard dependency
    pydicom = None  # type: ignore[assignment]

# values larger than this are read only when needed (scanning a folder reads headers)
_BULK_LIMIT = 64 * 1024
_DICOM_SUFFIXES = {".dcm", ".dicom", ".ima", ""}

# pip packages that provide pydicom decoders, by transfer syntax family
_JPEG = "pylibjpeg pylibjpeg-libjpeg"
_J2K = "pylibjpeg pylibjpeg-openjpeg"
_PIP_FOR_TS = {
    "1.2.840.10008.1.2.4.50": _JPEG,  # JPEG Baseline
    "1.2.840.10008.1.2.4.51": _JPEG,  # JPEG Extended
    "1.2.840.10008.1.2.4.57": _JPEG,  # JPEG Lossless
    "1.2.840.10008.1.2.4.70": _JPEG,  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": _JPEG,  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": _JPEG,  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90": _J2K,  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91": _J2K,  # JPEG 2000
    "1.2.840.10008.1.2.4.201": _J2K,  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": _J2K,  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": _J2K,  # HTJ2K
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",  # RLE (pydicom also decodes it itself)
}


def _require_pydicom() -> None:
    if pydicom is None:  # pragma: no cover
        raise MissingDependencyError("DICOM support needs pydicom: pip install pydicom")


# --------------------------------------------------------------------------------------------
# finding and opening files
# --------------------------------------------------------------------------------------------


def _open(path: Path, strict: bool) -> "Dataset | None":
    """Read a DICOM file's dataset (large values deferred). With ``strict`` (a file that claims to
    be DICOM, or the file the user named) errors raise :class:`InputError`; otherwise a file that
    does not parse as DICOM gives ``None``."""
    preamble = has_dicom_preamble(path)
    if not preamble and not strict and path.suffix.lower() not in _DICOM_SUFFIXES:
        return None
    try:
        return pydicom.dcmread(path, defer_size=_BULK_LIMIT, force=not preamble)
    except MemoryError:
        raise
    except Exception as exc:  # pydicom raises many kinds of errors on damaged or foreign files
        if strict or preamble:
            raise InputError(f"{path}: not a readable DICOM file ({exc})") from None
        return None


def _is_image(ds: "Dataset") -> bool:
    return "PixelData" in ds and "Rows" in ds and "Columns" in ds


def _scan(folder: Path) -> list[tuple[Path, "Dataset"]]:
    """All DICOM image files under ``folder`` (recursive, sorted by path, hidden ones skipped)."""
    found: list[tuple[Path, Dataset]] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            p = Path(root) / name
            ds = _open(p, strict=False)
            if ds is not None and _is_image(ds):
                found.append((p, ds))
    return found


def _str(ds: "Dataset", keyword: str, default: str = "") -> str:
    try:
        v = ds.get(keyword, default)
        return default if v is None else str(v)
    except Exception:
        return default


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _group(items: list[tuple[Path, "Dataset"]]) -> dict[str, list[tuple[Path, "Dataset"]]]:
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    for p, ds in items:
        groups.setdefault(_str(ds, "SeriesInstanceUID"), []).append((p, ds))
    return groups


def _series_info(uid: str, members: list[tuple[Path, "Dataset"]]) -> dict[str, Any]:
    ds = members[0][1]
    return {
        "uid": uid,
        "description": _str(ds, "SeriesDescription"),
        "series_number": _int(ds.get("SeriesNumber")),
        "n_files": len(members),
        "modality": _str(ds, "Modality"),
    }


def _sorted_infos(groups: dict[str, list]) -> list[dict[str, Any]]:
    infos = [_series_info(uid, m) for uid, m in groups.items()]
    infos.sort(key=lambda d: (d["series_number"] is None, d["series_number"] or 0, d["uid"]))
    return infos


def _describe(infos: list[dict[str, Any]]) -> str:
    return "; ".join(
        f"{d['uid'] or '(no SeriesInstanceUID)'} #{d['series_number']} "
        f"'{d['description']}' ({d['n_files']} files)"
        for d in infos
    )


def list_series(folder: Path) -> list[dict[str, Any]]:
    """The DICOM image series under ``folder``: ``[{"uid", "description", "series_number",
    "n_files", "modality"}, ...]`` sorted by SeriesNumber then UID."""
    _require_pydicom()
    return _sorted_infos(_group(_scan(Path(folder))))


def _select(groups: dict[str, list], series: str | None, where: Path) -> str:
    """The UID of the series to read (see :func:`read_dicom` for the rules)."""
    infos = _sorted_infos(groups)
    if series is None:
        if len(groups) == 1:
            return next(iter(groups))
        raise InputError(
            f"{where}: {len(groups)} DICOM series found; choose one with series= (CLI option "
            f"--series UID, UID prefix or series number): {_describe(infos)}"
        )
    key = str(series).strip()
    if key in groups:  # a whole SeriesInstanceUID
        return key
    if key.isdigit():  # a series number (never a UID prefix: every UID starts with digits)
        matches = [d for d in infos if d["series_number"] == int(key)]
        if len(matches) == 1:
            return matches[0]["uid"]
        if not matches:
            raise InputError(f"{where}: no DICOM series has number {key} (give a series number, a "
                             f"whole SeriesInstanceUID or an unambiguous prefix of one with a "
                             f"'.'); series are: {_describe(infos)}")
        raise InputError(f"{where}: several DICOM series have number {key}; choose one by its "
                         f"SeriesInstanceUID: {_describe(matches)}")
    matches = [d for d in infos if d["uid"].startswith(key)] if key else []
    if len(matches) == 1:
        return matches[0]["uid"]
    if not matches:
        raise InputError(f"{where}: no DICOM series matches '{key}'; series are: {_describe(infos)}")
    raise InputError(f"{where}: '{key}' is a prefix of several DICOM series' UIDs; give more of "
                     f"the UID: {_describe(matches)}")


# --------------------------------------------------------------------------------------------
# pixels
# --------------------------------------------------------------------------------------------


def _transfer_syntax(ds: "Dataset") -> "UID":
    fm = getattr(ds, "file_meta", None)
    ts = fm.get("TransferSyntaxUID") if fm is not None else None
    return UID(ts) if ts else ImplicitVRLittleEndian


def _check_monochrome(ds: "Dataset", where: str) -> None:
    spp = _int(ds.get("SamplesPerPixel", 1)) or 1
    photo = _str(ds, "PhotometricInterpretation", "MONOCHROME2").strip().upper()
    if spp != 1 or photo not in ("MONOCHROME1", "MONOCHROME2"):
        raise InputError(
            f"{where}: colour image ({photo}, {spp} samples per pixel); bmz encodes greyscale "
            "(MONOCHROME1/2) images"
        )


def _check_bits(ds: "Dataset", where: str) -> None:
    """Refuse what bmz cannot keep exactly: 1-bit pixels, an allocation other than 8/16/32."""
    alloc = _int(ds.get("BitsAllocated"))
    if alloc == 1:
        raise InputError(f"{where}: 1-bit pixel data (BitsAllocated 1, e.g. a segmentation or a "
                         "binary mask); bmz encodes images of 8 to 16 bits allocated")
    if alloc not in (8, 16, 32):
        raise InputError(f"{where}: BitsAllocated {alloc}; bmz encodes 8, 16 or 32 bits "
                         "allocated")


def _decode(ds: "Dataset", where: str) -> np.ndarray:
    """The stored pixel values of ``ds`` as ``(n_frames, rows, cols)``; errors name ``where``."""
    from pydicom.pixels import get_decoder

    ts = _transfer_syntax(ds)
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise InputError(
            f"{where}: pixel data in transfer syntax {ts.name} ({ts}) cannot be decoded"
        ) from None
    if not decoder.is_available:
        pkg = _PIP_FOR_TS.get(str(ts), "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg")
        raise MissingDependencyError(
            f"{where}: decoding {ts.name} pixel data needs a decoder plugin: pip install {pkg}"
        )
    try:
        arr = ds.pixel_array
    except MemoryError:
        raise
    except Exception as exc:
        raise InputError(f"{where}: cannot decode the {ts.name} pixel data ({exc})") from None
    rows, cols = int(ds.Rows), int(ds.Columns)
    return np.asarray(arr).reshape(-1, rows, cols)


# --------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------


def _floats(value: Any, n: int) -> list[float] | None:
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    if len(out) != n or not all(math.isfinite(v) for v in out):
        return None
    return out


def _float(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _first_item(ds: "Dataset | None", keyword: str) -> "Dataset | None":
    if ds is None:
        return None
    try:
        seq = ds.get(keyword)
        return seq[0] if seq else None
    except Exception:
        return None


def _frame_geometry(ds: "Dataset", n_frames: int) -> list[dict[str, Any]]:
    """Per frame: position, orientation, pixel spacing, thickness, spacing, rescale."""
    base = {
        "position": _floats(ds.get("ImagePositionPatient"), 3),
        "orientation": _floats(ds.get("ImageOrientationPatient"), 6),
        "pixel_spacing": _floats(ds.get("PixelSpacing"), 2),
        "thickness": _float(ds.get("SliceThickness")),
        "between": _float(ds.get("SpacingBetweenSlices")),
        "slope": _float(ds.get("RescaleSlope")),
        "intercept": _float(ds.get("RescaleIntercept")),
    }
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    try:
        per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    except Exception:
        per_frame = []
    if shared is None and not per_frame:
        return [dict(base) for _ in range(n_frames)]

    def from_groups(groups: "Dataset | None", out: dict[str, Any]) -> None:
        if groups is None:
            return
        item = _first_item(groups, "PlanePositionSequence")
        if item is not None and _floats(item.get("ImagePositionPatient"), 3):
            out["position"] = _floats(item.get("ImagePositionPatient"), 3)
        item = _first_item(groups, "PlaneOrientationSequence")
        if item is not None and _floats(item.get("ImageOrientationPatient"), 6):
            out["orientation"] = _floats(item.get("ImageOrientationPatient"), 6)
        item = _first_item(groups, "PixelMeasuresSequence")
        if item is not None:
            if _floats(item.get("PixelSpacing"), 2):
                out["pixel_spacing"] = _floats(item.get("PixelSpacing"), 2)
            if _float(item.get("SliceThickness")) is not None:
                out["thickness"] = _float(item.get("SliceThickness"))
            if _float(item.get("SpacingBetweenSlices")) is not None:
                out["between"] = _float(item.get("SpacingBetweenSlices"))
        item = _first_item(groups, "PixelValueTransformationSequence")
        if item is not None:
            if _float(item.get("RescaleSlope")) is not None:
                out["slope"] = _float(item.get("RescaleSlope"))
            if _float(item.get("RescaleIntercept")) is not None:
                out["intercept"] = _float(item.get("RescaleIntercept"))

    common = dict(base)
    from_groups(shared, common)
    frames = []
    for i in range(n_frames):
        g = dict(common)
        if i < len(per_frame):
            from_groups(per_frame[i], g)
        frames.append(g)
    return frames


def _sort_order(slices: list[dict[str, Any]]) -> tuple[list[int], str]:
    """Slice permutation and the rule used ('position', 'instance_number' or 'file_order')."""
    n = len(slices)
    if n > 1 and all(s["position"] and s["orientation"] for s in slices):
        o0 = np.array(slices[0]["orientation"])
        if all(np.allclose(s["orientation"], o0, atol=1e-4) for s in slices):
            normal = np.cross(o0[:3], o0[3:])
            keys = [float(np.dot(normal, s["position"])) for s in slices]
            if len({round(k, 4) for k in keys}) == n:
                return sorted(range(n), key=lambda i: keys[i]), "position"
    instances = [s["instance"] for s in slices]
    if n > 1 and None not in instances and len(set(instances)) > 1:
        return sorted(range(n), key=lambda i: (slices[i]["instance"], i)), "instance_number"
    return list(range(n)), "file_order"


def nifti_geometry(meta: dict, n_slices: int) -> tuple[np.ndarray | None, tuple[float, float] | None]:
    """A NIfTI affine (RAS+, for the array ``arr[i, j, k] = data[k, i, j]``) and ``(scl_slope,
    scl_inter)`` from the DICOM geometry in ``meta``; each is ``None`` when it cannot be made.

    Voxel ``(i, j, k)`` = (row, column, slice) lies at, in DICOM LPS,
    ``P_0 + i * dr * col_cosines + j * dc * row_cosines + k * step`` where ``P_0`` is the first
    slice's ImagePositionPatient, ``(dr, dc)`` = PixelSpacing and ``step`` = (P_last - P_0)/(n-1)
    for a position-sorted stack, else the normal times SpacingBetweenSlices (or SliceThickness,
    or 1 mm). LPS -> RAS negates the first two rows. Scaling is set only when every slice has the
    same RescaleSlope/Intercept and it is not the identity. For a volume holding a sub-range of
    the slices the geometry of the first slices of the file is used.
    """
    geo = (meta.get("dicom") or {}).get("geometry") or {}
    iop = geo.get("orientation")
    spacing = geo.get("pixel_spacing")
    positions = geo.get("positions") or []
    scaling = None
    rescale = geo.get("rescale")
    if rescale and all(r == rescale[0] for r in rescale) and rescale[0][0] is not None:
        slope, inter = float(rescale[0][0]), float(rescale[0][1] or 0.0)
        if slope != 0 and (slope, inter) != (1.0, 0.0):
            scaling = (slope, inter)
    if not iop or not spacing or not positions or positions[0] is None:
        return None, scaling
    row, col = np.array(iop[:3], float), np.array(iop[3:], float)
    normal = np.cross(row, col)
    if np.linalg.norm(normal) < 1e-6:
        return None, scaling
    normal /= np.linalg.norm(normal)
    p0 = np.array(positions[0], float)
    step = None
    if geo.get("sorted_by") == "position" and len(positions) > 1 and positions[-1] is not None:
        step = (np.array(positions[-1], float) - p0) / (len(positions) - 1)
        if np.linalg.norm(step) < 1e-6:
            step = None
    if step is None:
        dz = geo.get("spacing_between_slices") or geo.get("slice_thickness") or 1.0
        step = normal * abs(float(dz))
    dr, dc = float(spacing[0]), float(spacing[1])
    lps = np.eye(4)
    lps[:3, 0] = col * dr
    lps[:3, 1] = row * dc
    lps[:3, 2] = step
    lps[:3, 3] = p0
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, scaling


# --------------------------------------------------------------------------------------------
# meta
# --------------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """Make ``value`` JSON-serialisable: bytes -> base64, numbers -> int/float, NaN/inf -> str."""
    import base64

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else str(v)
    return str(value)


def _dicom_part(meta: dict) -> dict:
    """``meta["dicom"]`` of a Volume's meta (or ``meta`` itself when it is that part), of
    either layout."""
    part = meta.get("dicom", meta) if isinstance(meta, dict) else None
    if not isinstance(part, dict) or not ("kept" in part or "datasets" in part):
        raise ValueError("not the meta of a DICOM volume (no 'dicom' part with 'kept' or "
                         "'datasets')")
    return part


def dicom_datasets(meta: dict) -> list[dict[str, Any]]:
    """Layout 1 (older files) only: each file's dataset as DICOM-JSON
    (:func:`bmz.io.dicom_legacy.dicom_datasets`)."""
    from . import dicom_legacy

    return dicom_legacy.dicom_datasets(meta)


def dicom_file_meta(meta: dict) -> list[dict[str, Any]]:
    """Layout 1 (older files) only: each file's file meta as DICOM-JSON
    (:func:`bmz.io.dicom_legacy.dicom_file_meta`)."""
    from . import dicom_legacy

    return dicom_legacy.dicom_file_meta(meta)


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def read_dicom(path: Path, series: str | None = None, keep_encapsulated: bool = False) -> Volume:
    """Read a DICOM file, or the (chosen) series of a DICOM folder, into a :class:`Volume`
    whose ``attachment`` holds the files' kept bytes (:mod:`bmz.io.dicom_kept`; with
    ``keep_encapsulated`` the encapsulated pixel bytes of compressed originals too)."""
    _require_pydicom()
    path = Path(path)
    if path.is_dir():
        items = _scan(path)
        if not items:
            raise InputError(f"{path}: no DICOM images found in this folder")
        groups = _group(items)
        uid = _select(groups, series, path)
        members = groups[uid]
        base = path
    else:
        ds = _open(path, strict=True)
        if ds is None or "PixelData" not in ds:
            raise InputError(f"{path}: DICOM file without pixel data (not an image)")
        if "Rows" not in ds or "Columns" not in ds:
            raise InputError(f"{path}: DICOM pixel data without Rows/Columns")
        if series is not None:
            _select({_str(ds, "SeriesInstanceUID"): [(path, ds)]}, series, path)
        members = [(path, ds)]
        base = path.parent

    def rel(p: Path) -> str:
        try:
            return p.relative_to(base).as_posix()
        except ValueError:
            return p.name

    return _build([(str(p), rel(p), ds, p) for p, ds in members], path=str(path),
                  keep_encapsulated=keep_encapsulated)


def read_datasets(items: Any, keep_encapsulated: bool = False) -> Volume:
    """The :class:`Volume` of already-open DICOM data, all in memory (nothing is read from or
    written to disk): ``items`` is a pydicom ``Dataset``, a binary file object or ``bytes``
    holding a DICOM file, or a list of them, all of ONE series (several classic files, one or
    more multi-frame files). Slices are sorted as :func:`read_dicom` sorts a folder's.

    A dataset read from a file (``ds.filename``) keeps that file's base name as its stored name;
    others are named ``IM00001.dcm``, ``IM00002.dcm``... in the order given (the names
    :func:`write_dicom` gives the files it writes). Errors name the item (``dataset 3`` = the
    third, counting from 1) and what is wrong: not a dataset, not DICOM, no pixel data, no
    transfer syntax, colour, several series, sizes that differ.

    The bytes kept of each file (:mod:`bmz.io.dicom_kept`) are those given: bytes and file
    objects as they are, a ``Dataset`` as pydicom writes it (``dcmwrite`` without enforcing the
    file format: its preamble and file meta as they are).
    """
    _require_pydicom()
    if isinstance(items, (Dataset, bytes, bytearray, memoryview)) or hasattr(items, "read"):
        items = [items]
    elif isinstance(items, (str, os.PathLike)):
        raise InputError(f"{items}: a path; read files with bmz.io.read / bmz.encode_file, or "
                         "pass the open pydicom Dataset or file object")
    try:
        items = list(items)
    except TypeError:
        raise InputError(f"expected a pydicom Dataset, a binary file object or bytes (or a list "
                         f"of them), got {type(items).__name__}") from None
    if not items:
        raise InputError("no DICOM datasets given")
    labelled: list[tuple[str, "Dataset"]] = []
    raws: list[tuple[bytes, Any]] = []
    for i, item in enumerate(items, 1):
        label = f"dataset {i}"
        ds, raw = _dataset_of(item, label)
        fname = getattr(ds, "filename", None)
        if isinstance(fname, str) and fname:
            label = f"{label} ({fname})"
        if "PixelData" not in ds:
            raise InputError(f"{label}: no pixel data (not an image)")
        if "Rows" not in ds or "Columns" not in ds:
            raise InputError(f"{label}: pixel data without Rows/Columns")
        fm = getattr(ds, "file_meta", None)
        if fm is None or not fm.get("TransferSyntaxUID"):
            raise InputError(f"{label}: no Transfer Syntax UID in ds.file_meta; set it (e.g. "
                             "pydicom.uid.ExplicitVRLittleEndian for uncompressed pixel data)")
        labelled.append((label, ds))
        raws.append((raw, ds.original_encoding) if raw is not None else _serialised(ds, label))
    groups: dict[str, list[tuple[str, Dataset]]] = {}
    for label, ds in labelled:
        groups.setdefault(_str(ds, "SeriesInstanceUID"), []).append((label, ds))
    if len(groups) > 1:
        series = "; ".join(f"{uid or '(no SeriesInstanceUID)'}: {', '.join(l for l, _ in m)}"
                           for uid, m in groups.items())
        raise InputError(f"the datasets belong to {len(groups)} series; bmz encodes one series at "
                         f"a time: {series}")
    names = [_stored_name(ds, i) for i, (_, ds) in enumerate(labelled)]
    if len(set(names)) < len(names):  # two files of the same base name: number them all
        names = [f"IM{i + 1:05d}.dcm" for i in range(len(labelled))]
    return _build([(label, name, ds, raw) for (label, ds), name, raw in zip(labelled, names, raws)],
                  path=None, keep_encapsulated=keep_encapsulated)


def _dataset_of(item: Any, label: str) -> tuple["Dataset", bytes | None]:
    """``item`` as a pydicom Dataset (itself, or parsed from a file object / bytes in memory)
    and the file's bytes (``None`` for a Dataset)."""
    if isinstance(item, Dataset):
        return item, None
    if isinstance(item, (bytes, bytearray, memoryview)):
        raw = bytes(item)
    elif hasattr(item, "read"):
        try:
            raw = item.read()
        except Exception as exc:
            raise InputError(f"{label}: cannot be read ({exc})") from None
        if not isinstance(raw, (bytes, bytearray)):
            raise InputError(f"{label}: expected a binary file object (it read "
                             f"{type(raw).__name__})")
        raw = bytes(raw)
    else:
        raise InputError(f"{label}: expected a pydicom Dataset, a binary file object or bytes, "
                         f"got {type(item).__name__}")
    try:
        return pydicom.dcmread(io.BytesIO(raw)), raw
    except MemoryError:
        raise
    except Exception:  # no preamble: try once more as a bare dataset
        pass
    try:
        ds = pydicom.dcmread(io.BytesIO(raw), force=True)
    except MemoryError:
        raise
    except Exception as exc:
        raise InputError(f"{label}: not a readable DICOM file ({exc})") from None
    if "PixelData" not in ds:  # parsed without a DICOM preamble: likely not DICOM at all
        raise InputError(f"{label}: not a DICOM image (no DICOM preamble, no pixel data)")
    return ds, raw


def _serialised(ds: "Dataset", label: str) -> tuple[bytes, Any]:
    """The bytes of a Dataset as pydicom writes it (its preamble and file meta, if any, as they
    are): what bmz keeps of a dataset given in memory; and their encoding, as pydicom reads
    them back."""
    buf = io.BytesIO()
    try:
        pydicom.dcmwrite(buf, ds, enforce_file_format=False)
    except MemoryError:
        raise
    except Exception as exc:
        raise InputError(f"{label}: pydicom cannot write this dataset ({exc}); bmz keeps a "
                         "dataset's bytes as pydicom writes them") from None
    raw = buf.getvalue()
    try:
        encoding = pydicom.dcmread(io.BytesIO(raw), force=True, stop_before_pixels=True,
                                   defer_size=_BULK_LIMIT).original_encoding
    except Exception:
        encoding = (None, None)
    return raw, encoding


def _stored_name(ds: "Dataset", i: int) -> str:
    fname = getattr(ds, "filename", None)
    if isinstance(fname, str) and fname:
        name = Path(fname).name
        if name and not name.startswith("."):
            return name
    return f"IM{i + 1:05d}.dcm"


def _build(members: list[tuple[str, str, "Dataset", Any]], path: str | None,
           keep_encapsulated: bool = False) -> Volume:
    """The Volume of ``members`` (``(label for messages, stored name, dataset, the file's path or
    (bytes, their (implicit VR, little endian) encoding))`` per file) read from ``path``
    (``None``: in memory), with the files' kept bytes as its ``attachment``."""
    arrays: list[np.ndarray] = []
    kept: list[dicom_kept.KeptFile] = []
    slices: list[dict[str, Any]] = []  # one per frame, in file order
    first_shape: tuple[int, int] | None = None
    first_dtype: np.dtype | None = None
    first_label: str | None = None
    multiframe = False
    bits_stored = 0
    for fi, (label, name, ds, src) in enumerate(members):
        _check_monochrome(ds, label)
        _check_bits(ds, label)
        arr = _decode(ds, label)
        arr, _ = as_integer_array(arr, label)
        if first_shape is None:
            first_shape, first_dtype, first_label = arr.shape[1:], arr.dtype, label
        elif arr.shape[1:] != first_shape:
            raise InputError(
                f"{label}: slice size {arr.shape[1]}x{arr.shape[2]} differs from "
                f"{first_shape[0]}x{first_shape[1]} of {first_label}; one series must have one size"
            )
        elif arr.dtype != first_dtype:
            if arr.dtype.newbyteorder("=") == first_dtype.newbyteorder("="):
                arr = arr.astype(first_dtype)
            else:
                raise InputError(
                    f"{label}: pixel dtype {arr.dtype} differs from {first_dtype} of {first_label}"
                )
        kept.append(_keep(ds, src, label, arr, keep_encapsulated))
        n_frames = arr.shape[0]
        if n_frames > 1 or "PerFrameFunctionalGroupsSequence" in ds:
            multiframe = True
        bits_stored = max(bits_stored, _int(ds.get("BitsStored")) or 0)
        instance = _int(ds.get("InstanceNumber"))
        for k, g in enumerate(_frame_geometry(ds, n_frames)):
            g.update(file=fi, frame=k, instance=instance)
            slices.append(g)
        arrays.append(arr)

    order, sorted_by = _sort_order(slices)
    stacked = np.concatenate(arrays, axis=0) if len(arrays) > 1 else arrays[0]
    data = np.ascontiguousarray(stacked[order])
    ordered = [slices[i] for i in order]

    # files in order of first appearance in the slices
    file_rank: dict[int, int] = {}
    for s in ordered:
        file_rank.setdefault(s["file"], len(file_rank))
    files_sorted = sorted(file_rank, key=file_rank.get)

    names = [members[fi][1] for fi in files_sorted]
    descriptor, attachment = dicom_kept.pack([kept[fi] for fi in files_sorted])

    rescale = [[s["slope"], s["intercept"]] for s in ordered]
    if all(r == [None, None] for r in rescale):
        rescale = None
    first = members[files_sorted[0]][2]
    geometry = {
        "positions": [s["position"] for s in ordered],
        "orientation": ordered[0]["orientation"],
        "pixel_spacing": ordered[0]["pixel_spacing"],
        "slice_thickness": ordered[0]["thickness"],
        "spacing_between_slices": ordered[0]["between"],
        "sorted_by": sorted_by,
        "rescale": rescale,
    }
    meta = {
        "dicom": {
            "layout": LAYOUT,
            "multiframe": multiframe,
            "files": names,
            "order": [names[file_rank[s["file"]]] for s in ordered],
            "frames": [[file_rank[s["file"]], s["frame"]] for s in ordered],
            "series_uid": _str(first, "SeriesInstanceUID") or None,
            "geometry": geometry,
            "kept": descriptor,
            "notes": kept_notes(descriptor, names, lossless=True),
        },
        "bits_stored": bits_stored or int(data.dtype.itemsize * 8),
        "photometric": _str(first, "PhotometricInterpretation", "MONOCHROME2").strip(),
    }
    return Volume(data=data, source="dicom", meta=_jsonable(meta), path=path,
                  attachment=attachment)


def kept_notes(descriptor: dict, names: list[str], lossless: bool) -> list[str]:
    """What a decode of a ``.bmz`` with this kept-bytes ``descriptor`` cannot give back as it
    was, one line per distinct note (the files that share it named once): ``lossless``, for a
    lossless file decoded to its original files; otherwise for a derived series."""
    from pydicom.uid import UID as _UID

    notes: list[tuple[str, str]] = []
    for name, f in zip(names, descriptor.get("files", [])):
        ts = str(f.get("ts") or "")
        ts_name = _UID(ts).name if ts else "no transfer syntax"
        if lossless:
            if f.get("restore") == "elements":
                notes.append((name, f"comes back with every element identical but its pixel data "
                                    f"native, in Explicit VR Little Endian (the original's were "
                                    f"encapsulated, {ts_name}; --keep-encapsulated keeps them "
                                    "byte for byte)"))
                notes += [(name, f"native version: {c}") for c in f.get("native_changes", [])]
            continue
        p = f.get("pixels", {})
        if f.get("high_bits"):
            notes.append((name, f"bits above Bits Stored ({p.get('stored')} of {p.get('alloc')}) "
                                "of its pixel words are not its values' (set, or not "
                                "sign-extended); the derived file has the values alone"))
        if f.get("value_bits"):
            notes.append((name, f"its pixel words' low {p.get('stored')} bits are not the values "
                                "pydicom decodes from them; the derived file has those values"))
        if f.get("group_lengths"):
            notes.append((name, "group length elements (gggg,0000) are not written in the "
                                "derived file (retired; pydicom writes none)"))
        notes += [(name, f"derived file: {c}") for c in f.get("native_changes", [])
                  if "Lossy Image Compression" not in c]
    return summarise_notes(notes)


def _keep(ds: "Dataset", src: Any, label: str, arr: np.ndarray,
          keep_encapsulated: bool) -> "dicom_kept.KeptFile":
    """The file's kept bytes (:func:`bmz.io.dicom_kept.keep_file`)."""
    if isinstance(src, Path):
        try:
            raw = src.read_bytes()
        except OSError as e:
            raise InputError(f"{label}: cannot be read ({e.strerror or e})") from None
        encoding = ds.original_encoding
    else:
        raw, encoding = src
    if encoding is None or None in encoding:
        encoding = None
    attrs = {"alloc": _int(ds.get("BitsAllocated")), "stored": _int(ds.get("BitsStored")) or 0,
             "signed": _int(ds.get("PixelRepresentation")) == 1}
    try:
        kf = dicom_kept.keep_file(raw, label, arr, attrs, encoding, keep_encapsulated)
    except dicom_kept.KeepError as e:
        raise InputError(str(e)) from None
    return kf


# --------------------------------------------------------------------------------------------
# writing: a decoded volume as its DICOM series
# --------------------------------------------------------------------------------------------


def check_output_folder(folder: str | os.PathLike, force: bool = False) -> Path:
    """Check that a DICOM series can be written to ``folder`` (see :func:`write_dicom`); raise
    :class:`OutputError` naming it otherwise. Returns its absolute path."""
    shown = os.fspath(folder)
    dest = Path(os.path.abspath(shown))
    if not dest.name:
        raise OutputError(f"{shown}: DICOM output needs a folder name, not the root folder")
    if dest.exists() and not dest.is_dir():
        raise OutputError(f"{shown}: exists and is not a folder; DICOM output is a folder of "
                          "files (e.g. -o outdir/)")
    if not dest.parent.is_dir():
        raise OutputError(f"{shown}: output folder {dest.parent} does not exist")
    if not os.access(dest.parent, os.W_OK):
        raise OutputError(f"{shown}: output folder {dest.parent} is not writable")
    if dest.is_dir() and any(dest.iterdir()):
        if not force:
            raise OutputError(f"{shown}: folder exists and is not empty (use --force to replace "
                              "it)")
        for root, _, files in os.walk(dest):
            for name in files:
                if not has_dicom_preamble(Path(root) / name):
                    rel_name = (Path(root) / name).relative_to(dest)
                    raise OutputError(
                        f"{shown}: --force replaces the whole folder, but it holds {rel_name}, "
                        "which is not a DICOM file; choose a new or empty folder"
                    )
    return dest


def check_dicom_source(volume_source: str | None, where: str) -> None:
    """Refuse DICOM output for a volume that did not come from DICOM (:class:`OutputError`)."""
    if volume_source != "dicom":
        raise OutputError(f"{where}: DICOM output needs a DICOM-origin .bmz; got "
                          f"{volume_source or 'an unknown source'} (write .nii, .nii.gz or .npy)")


def write_dicom(volume: Volume, folder: str | os.PathLike, lossy: LossyCoding,
                force: bool = False) -> list[str]:
    """Write a DICOM-origin ``volume`` (its decoded pixels) as its DICOM series: one file per
    original file (multi-frame files stay multi-frame), under the original's relative names, into
    ``folder`` — the original files for a lossless ``.bmz``, a derived series otherwise (see
    :func:`series_files`). Returns notes on what could not be kept.

    Atomic: the files are written into a temporary folder beside ``folder``, which then takes its
    place; on any error nothing is left. ``folder`` may be new or empty; a non-empty folder is
    replaced only with ``force`` and only when it holds nothing but DICOM files (a previous
    output), so that ``--force`` never deletes other data.

    Raises:
        OutputError: not a DICOM-origin volume, not every slice, folder not writable or not
            empty (without ``force``), or values that do not fit the original's BitsStored.
        FormatError: DICOM meta that does not describe the volume, or kept bytes that do not
            restore a file's SHA-256 (a damaged or forged file).
    """
    dest = check_output_folder(folder, force)
    shown = os.fspath(folder)
    notes: list[tuple[str, str]] = []
    files = series_files(volume, lossy, notes, where=shown)  # checks everything first
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent))
    except OSError as e:
        raise OutputError(f"{shown}: cannot create a folder in {dest.parent}: "
                          f"{e.strerror or e}") from None
    try:
        for _, name, data in files:
            _write_file(tmp / name, data)
        for name in files.unfinished:  # the series-wide values, once the series is known
            target = tmp / name
            _write_file(target, files.finish(name, target.read_bytes()))
        os.chmod(tmp, 0o755)
        _put_in_place(tmp, dest)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and not isinstance(e, BmzError):
            raise OutputError(f"{shown}: cannot write: {e.strerror or e}; nothing was "
                              "written") from None
        raise
    return summarise_notes(notes)


def _write_file(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def summarise_notes(notes: list[tuple[str, str]]) -> list[str]:
    """One line per distinct ``(file name, what)`` note (of :func:`series_files`...), the same
    note of several files on one line naming the first (``a.dcm and 199 other files: …``)."""
    files: dict[str, list[str]] = {}
    for name, what in notes:
        files.setdefault(what, []).append(name)
    return [f"{names[0]}{f' and {len(names) - 1} other files' if len(names) > 1 else ''}: {what}"
            for what, names in files.items()]


def _put_in_place(tmp: Path, dest: Path) -> None:
    """Rename the finished folder ``tmp`` to ``dest``, replacing an existing ``dest`` (checked
    by :func:`check_output_folder`); the old one is removed only once the new one is there."""
    if not dest.exists():
        os.rename(tmp, dest)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
    os.rename(dest, old / dest.name)
    try:
        os.rename(tmp, dest)
    except BaseException:
        os.rename(old / dest.name, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)


def series_files(volume: Volume, lossy: LossyCoding, notes: list[tuple[str, str]],
                 where: str = "DICOM output") -> "SeriesFiles":
    """The DICOM files of a DICOM-origin ``volume`` (decoded from a ``.bmz``), in memory: an
    iterable of ``(index in meta["dicom"]["files"], relative name, file bytes)`` in the order
    the files complete (a file once all its slices have been seen).

    Everything is checked before this returns (iterating then only builds files); slices are
    read once each, in order (``volume.data[k]``), and a file's frames are held only until it
    is complete. Notes on what a file could not keep go to ``notes`` as ``(file name, what)``
    (:func:`summarise_notes` makes lines of them).

    **Lossless** (``lossy.lossless``; a ``--lossless`` ``.bmz``): the original files, restored
    from the kept bytes (:mod:`bmz.io.dicom_kept`) — byte-identical for a native original (or
    one whose encapsulated pixels were kept), every element identical with native pixels in
    Explicit VR Little Endian for an encapsulated one; each file's SHA-256 is checked against
    the one recorded at encode time (:class:`FormatError` when it differs).

    **Lossy or bounded error**: a derived series. Each file is the original (its kept bytes,
    every element as it was, in its own native transfer syntax — an encapsulated original's in
    Explicit VR Little Endian, a big-endian one's in little endian) with the decoded pixels in the
    original's BitsAllocated, BitsStored, HighBit and PixelRepresentation, and:

    * Lossy Image Compression (0028,2110) "01", Lossy Image Compression Ratio (0028,2112) and
      Method (0028,2114) :data:`LOSSY_METHOD`; when the original was already lossy and records
      its ratios and methods (a lossy transfer syntax records them in the kept bytes' native
      version), ours are appended to them (the history DICOM asks for);
    * a new SOP Instance UID per file (also Media Storage SOP Instance UID) and a new Series
      Instance UID for the series (``pydicom.uid.generate_uid``);
    * Image Type value 1 DERIVED (added as DERIVED\\PRIMARY when missing), and Frame Type value 1
      DERIVED in the functional groups of an enhanced file;
    * the derivation: Derivation Description (the codec, its model, quality and ratio),
      Derivation Code Sequence (DCM 113040 "Lossy Compression") and a Source Image Sequence
      item referencing the original SOP instance (DCM 121320 "Uncompressed predecessor", or
      121330 "Lossy compressed predecessor") -- at the top level of a classic image, in a
      Derivation Image Sequence of the functional groups of an enhanced one;
    * Smallest/Largest Image Pixel Value, when present, the file's decoded range, and Smallest/
      Largest Pixel Value in Series the series' (:meth:`SeriesFiles.finish`, once every file is
      built), each with its original VR;
    * a new file meta (this file's UIDs and transfer syntax, pydicom's implementation UID);
      group length elements are not written (pydicom writes none: they are retired).

    A ``.bmz`` written before the kept bytes (DICOM meta layout 1, :mod:`bmz.io.dicom_legacy`)
    gives its files as it always did: rebuilt from the DICOM-JSON it holds, without the binary
    elements over 64 KiB its encoder dropped (each omission noted).
    """
    return SeriesFiles(volume, lossy, notes, where)


class SeriesFiles:
    """The files :func:`series_files` makes. After iterating, :attr:`unfinished` names the
    files whose series-wide values :meth:`finish` must still set (lossy output only)."""

    def __init__(self, volume: Volume, lossy: LossyCoding, notes: list[tuple[str, str]],
                 where: str):
        check_dicom_source(volume.source, where)
        self.volume, self.lossy, self.notes, self.where = volume, lossy, notes, where
        try:
            part = _dicom_part(volume.meta)
        except ValueError as e:
            raise FormatError(f"{where}: {e}") from None
        files, frames = part.get("files"), part.get("frames")
        n = int(volume.data.shape[0])
        if not isinstance(files, list) or not isinstance(frames, list):
            raise FormatError(f"{where}: DICOM meta: no 'files' and 'frames'")
        if len(frames) != n:
            raise OutputError(f"{where}: DICOM output needs every slice of the series (the volume "
                              f"holds {n} of {len(frames)}); decode it whole, without --slices")
        self.names = [_safe_name(f, where) for f in files]
        if len(set(self.names)) != len(self.names):
            raise FormatError(f"{where}: DICOM meta: two files share a name")
        counts = [0] * len(files)
        seen: set[tuple[int, int]] = set()
        for k, fr in enumerate(frames):
            if not (isinstance(fr, list) and len(fr) == 2 and all(isinstance(v, int) for v in fr)
                    and 0 <= fr[0] < len(files) and fr[1] >= 0 and tuple(fr) not in seen):
                raise FormatError(f"{where}: DICOM meta: slice {k}: bad [file, frame] {fr!r:.60}")
            seen.add(tuple(fr))
            counts[fr[0]] += 1
        for (fi, fr) in frames:
            if fr >= counts[fi]:
                raise FormatError(f"{where}: DICOM meta: {self.names[fi]} has {counts[fi]} "
                                  f"frames, a slice claims frame {fr + 1}")
        self.frames, self.counts = frames, counts
        hw = tuple(int(v) for v in volume.data.shape[1:])
        self.store: dicom_kept.KeptStore | None = None
        self.legacy: list[dict] | None = None
        if "kept" in part:
            self.store = self._open_store(part, len(files))
            self.plans = [self._kept_plan(i, counts[i], hw) for i in range(len(files))]
        else:
            from . import dicom_legacy

            try:
                self.legacy = dicom_legacy.dicom_datasets(volume.meta)
                file_metas = dicom_legacy.dicom_file_meta(volume.meta)
            except ValueError as e:
                raise FormatError(f"{where}: {e}") from None
            if len(self.legacy) != len(files) or (file_metas and len(file_metas) != len(files)):
                raise FormatError(f"{where}: DICOM meta: 'files' and 'datasets' do not match")
            self.plans = [dicom_legacy.plan(d, self.names[i], counts[i], hw, where)
                          for i, d in enumerate(self.legacy)]
            for plan, fm in zip(self.plans, file_metas or [{}] * len(files)):
                plan["ts"] = str((fm.get("00020010") or {}).get("Value", [""])[0]) if fm else ""
        self.series_uid = generate_uid()
        self.series_range: list[int] | None = None
        self.unfinished: list[str] = []

    def _open_store(self, part: dict, n_files: int) -> "dicom_kept.KeptStore":
        attachment = self.volume.attachment
        if attachment is None:
            raise FormatError(f"{self.where}: the .bmz holds no DICOM kept bytes (its attachment "
                              "is missing)")
        try:
            store = dicom_kept.KeptStore(part["kept"], attachment)
        except ValueError as e:
            raise FormatError(f"{self.where}: {e}") from None
        if len(store) != n_files:
            raise FormatError(f"{self.where}: DICOM meta: {n_files} files, kept bytes of "
                              f"{len(store)}")
        return store

    def _kept_plan(self, i: int, n_frames: int, hw: tuple) -> dict[str, Any]:
        """What writing file ``i`` needs, checked against the volume."""
        assert self.store is not None
        pix, name = self.store.pixels(i), self.names[i]
        if (pix["rows"], pix["cols"]) != hw or pix["frames"] != n_frames:
            raise FormatError(f"{self.where}: {name}: {pix['frames']} frame(s) of "
                              f"{pix['rows']}x{pix['cols']} pixels, but the volume holds "
                              f"{n_frames} of {hw[0]}x{hw[1]}")
        stored, signed = int(pix["stored"]), bool(pix["signed"])
        return {"bits_stored": stored, "signed": signed, "alloc": int(pix["alloc"]),
                "min": -(1 << (stored - 1)) if signed else 0,
                "max": (1 << (stored - 1)) - 1 if signed else (1 << stored) - 1,
                "ts": self.store.files[i].get("ts", "")}

    def __iter__(self) -> Iterator[tuple[int, str, bytes]]:
        pending: dict[int, list[np.ndarray | None]] = {}
        ranges: dict[int, list[int]] = {}
        for k, (fi, fr) in enumerate(self.frames):
            plan, name = self.plans[fi], self.names[fi]
            s = np.asarray(self.volume.data[k])
            lo, hi = int(s.min()), int(s.max())
            if not self.lossy.lossless and (lo < plan["min"] or hi > plan["max"]):
                raise OutputError(
                    f"{self.where}: slice {k} ({name}, frame {fr + 1}): values {lo}..{hi} do not "
                    f"fit BitsStored={plan['bits_stored']} "
                    f"({'signed' if plan['signed'] else 'unsigned'}) of the original")
            buf = pending.setdefault(fi, [None] * self.counts[fi])
            buf[fr] = s
            r = ranges.setdefault(fi, [lo, hi])
            r[0], r[1] = min(r[0], lo), max(r[1], hi)
            sr = self.series_range
            self.series_range = [lo, hi] if sr is None else [min(sr[0], lo), max(sr[1], hi)]
            if all(b is not None for b in buf):
                values = np.stack(pending.pop(fi))  # type: ignore[arg-type]
                yield fi, name, self._file(fi, values, ranges.pop(fi))

    def _file(self, fi: int, values: np.ndarray, value_range: list[int]) -> bytes:
        name, plan = self.names[fi], self.plans[fi]
        if self.store is not None and self.lossy.lossless:
            data = self.store.restore(fi, values, lossless=True)
            if dicom_kept.sha256(data) != self.store.expected_sha256(fi):
                raise FormatError(f"{self.where}: {name}: the restored file is not the one kept "
                                  "at encode time (SHA-256 differs); the .bmz is damaged")
            return data
        if self.store is not None:
            ds = pydicom.dcmread(io.BytesIO(self.store.restore(fi, values, lossless=False)),
                                 force=True)
            out_ts = _written_ts(ds)
        else:
            from . import dicom_legacy

            ds = dicom_legacy.legacy_dataset(self.legacy[fi], name, plan["ts"], self.notes,
                                             self.where)
            out_ts = ExplicitVRLittleEndian
        if not str(ds.get("SOPClassUID", "")).strip():
            raise OutputError(f"{self.where}: {name}: the original has no SOP Class UID; cannot "
                              "write a valid DICOM file")
        enhanced = ("SharedFunctionalGroupsSequence" in ds
                    or "PerFrameFunctionalGroupsSequence" in ds)
        derive(ds, plan["ts"], self.lossy, self.series_uid, enhanced, value_range,
               plan["signed"], name, self.notes)
        if self.store is None or not UID(out_ts).is_little_endian:
            if self.store is not None:  # a big-endian original: written little endian
                to_little_endian(ds)
                out_ts = ExplicitVRLittleEndian
            dt = np.dtype(f"<{'i' if plan['signed'] else 'u'}{plan['alloc'] // 8}")
            pixels = np.ascontiguousarray(values.astype(dt)).tobytes()
            ds.PixelData = pixels + (b"\x00" if len(pixels) % 2 else b"")
            ds["PixelData"].VR = "OB" if plan["alloc"] == 8 else "OW"
        ds.file_meta = file_meta(ds, out_ts)
        if not self.lossy.lossless and ("SmallestPixelValueInSeries" in ds
                                        or "LargestPixelValueInSeries" in ds):
            self.unfinished.append(name)
        return _dataset_bytes(ds, name)

    def finish(self, name: str, data: bytes) -> bytes:
        """File ``name`` (bytes this iterable gave) with Smallest/Largest Pixel Value in Series
        set to the whole series' decoded range (call it once every file has been made)."""
        assert self.series_range is not None
        ds = pydicom.dcmread(io.BytesIO(data))
        fi = self.names.index(name)
        set_series_range(ds, *self.series_range, self.plans[fi]["signed"], name, self.notes)
        return _dataset_bytes(ds, name)


def _written_ts(ds: "Dataset") -> str:
    """The transfer syntax ``ds`` was read in: its file meta's, or (a file without one) the
    native syntax of its encoding."""
    fm = getattr(ds, "file_meta", None)
    ts = fm.get("TransferSyntaxUID") if fm is not None else None
    if ts:
        return str(ts)
    implicit, little = ds.original_encoding
    if implicit:
        return str(ImplicitVRLittleEndian)
    return str(ExplicitVRLittleEndian) if little is not False else "1.2.840.10008.1.2.2"


def _dataset_bytes(ds: "Dataset", name: str) -> bytes:
    buf = io.BytesIO()
    if not isinstance(ds, FileDataset):
        ds = FileDataset(name, ds, preamble=b"\x00" * 128, file_meta=ds.file_meta)
    if ds.preamble is None:
        ds.preamble = b"\x00" * 128
    # dcmwrite, not save_as: save_as refuses to write a big-endian original little endian
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _safe_name(name: Any, where: str) -> str:
    """A stored file name, checked to stay inside the output folder."""
    from pathlib import PurePosixPath

    p = PurePosixPath(name) if isinstance(name, str) else None
    if (p is None or not name or p.is_absolute() or ".." in p.parts or "\\" in name
            or any(part.startswith(".") for part in p.parts)):
        raise FormatError(f"{where}: DICOM meta: file name {name!r:.80} is not a plain relative "
                          "name")
    return p.as_posix()


