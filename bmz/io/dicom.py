"""DICOM reading and writing (pydicom 3): single files, series folders, enhanced multi-frame
files, and the same held in memory.

* :func:`read_dicom` (a path) and :func:`read_datasets` (pydicom Datasets, file objects or bytes,
  nothing touches the disk) give a :class:`Volume` whose ``meta`` keeps every file's elements;
* :func:`write_dicom` (a folder, atomically) and :func:`derived_datasets` (in memory) turn a
  decoded DICOM-origin volume back into its series, as derived, lossy-marked files (the rules:
  :func:`derived_datasets`; the method string :data:`LOSSY_METHOD`).

What :func:`read_dicom` accepts:

* a single DICOM file: its frame(s) become the slices (a classic file gives ``(1, H, W)``, an
  enhanced multi-frame file ``(n_frames, H, W)``);
* a folder (searched recursively; hidden files ignored) holding ONE image series, or several
  series with ``series=`` choosing one (a SeriesInstanceUID, a unique prefix of one, or a
  SeriesNumber). Several series and no choice -> :class:`InputError` listing them. Files that are
  not DICOM, or DICOM without PixelData (DICOMDIR, SR, presentation states...) are skipped. A
  series may hold several multi-frame files; their frames are all stacked.

Slice order: when every slice has ImagePositionPatient and the same ImageOrientationPatient
(per-frame functional groups for enhanced files) and their positions along the slice normal
``n = cross(row_cosines, col_cosines)`` are all distinct, slices are sorted by ``dot(n, position)``
(ascending). Otherwise (missing geometry, several orientations, repeated positions as in a time
series) by InstanceNumber, then file name and frame number; the rule used is recorded in
``meta["dicom"]["geometry"]["sorted_by"]``.

Pixel values are the STORED values (``ds.pixel_array``: no modality/VOI rescale), dtype from
BitsAllocated/PixelRepresentation as pydicom gives it (uint8/int8/uint16/int16, ``'>u2'``/``'>i2'``
for big-endian files; 32-bit only if values fit 16 bits). pydicom masks bits above BitsStored;
when such bits are set in uncompressed data a note is recorded. Compressed transfer syntaxes are
decoded by pydicom's plugins (pylibjpeg + pylibjpeg-libjpeg / -openjpeg, Pillow; RLE natively);
a missing decoder raises :class:`MissingDependencyError` naming the pip package. Colour
(SamplesPerPixel > 1 or PhotometricInterpretation other than MONOCHROME1/2) is refused, as are
slices of different sizes or dtypes in one series.

``meta`` layout::

    {"dicom": {
        "multiframe": bool,            # an enhanced / multi-frame file is involved
        "common": {tag: value},        # elements shared by the files' datasets (see below)
        "datasets": [...],             # per file: its dataset's elements that differ from
                                       # "common", plus "absent": [tag, ...] when needed
        "file_meta_common": {...},     # the same for the file meta information
        "file_meta": [...],
        "files": [...],                # per file: name relative to the folder read (or basename)
        "order": [...],                # per slice (data[k]): the file name it came from
        "frames": [[file, frame], ...] # per slice: index into "files" and frame in that file
        "series_uid": str | None,
        "geometry": {"positions": [[x, y, z] | None per slice], "orientation": [6] | None,
                     "pixel_spacing": [row, col] | None, "slice_thickness": float | None,
                     "spacing_between_slices": float | None, "sorted_by": str,
                     "rescale": [[slope, intercept] per slice] | None},
        "notes": [str, ...]},
     "bits_stored": int, "photometric": str}

Files in "datasets" are in order of first appearance in the slices, so for a classic series
``datasets[k]`` is the file of slice ``k``.

Each file's dataset is ``ds.to_json_dict()`` (the DICOM JSON model: ``"GGGGEEEE"`` tag ->
``{"vr": ..., "Value": [...]}``) without PixelData; binary elements > 64 KiB are replaced by a
``"BulkDataURI": "bmz:dropped:<n bytes>"`` and noted. These are stored DE-DUPLICATED, since a
series repeats most elements in every file (Siemens' private CSA headers alone are ~50 KB per
file): ``common`` holds, for every tag whose most frequent value (compared as canonical JSON)
occurs in more than half of the files, that value; ``datasets[k]`` holds the elements of file
``k`` that are not in ``common`` or have another value there, and ``"absent": [tags]`` (sorted)
for the tags of ``common`` that file ``k`` lacks (the key is omitted when there are none; no
DICOM tag is spelled "absent"). File ``k``'s full dict is ``common`` minus its absent tags,
updated with ``datasets[k]``. In ``common`` and ``datasets`` (at any depth) a binary element's
base64 ``"InlineBinary"`` is stored as ``"bmz:hex"``, the same bytes in lowercase hex: unlike
base64, hex keeps equal bytes equal text whatever their offset, so the container's xz finds the
repeats between files (Siemens CSA image headers differ by a few bytes from file to file; this
roughly halves their compressed size). :func:`dicom_datasets` rebuilds the list of full dicts
exactly (:func:`dicom_file_meta` for the file meta, ``file_meta_common`` / ``file_meta``, stored
the same way). Always read the datasets through these functions.

:func:`nifti_geometry` turns that geometry into a NIfTI (RAS+) affine for DICOM -> NIfTI writing.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import BmzError, FormatError, InputError, MissingDependencyError, OutputError
from . import Volume, as_integer_array

try:
    import pydicom
    from pydicom.dataset import Dataset, FileDataset
    from pydicom.uid import UID, ImplicitVRLittleEndian, generate_uid
except ImportError:  # pragma: no cover - pydicom is a hard dependency
    pydicom = None  # type: ignore[assignment]

_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}  # PixelData, FloatPixelData, DoubleFloat...
_BULK_LIMIT = 64 * 1024
# pydicom's to_json_dict hands an element to the bulk handler when len > (threshold // 4) * 3
_JSON_THRESHOLD = (_BULK_LIMIT // 3 + 1) * 4
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


def _has_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _open(path: Path, strict: bool) -> "Dataset | None":
    """Read a DICOM file's dataset (large values deferred). With ``strict`` (a file that claims to
    be DICOM, or the file the user named) errors raise :class:`InputError`; otherwise a file that
    does not parse as DICOM gives ``None``."""
    preamble = _has_preamble(path)
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
    if key in groups:
        return key
    matches = [d for d in infos if d["uid"].startswith(key)] if key else []
    if not matches and _int(key) is not None:
        matches = [d for d in infos if d["series_number"] == _int(key)]
    if len(matches) == 1:
        return matches[0]["uid"]
    if not matches:
        raise InputError(f"{where}: no DICOM series matches '{key}'; series are: {_describe(infos)}")
    raise InputError(f"{where}: '{key}' matches several DICOM series: {_describe(matches)}")


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


def _decode(ds: "Dataset", where: str, name: str, notes: list[str]) -> np.ndarray:
    """The stored pixel values of ``ds`` as ``(n_frames, rows, cols)``; errors name ``where``,
    notes ``name`` (the file's stored name)."""
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
    arr = np.asarray(arr).reshape(-1, rows, cols)
    _note_high_bits(ds, ts, name, notes)
    return arr


def _note_high_bits(ds: "Dataset", ts: "UID", name: str, notes: list[str]) -> None:
    """Record when uncompressed pixel words carry bits above BitsStored (pydicom drops them)."""
    try:
        alloc, stored = int(ds.BitsAllocated), int(ds.BitsStored)
        if ts.is_compressed or alloc not in (16, 32) or stored >= alloc:
            return
        raw = ds.PixelData
        dt = np.dtype(f"u{alloc // 8}").newbyteorder(">" if not ts.is_little_endian else "<")
        words = np.frombuffer(raw, dtype=dt, count=len(raw) // dt.itemsize)
        if np.any(words >> stored):
            notes.append(
                f"{name}: pixel words have bits set above BitsStored={stored}; bmz keeps "
                f"the {stored}-bit stored values"
            )
    except Exception:
        return


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
# JSON
# --------------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """Make ``value`` JSON-serialisable: bytes -> base64, numbers -> int/float, NaN/inf -> str."""
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


def _dataset_json(ds: "Dataset", name: str, notes: list[str]) -> dict[str, Any]:
    """``ds`` as a DICOM-JSON dict without pixel data; binary elements > 64 KiB are dropped."""

    def bulk(elem) -> str:
        try:
            n = len(elem.value)
        except Exception:
            n = -1
        notes.append(f"{name}: dropped {elem.tag} {elem.keyword or 'private'} ({n} bytes > 64 KiB)")
        return f"bmz:dropped:{n}"

    out: dict[str, Any] = {}
    for tag in list(ds.keys()):
        if int(tag) in _PIXEL_TAGS:
            continue
        key = f"{int(tag):08X}"
        try:
            out[key] = ds[tag].to_json_dict(bulk, _JSON_THRESHOLD)
        except Exception as exc:
            notes.append(f"{name}: element {key} could not be converted to JSON and was dropped ({exc})")
    return _jsonable(out)


def _file_meta_json(ds: "Dataset", name: str, notes: list[str]) -> dict[str, Any]:
    fm = getattr(ds, "file_meta", None)
    if fm is None or len(fm) == 0:
        return {}
    return _dataset_json(fm, name, notes)


# --------------------------------------------------------------------------------------------
# de-duplicated per-file datasets
# --------------------------------------------------------------------------------------------

_ABSENT = "absent"  # key, in a per-file entry, of the tags of "common" that file lacks


def _canonical(value: Any) -> str:
    """A JSON value as a string that is equal exactly when the values are (``1`` and ``1.0``,
    ``True`` and ``1`` stay different, unlike Python's ``==``)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _split_common(dicts: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """De-duplicate per-file element dicts (tag -> JSON value): ``(common, entries)``.

    ``common[tag]`` is the most frequent value of ``tag`` (the first seen wins a tie) when it
    occurs in more than half of the dicts; ``entries[k]`` holds the elements of ``dicts[k]``
    missing from ``common`` or different from it, plus ``"absent": [tags]`` (sorted) for the tags
    of ``common`` that ``dicts[k]`` lacks. :func:`_merge_common` undoes it. A single dict goes
    entirely into ``common``. The values are the input's objects, not copies."""
    n = len(dicts)
    canon = [{tag: _canonical(v) for tag, v in d.items()} for d in dicts]
    counts: dict[str, dict[str, int]] = {}
    first: dict[str, dict[str, Any]] = {}
    for d, c in zip(dicts, canon):
        for tag, v in d.items():
            seen = counts.setdefault(tag, {})
            if c[tag] not in seen:
                first.setdefault(tag, {})[c[tag]] = v
            seen[c[tag]] = seen.get(c[tag], 0) + 1
    common: dict[str, Any] = {}
    common_canon: dict[str, str] = {}
    for tag in sorted(counts):
        key, count = max(counts[tag].items(), key=lambda kv: kv[1])  # first seen wins ties
        if 2 * count > n:
            common[tag] = first[tag][key]
            common_canon[tag] = key
    entries: list[dict[str, Any]] = []
    for d, c in zip(dicts, canon):
        entry = {tag: v for tag, v in d.items() if common_canon.get(tag) != c[tag]}
        absent = sorted(tag for tag in common if tag not in d)
        if absent:
            entry[_ABSENT] = absent
        entries.append(entry)
    return common, entries


def _merge_common(common: Any, entries: Any) -> list[dict[str, Any]]:
    """The full per-file dicts (keys sorted) from :func:`_split_common`'s output; new objects,
    so changing them leaves ``common`` and ``entries`` as they are. A malformed input (it may
    come from a damaged or foreign ``.bmz`` file) raises ``ValueError``."""
    if not isinstance(common, dict) or not isinstance(entries, list):
        raise ValueError("DICOM meta: the common elements must be an object and the per-file "
                         "entries a list")
    out = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise ValueError(f"DICOM meta: a per-file entry must be an object, not {entry!r:.60}")
        absent = entry.get(_ABSENT, [])
        if not isinstance(absent, list) or not all(isinstance(t, str) for t in absent):
            raise ValueError(f"DICOM meta: '{_ABSENT}' must be a list of tags, not {absent!r:.60}")
        gone = set(absent)
        full = {tag: v for tag, v in common.items() if tag not in gone}
        full.update((tag, v) for tag, v in entry.items() if tag != _ABSENT)
        out.append(copy.deepcopy({tag: full[tag] for tag in sorted(full)}))
    return out


_HEX = "bmz:hex"  # key replacing "InlineBinary" (base64) in the stored elements: the bytes in hex


def _binary_to_hex(value: Any) -> Any:
    """``value`` (DICOM-JSON, any depth) with each element's canonical base64 ``InlineBinary``
    replaced by ``"bmz:hex"``: the same bytes in lowercase hex. Unlike base64, hex keeps equal
    bytes equal text whatever their offset, so xz finds the long repeats between the files'
    binary elements (Siemens CSA headers differ by a few bytes from file to file). Base64 that
    would not come back identical (padding, line breaks...) is left as it is."""
    if isinstance(value, dict):
        b64 = value.get("InlineBinary")
        if isinstance(b64, str) and _HEX not in value:
            try:
                raw = base64.b64decode(b64, validate=True)
            except ValueError:  # binascii.Error
                raw = None
            if raw is not None and base64.b64encode(raw).decode("ascii") == b64:
                out = {k: v for k, v in value.items() if k != "InlineBinary"}
                out[_HEX] = raw.hex()
                return out
        return {k: _binary_to_hex(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_binary_to_hex(v) for v in value]
    return value


def _hex_to_binary(value: Any) -> Any:
    """Undo :func:`_binary_to_hex` (new objects throughout); bad hex raises ``ValueError``."""
    if isinstance(value, dict):
        if _HEX in value:
            text = value[_HEX]
            if not isinstance(text, str):
                raise ValueError(f"DICOM meta: '{_HEX}' must be a string, not {text!r:.60}")
            try:
                raw = bytes.fromhex(text)
            except ValueError:
                raise ValueError(f"DICOM meta: '{_HEX}' is not hexadecimal: {text!r:.60}") from None
            out = {k: v for k, v in value.items() if k != _HEX}
            out["InlineBinary"] = base64.b64encode(raw).decode("ascii")
            return out
        return {k: _hex_to_binary(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_hex_to_binary(v) for v in value]
    return value


def _store(dicts: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The stored (de-duplicated, binary in hex) form of per-file DICOM-JSON dicts."""
    common, entries = _split_common(dicts)
    return _binary_to_hex(common), [_binary_to_hex(e) for e in entries]


def _rebuild(common: Any, entries: Any) -> list[dict[str, Any]]:
    """The per-file DICOM-JSON dicts from their stored form (see :func:`_store`)."""
    try:
        return _merge_common(_hex_to_binary(common), _hex_to_binary(entries))
    except RecursionError:
        raise ValueError("DICOM meta: nested too deeply") from None


def _dicom_part(meta: dict) -> dict:
    """``meta["dicom"]`` of a Volume's meta (or ``meta`` itself when it is that part)."""
    part = meta.get("dicom", meta) if isinstance(meta, dict) else None
    if not isinstance(part, dict) or "datasets" not in part:
        raise ValueError("not the meta of a DICOM volume (no 'dicom' part with 'datasets')")
    return part


def dicom_datasets(meta: dict) -> list[dict[str, Any]]:
    """Each file's full dataset as a DICOM-JSON dict (tag -> element, without PixelData), in the
    order of ``meta["dicom"]["files"]``, rebuilt from the de-duplicated ``common`` and
    ``datasets`` of a DICOM volume's ``meta`` (``Volume.meta``, or its ``"dicom"`` part). A meta
    without ``common`` (full dicts) is returned as it is, copied."""
    part = _dicom_part(meta)
    return _rebuild(part.get("common") or {}, part["datasets"])


def dicom_file_meta(meta: dict) -> list[dict[str, Any]]:
    """Each file's full file meta information (DICOM-JSON dict, group 0002), like
    :func:`dicom_datasets`, from ``file_meta_common`` and ``file_meta``."""
    part = _dicom_part(meta)
    return _rebuild(part.get("file_meta_common") or {}, part.get("file_meta") or [])


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def read_dicom(path: Path, series: str | None = None) -> Volume:
    """Read a DICOM file, or the (chosen) series of a DICOM folder, into a :class:`Volume`."""
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

    return _build([(str(p), rel(p), ds) for p, ds in members], path=str(path))


def read_datasets(items: Any) -> Volume:
    """The :class:`Volume` of already-open DICOM data, all in memory (nothing is read from or
    written to disk): ``items`` is a pydicom ``Dataset``, a binary file object or ``bytes``
    holding a DICOM file, or a list of them, all of ONE series (several classic files, one or
    more multi-frame files). Slices are sorted as :func:`read_dicom` sorts a folder's.

    A dataset read from a file (``ds.filename``) keeps that file's base name as its stored name;
    others are named ``IM00001.dcm``, ``IM00002.dcm``... in the order given (the names
    :func:`write_dicom` gives the files it writes). Errors name the item (``dataset 3`` = the
    third, counting from 1) and what is wrong: not a dataset, not DICOM, no pixel data, no
    transfer syntax, colour, several series, sizes that differ.
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
    for i, item in enumerate(items, 1):
        label = f"dataset {i}"
        ds = _dataset_of(item, label)
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
    return _build([(label, name, ds) for (label, ds), name in zip(labelled, names)],
                  path=None)


def _dataset_of(item: Any, label: str) -> "Dataset":
    """``item`` as a pydicom Dataset: itself, or parsed from a file object / bytes in memory."""
    if isinstance(item, Dataset):
        return item
    if isinstance(item, (bytes, bytearray, memoryview)):
        item = io.BytesIO(bytes(item))
    if not hasattr(item, "read"):
        raise InputError(f"{label}: expected a pydicom Dataset, a binary file object or bytes, "
                         f"got {type(item).__name__}")
    try:
        start = item.tell()
    except (AttributeError, OSError):
        start = None
    try:
        return pydicom.dcmread(item)
    except MemoryError:
        raise
    except Exception as exc:  # no preamble: try once more as a bare dataset
        if start is None:
            raise InputError(f"{label}: not a readable DICOM file ({exc})") from None
    try:
        item.seek(start)
        ds = pydicom.dcmread(item, force=True)
    except MemoryError:
        raise
    except Exception as exc:
        raise InputError(f"{label}: not a readable DICOM file ({exc})") from None
    if "PixelData" not in ds:  # parsed without a DICOM preamble: likely not DICOM at all
        raise InputError(f"{label}: not a DICOM image (no DICOM preamble, no pixel data)")
    return ds


def _stored_name(ds: "Dataset", i: int) -> str:
    fname = getattr(ds, "filename", None)
    if isinstance(fname, str) and fname:
        name = Path(fname).name
        if name and not name.startswith("."):
            return name
    return f"IM{i + 1:05d}.dcm"


def _build(members: list[tuple[str, str, "Dataset"]], path: str | None) -> Volume:
    """The Volume of ``members`` (``(label for messages, stored name, dataset)`` per file) read
    from ``path`` (``None``: in memory)."""
    notes: list[str] = []
    arrays: list[np.ndarray] = []
    slices: list[dict[str, Any]] = []  # one per frame, in file order
    first_shape: tuple[int, int] | None = None
    first_dtype: np.dtype | None = None
    first_label: str | None = None
    multiframe = False
    bits_stored = 0
    for fi, (label, name, ds) in enumerate(members):
        _check_monochrome(ds, label)
        arr = _decode(ds, label, name, notes)
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
    common, datasets = _store(
        [_dataset_json(members[fi][2], names[r], notes) for r, fi in enumerate(files_sorted)]
    )
    file_meta_common, file_meta = _store(
        [_file_meta_json(members[fi][2], names[r], notes) for r, fi in enumerate(files_sorted)]
    )

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
            "multiframe": multiframe,
            "common": common,
            "datasets": datasets,
            "file_meta_common": file_meta_common,
            "file_meta": file_meta,
            "files": names,
            "order": [names[file_rank[s["file"]]] for s in ordered],
            "frames": [[file_rank[s["file"]], s["frame"]] for s in ordered],
            "series_uid": _str(first, "SeriesInstanceUID") or None,
            "geometry": geometry,
            "notes": notes,
        },
        "bits_stored": bits_stored or int(data.dtype.itemsize * 8),
        "photometric": _str(first, "PhotometricInterpretation", "MONOCHROME2").strip(),
    }
    return Volume(data=data, source="dicom", meta=_jsonable(meta), path=path)


# --------------------------------------------------------------------------------------------
# writing: a decoded volume as a derived, lossy-compressed DICOM series
# --------------------------------------------------------------------------------------------

#: Lossy Image Compression Method (0028,2114) of bmz output (CS; the model and quality are in
#: Derivation Description)
LOSSY_METHOD = "BMZ"

# the (0028,2114) method of a lossy transfer syntax, for an original that records its lossy
# ratio but not its method (the values of the two attributes must pair up)
_LOSSY_TS_METHOD = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",  # JPEG Extended
    "1.2.840.10008.1.2.4.81": "ISO_14495_1",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.91": "ISO_15444_1",  # JPEG 2000
    "1.2.840.10008.1.2.4.203": "ISO_15444_15",  # HTJ2K
    "1.2.840.10008.1.2.4.112": "ISO_18181_1",  # JPEG XL
}
_SWAP_WIDTH = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}  # binary VRs with multi-byte words
_DROPPED = "bmz:dropped:"


@dataclass(frozen=True)
class LossyCoding:
    """How a volume's pixels were compressed; :func:`write_dicom` records it in every file.

    ``ratio`` is the original's uncompressed pixel bytes over the compressed (``.bmz``) bytes;
    ``model`` and ``quality`` are the codec's; ``max_error`` the guaranteed bound of a bounded
    (``--max-error``) file, ``None`` for plain lossy coding. ``max_error == 0`` (``--lossless``)
    is no lossy compression at all: the files are the originals, with their UIDs, bit for bit in
    the pixels (:attr:`lossless`)."""

    ratio: float
    model: str
    quality: int
    max_error: int | None = None

    @property
    def lossless(self) -> bool:
        return self.max_error == 0

    def ratio_text(self) -> str:
        """The ratio as a DICOM decimal string (at most 16 characters)."""
        r = float(self.ratio)
        if not (math.isfinite(r) and r > 0):
            raise ValueError(f"lossy compression ratio must be a positive number, got {r!r}")
        text = f"{r:.2f}"
        return text if len(text) <= 16 else f"{r:.6e}"

    def description(self) -> str:
        from .. import __version__

        if self.max_error is not None:
            base = (f"learned base layer {self.model} quality {self.quality}" if self.quality
                    else "no base layer")
            return (f"Near-lossless compression by bmz {__version__} (maximum error "
                    f"{self.max_error}, {base}), compression ratio {self.ratio_text()}:1")
        return (f"Lossy compression by bmz {__version__} (learned codec, model {self.model}, "
                f"quality {self.quality}), compression ratio {self.ratio_text()}:1")


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
                if not _has_preamble(Path(root) / name):
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
    """Write a DICOM-origin ``volume`` (its decoded pixels) as a derived DICOM series: one file
    per original file (multi-frame files stay multi-frame), under the original's relative names,
    into ``folder``. Returns notes on what could not be kept (elements the ``.bmz`` did not hold).

    Atomic: the files are written into a temporary folder beside ``folder``, which then takes its
    place; on any error nothing is left. ``folder`` may be new or empty; a non-empty folder is
    replaced only with ``force`` and only when it holds nothing but DICOM files (a previous
    output), so that ``--force`` never deletes other data. What each file holds is described by
    :func:`derived_datasets`.

    Raises:
        OutputError: not a DICOM-origin volume, not every slice, folder not writable or not
            empty (without ``force``), or values that do not fit the original's BitsStored.
        FormatError: DICOM meta that does not describe the volume (a damaged or forged file).
    """
    dest = check_output_folder(folder, force)
    shown = os.fspath(folder)
    notes: list[tuple[str, str]] = []
    files = derived_datasets(volume, lossy, notes, where=shown)  # checks everything first
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent))
    except OSError as e:
        raise OutputError(f"{shown}: cannot create a folder in {dest.parent}: "
                          f"{e.strerror or e}") from None
    try:
        for _, name, ds in files:
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            with open(target, "wb") as f:
                f.write(buf.getbuffer())
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o755)
        _put_in_place(tmp, dest)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and not isinstance(e, BmzError):
            raise OutputError(f"{shown}: cannot write: {e.strerror or e}; nothing was "
                              "written") from None
        raise
    return summarise_notes(notes)


def summarise_notes(notes: list[tuple[str, str]]) -> list[str]:
    """One line per distinct ``(file name, what)`` note of :func:`derived_datasets`, the same
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


def derived_datasets(volume: Volume, lossy: LossyCoding, notes: list[tuple[str, str]],
                     where: str = "DICOM output") -> Iterator[tuple[int, str, "FileDataset"]]:
    """The DICOM files of a DICOM-origin ``volume``, as ``(index in meta["dicom"]["files"],
    relative name, FileDataset)`` in the order they complete (a file once all its slices have
    been seen), in memory.

    Everything is checked before this returns (the iterator then only builds files); slices
    are read once each, in order (``volume.data[k]``), and a file's frames are held only until
    it is complete. Each file is its original dataset (rebuilt from the ``.bmz`` meta) with:

    * the decoded pixels, native (uncompressed), in the original BitsAllocated, BitsStored,
      HighBit and PixelRepresentation, written Explicit VR Little Endian; elements that only
      make sense for encapsulated pixel data (7FE0 group) are gone, and so is an icon image of
      an encapsulated original; Smallest/Largest Image Pixel Value, when present, hold the new
      values and the series-wide Smallest/Largest Pixel Value in Series are removed (the series
      is written file by file);
    * Lossy Image Compression (0028,2110) "01", Lossy Image Compression Ratio (0028,2112) and
      Method (0028,2114) :data:`LOSSY_METHOD`; when the original was already lossy and records
      its ratios and methods, ours are appended to them (the history DICOM asks for);
    * a new SOP Instance UID per file (also Media Storage SOP Instance UID) and a new Series
      Instance UID for the series (``pydicom.uid.generate_uid``);
    * Image Type value 1 DERIVED (added as DERIVED\\PRIMARY when missing), and Frame Type value 1
      DERIVED in the functional groups of an enhanced file;
    * the derivation: Derivation Description (the codec, its model, quality and ratio),
      Derivation Code Sequence (DCM 113040 "Lossy Compression") and a Source Image Sequence
      item referencing the original SOP instance (DCM 121320 "Uncompressed predecessor", or
      121330 "Lossy compressed predecessor") -- at the top level of a classic image, in a
      Derivation Image Sequence of the functional groups of an enhanced one;
    * a new file meta (this file's UIDs and transfer syntax, pydicom's implementation UID).

    Everything else is the original's. Binary elements the encoder dropped (over 64 KiB,
    ``BulkDataURI`` ``bmz:dropped:…``) are omitted -- with the rest of their group for overlay
    or curve data, which is incomplete without them -- and each omission is added to
    ``notes`` as ``(file name, what)`` (:func:`summarise_notes` makes lines of them). Big-endian
    binary words (OW, OL, OF, OD, OV) are swapped to little endian.
    """
    check_dicom_source(volume.source, where)
    meta = volume.meta
    try:
        part = _dicom_part(meta)
        dicts = dicom_datasets(meta)
        file_metas = dicom_file_meta(meta)
    except ValueError as e:
        raise FormatError(f"{where}: {e}") from None
    files, frames = part.get("files"), part.get("frames")
    n = int(volume.data.shape[0])
    if not isinstance(files, list) or len(files) != len(dicts) or not isinstance(frames, list):
        raise FormatError(f"{where}: DICOM meta: 'files' and 'datasets' do not match")
    if len(frames) != n:
        raise OutputError(f"{where}: DICOM output needs every slice of the series (the volume "
                          f"holds {n} of {len(frames)}); decode it whole, without --slices")
    if file_metas and len(file_metas) != len(dicts):
        raise FormatError(f"{where}: DICOM meta: 'file_meta' and 'datasets' do not match")
    names = [_safe_name(f, where) for f in files]
    if len(set(names)) != len(names):
        raise FormatError(f"{where}: DICOM meta: two files share a name")
    counts = [0] * len(files)
    seen: set[tuple[int, int]] = set()
    for k, fr in enumerate(frames):
        if not (isinstance(fr, list) and len(fr) == 2 and all(isinstance(v, int) for v in fr)
                and 0 <= fr[0] < len(files) and fr[1] >= 0 and tuple(fr) not in seen):
            raise FormatError(f"{where}: DICOM meta: slice {k}: bad [file, frame] {fr!r:.60}")
        seen.add(tuple(fr))
        counts[fr[0]] += 1
    hw = tuple(int(v) for v in volume.data.shape[1:])
    plans = [_plan(d, names[i], counts[i], hw, where)
             for i, d in enumerate(dicts)]
    for (fi, fr) in frames:
        if fr >= counts[fi]:
            raise FormatError(f"{where}: DICOM meta: {names[fi]} has {counts[fi]} frames, a "
                              f"slice claims frame {fr + 1}")
    series_uid = generate_uid()
    original_ts = [str((fm.get("00020010") or {}).get("Value", [""])[0]) if fm else ""
                   for fm in (file_metas or [{}] * len(dicts))]

    def build() -> Iterator[tuple[int, str, FileDataset]]:
        pending: dict[int, list[bytes | None]] = {}
        ranges: dict[int, list[int]] = {}
        for k, (fi, fr) in enumerate(frames):
            plan = plans[fi]
            s = volume.data[k]
            lo, hi = int(s.min()), int(s.max())
            if lo < plan["min"] or hi > plan["max"]:
                raise OutputError(
                    f"{where}: slice {k} ({names[fi]}, frame {fr + 1}): values {lo}..{hi} do not "
                    f"fit BitsStored={plan['bits_stored']} "
                    f"({'signed' if plan['signed'] else 'unsigned'}) of the original"
                )
            buf = pending.setdefault(fi, [None] * counts[fi])
            buf[fr] = np.ascontiguousarray(s).astype(plan["dtype"], copy=False).tobytes()
            r = ranges.setdefault(fi, [lo, hi])
            r[0], r[1] = min(r[0], lo), max(r[1], hi)
            if all(b is not None for b in buf):
                pixels = b"".join(pending.pop(fi))  # type: ignore[arg-type]
                yield fi, names[fi], _derived_file(
                    dicts[fi], names[fi], original_ts[fi], pixels, ranges.pop(fi), plan,
                    series_uid, lossy, notes, where)

    return build()


def _safe_name(name: Any, where: str) -> str:
    """A stored file name, checked to stay inside the output folder."""
    from pathlib import PurePosixPath

    p = PurePosixPath(name) if isinstance(name, str) else None
    if (p is None or not name or p.is_absolute() or ".." in p.parts or "\\" in name
            or any(part.startswith(".") for part in p.parts)):
        raise FormatError(f"{where}: DICOM meta: file name {name!r:.80} is not a plain relative "
                          "name")
    return p.as_posix()


def _json_value(d: dict, tag: str) -> Any:
    """The first value of element ``tag`` of a DICOM-JSON dict, or ``None``."""
    elem = d.get(tag)
    if isinstance(elem, dict) and isinstance(elem.get("Value"), list) and elem["Value"]:
        return elem["Value"][0]
    return None


def _plan(d: dict, name: str, n_frames: int, hw: tuple, where: str) -> dict[str, Any]:
    """What writing file ``name`` (DICOM-JSON ``d``) needs, checked against the volume."""
    def num(tag: str, what: str) -> int:
        v = _json_value(d, tag)
        if isinstance(v, str):
            v = _int(v)
        if not isinstance(v, int) or isinstance(v, bool):
            raise FormatError(f"{where}: {name}: the stored dataset has no valid {what}")
        return v

    rows, cols = num("00280010", "Rows"), num("00280011", "Columns")
    if (rows, cols) != hw:
        raise FormatError(f"{where}: {name}: {rows}x{cols} pixels, but the volume's slices are "
                          f"{hw[0]}x{hw[1]}")
    declared = _int(_json_value(d, "00280008")) if "00280008" in d else None
    if (declared or 1) != n_frames:
        raise FormatError(f"{where}: {name}: Number of Frames is {declared or 1}, the volume "
                          f"holds {n_frames} of its frames")
    alloc, stored = num("00280100", "BitsAllocated"), num("00280101", "BitsStored")
    signed = num("00280103", "PixelRepresentation") == 1
    if alloc not in (8, 16, 32) or not 1 <= stored <= alloc:
        raise OutputError(f"{where}: {name}: BitsAllocated {alloc} / BitsStored {stored} cannot be "
                          "written (bmz writes 8, 16 or 32 bits allocated)")
    return {
        "dtype": np.dtype(f"<{'i' if signed else 'u'}{alloc // 8}"),
        "bits_stored": stored, "signed": signed, "alloc": alloc,
        "min": -(1 << (stored - 1)) if signed else 0,
        "max": (1 << (stored - 1)) - 1 if signed else (1 << stored) - 1,
        # functional groups: the derivation goes there (an enhanced file without any gets it
        # at the top level, as a classic image)
        "enhanced": "52009229" in d or "52009230" in d,
    }


def _prepared_json(d: dict, name: str, swap: bool, encapsulated: bool,
                   notes: list[tuple[str, str]], at: str = "") -> dict:
    """A DICOM-JSON dict made ready for ``Dataset.from_json`` and native little-endian output:
    dropped bulk elements omitted (with their whole overlay/curve group), an encapsulated
    original's icon omitted, big-endian binary words swapped; recursive through sequences."""
    from pydicom.datadict import keyword_for_tag

    def label(tag: str) -> str:
        return f"{at}({tag[:4]},{tag[4:]}) {keyword_for_tag(int(tag, 16)) or 'private'}"

    gone_groups: set[str] = set()
    dropped: set[str] = set()
    for tag, elem in d.items():
        uri = elem.get("BulkDataURI") if isinstance(elem, dict) else None
        if isinstance(uri, str) and uri.startswith(_DROPPED):
            dropped.add(tag)
            size = uri[len(_DROPPED):]
            group = tag[:4].upper()
            if group[:2] in ("50", "60") and int(group, 16) % 2 == 0:
                gone_groups.add(group)
                notes.append((name, f"omitted {label(tag)} ({size} bytes, over 64 KiB, not "
                                    f"kept in the .bmz) and the rest of group {group}"))
            else:
                notes.append((name, f"omitted {label(tag)} ({size} bytes, over 64 KiB, not "
                                    "kept in the .bmz)"))
    out: dict[str, Any] = {}
    for tag, elem in d.items():
        if tag in dropped or tag[:4].upper() in gone_groups:
            continue
        if not at and tag[:4].upper() == "7FE0":  # pixel-data group: only for the old encoding
            continue
        if encapsulated and tag == "00880200":
            notes.append((name, f"omitted {label(tag)} (its pixels are in the original's "
                                "compressed transfer syntax)"))
            continue
        if isinstance(elem, dict):
            vr = elem.get("vr")
            if vr == "SQ" and isinstance(elem.get("Value"), list):
                elem = dict(elem, Value=[
                    _prepared_json(item, name, swap, encapsulated, notes, f"{label(tag)} > ")
                    if isinstance(item, dict) else item for item in elem["Value"]])
            elif swap and vr in _SWAP_WIDTH and isinstance(elem.get("InlineBinary"), str):
                raw = base64.b64decode(elem["InlineBinary"])
                width = _SWAP_WIDTH[vr]
                if len(raw) % width == 0:
                    raw = np.frombuffer(raw, f">u{width}").astype(f"<u{width}").tobytes()
                    elem = dict(elem, InlineBinary=base64.b64encode(raw).decode("ascii"))
        out[tag] = elem
    return out


def _code(value: str, meaning: str) -> "Dataset":
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item


def _multi(ds: "Dataset", keyword: str) -> list:
    v = ds.get(keyword)
    if v is None or v == "":
        return []
    return list(v) if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue" else [v]


def _set_lossy(ds: "Dataset", ts: str, lossy: LossyCoding, name: str,
               notes: list[tuple[str, str]]) -> bool:
    """Mark ``ds`` lossy-compressed by bmz, keeping a recorded history; returns whether the
    original was already lossy."""
    was_lossy = str(ds.get("LossyImageCompression", "")).strip() == "01"
    ratios = _multi(ds, "LossyImageCompressionRatio")
    methods = _multi(ds, "LossyImageCompressionMethod")
    if was_lossy and ratios and not methods and len(ratios) == 1 and ts in _LOSSY_TS_METHOD:
        methods = [_LOSSY_TS_METHOD[ts]]  # the method the transfer syntax implies
    if was_lossy and ratios and len(ratios) == len(methods):
        ratios, methods = ratios + [lossy.ratio_text()], methods + [LOSSY_METHOD]
    else:
        if was_lossy or ts in _LOSSY_TS_METHOD:
            notes.append((name, "the original was lossy-compressed but does not record each "
                                "step's ratio and method; only bmz's is recorded"))
            was_lossy = True
        ratios, methods = [lossy.ratio_text()], [LOSSY_METHOD]
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = ratios if len(ratios) > 1 else ratios[0]
    ds.LossyImageCompressionMethod = methods if len(methods) > 1 else methods[0]
    return was_lossy


def _derivation_item(description: str, source: "Dataset") -> "Dataset":
    """A Derivation Image Sequence item (enhanced images)."""
    item = Dataset()
    item.DerivationDescription = description
    item.DerivationCodeSequence = [_code("113040", "Lossy Compression")]
    item.SourceImageSequence = [source]
    return item


def _add_evidence(ds: "Dataset", series_uid: str, original: tuple[str, str]) -> None:
    """Reference the original in Source Image Evidence Sequence (hierarchical: study, series,
    instance), which an enhanced image needs once a Source Image Sequence refers to it."""
    study = str(ds.get("StudyInstanceUID", "")).strip()
    evidence = list(ds.get("SourceImageEvidenceSequence") or [])
    study_item = next((it for it in evidence if str(it.get("StudyInstanceUID", "")) == study), None)
    if study_item is None:
        study_item = Dataset()
        study_item.StudyInstanceUID = study
        study_item.ReferencedSeriesSequence = []
        evidence.append(study_item)
    series_items = list(study_item.get("ReferencedSeriesSequence") or [])
    series_item = next((it for it in series_items
                        if str(it.get("SeriesInstanceUID", "")) == series_uid), None)
    if series_item is None:
        series_item = Dataset()
        series_item.SeriesInstanceUID = series_uid
        series_item.ReferencedSOPSequence = []
        series_items.append(series_item)
    sop = Dataset()
    sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID = original
    series_item.ReferencedSOPSequence = [*(series_item.get("ReferencedSOPSequence") or []), sop]
    study_item.ReferencedSeriesSequence = series_items
    ds.SourceImageEvidenceSequence = evidence


def _mark_derived(ds: "Dataset", lossy: LossyCoding, was_lossy: bool,
                  original: tuple[str, str], enhanced: bool) -> None:
    """Image Type / Frame Type DERIVED and the derivation (description, code, source); call it
    before the SeriesInstanceUID changes (an enhanced image references the original series)."""
    image_type = _multi(ds, "ImageType")
    ds.ImageType = ["DERIVED", *image_type[1:]] if image_type else ["DERIVED", "PRIMARY"]
    source = Dataset()
    source.ReferencedSOPClassUID, source.ReferencedSOPInstanceUID = original
    source.PurposeOfReferenceCodeSequence = [
        _code("121330", "Lossy compressed predecessor") if was_lossy
        else _code("121320", "Uncompressed predecessor")]
    description = lossy.description()
    if not enhanced:
        previous = str(ds.get("DerivationDescription", "")).strip()
        ds.DerivationDescription = (f"{description}; {previous}" if previous else description)[:1024]
        ds.DerivationCodeSequence = [*(ds.get("DerivationCodeSequence") or []),
                                     _code("113040", "Lossy Compression")]
        ds.SourceImageSequence = [*(ds.get("SourceImageSequence") or []), source]
        return
    _add_evidence(ds, str(ds.get("SeriesInstanceUID", "")).strip(), original)
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    for groups in [*shared, *per_frame]:
        for elem in groups:
            if elem.VR == "SQ":
                for item in elem.value:
                    types = _multi(item, "FrameType")
                    if types:
                        item.FrameType = ["DERIVED", *types[1:]]
    if any("DerivationImageSequence" in g for g in per_frame):
        for i, groups in enumerate(per_frame):
            ref = copy.deepcopy(source)
            ref.ReferencedFrameNumber = i + 1
            groups.DerivationImageSequence = [*(groups.get("DerivationImageSequence") or []),
                                              _derivation_item(description, ref)]
        return
    if not shared:
        ds.SharedFunctionalGroupsSequence = [Dataset()]
        shared = ds.SharedFunctionalGroupsSequence
    shared[0].DerivationImageSequence = [*(shared[0].get("DerivationImageSequence") or []),
                                         _derivation_item(description, source)]


def _derived_file(d: dict, name: str, ts: str, pixels: bytes, value_range: list[int],
                  plan: dict, series_uid: str, lossy: LossyCoding,
                  notes: list[tuple[str, str]], where: str) -> "FileDataset":
    """One output file: the original dataset ``d`` (DICOM JSON) turned into the derived one."""
    from pydicom.dataelem import DataElement
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    from .. import __version__

    uid = UID(ts) if ts else ImplicitVRLittleEndian
    prepared = _prepared_json(d, name, swap=not uid.is_little_endian,
                              encapsulated=uid.is_encapsulated, notes=notes)
    try:
        ds = Dataset.from_json(prepared)
    except Exception as exc:  # a stored element pydicom cannot rebuild: damaged meta
        raise FormatError(f"{where}: {name}: the stored DICOM elements cannot be rebuilt "
                          f"({exc})") from None
    sop_class = str(ds.get("SOPClassUID", "")).strip()
    if not sop_class:
        raise OutputError(f"{where}: {name}: the original has no SOP Class UID; cannot write a "
                          "valid DICOM file")
    original = (sop_class, str(ds.get("SOPInstanceUID", "")).strip() or "0")
    if not lossy.lossless:  # lossless: the original instance itself, in a native transfer syntax
        was_lossy = _set_lossy(ds, str(uid), lossy, name, notes)
        _mark_derived(ds, lossy, was_lossy, original, plan["enhanced"])
        ds.SOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID = series_uid
    elif original[1] == "0":
        ds.SOPInstanceUID = generate_uid()
    vr = "SS" if plan["signed"] else "US"
    for keyword, value in (("SmallestImagePixelValue", value_range[0]),
                           ("LargestImagePixelValue", value_range[1])):
        if keyword in ds:
            tag = ds.data_element(keyword).tag
            ds[tag] = DataElement(tag, vr, value)
    for keyword in ("SmallestPixelValueInSeries", "LargestPixelValueInSeries"):
        if keyword in ds:
            del ds[keyword]
    if len(pixels) % 2:
        pixels += b"\x00"
    ds.PixelData = pixels
    ds["PixelData"].VR = "OB" if plan["alloc"] == 8 else "OW"

    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = sop_class
    fm.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    fm.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    fm.ImplementationVersionName = f"BMZ_{__version__}"[:16]
    return FileDataset(name, ds, preamble=b"\x00" * 128, file_meta=fm)
