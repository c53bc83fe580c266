"""DICOM reading (pydicom 3): single files, series folders and enhanced multi-frame files.

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
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, MissingDependencyError
from . import Volume, as_integer_array

try:
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.uid import UID, ImplicitVRLittleEndian
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


def _check_monochrome(ds: "Dataset", path: Path) -> None:
    spp = _int(ds.get("SamplesPerPixel", 1)) or 1
    photo = _str(ds, "PhotometricInterpretation", "MONOCHROME2").strip().upper()
    if spp != 1 or photo not in ("MONOCHROME1", "MONOCHROME2"):
        raise InputError(
            f"{path}: colour image ({photo}, {spp} samples per pixel); bmz encodes greyscale "
            "(MONOCHROME1/2) images"
        )


def _decode(ds: "Dataset", path: Path, notes: list[str]) -> np.ndarray:
    """The stored pixel values of ``ds`` as ``(n_frames, rows, cols)``."""
    from pydicom.pixels import get_decoder

    ts = _transfer_syntax(ds)
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise InputError(
            f"{path}: pixel data in transfer syntax {ts.name} ({ts}) cannot be decoded"
        ) from None
    if not decoder.is_available:
        pkg = _PIP_FOR_TS.get(str(ts), "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg")
        raise MissingDependencyError(
            f"{path}: decoding {ts.name} pixel data needs a decoder plugin: pip install {pkg}"
        )
    try:
        arr = ds.pixel_array
    except MemoryError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: cannot decode the {ts.name} pixel data ({exc})") from None
    rows, cols = int(ds.Rows), int(ds.Columns)
    arr = np.asarray(arr).reshape(-1, rows, cols)
    _note_high_bits(ds, ts, path, notes)
    return arr


def _note_high_bits(ds: "Dataset", ts: "UID", path: Path, notes: list[str]) -> None:
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
                f"{path.name}: pixel words have bits set above BitsStored={stored}; bmz keeps "
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
    return _build(members, base, where=path)


def _build(members: list[tuple[Path, "Dataset"]], base: Path, where: Path) -> Volume:
    notes: list[str] = []
    arrays: list[np.ndarray] = []
    slices: list[dict[str, Any]] = []  # one per frame, in file order
    first_shape: tuple[int, int] | None = None
    first_dtype: np.dtype | None = None
    first_path: Path | None = None
    multiframe = False
    bits_stored = 0
    for fi, (p, ds) in enumerate(members):
        _check_monochrome(ds, p)
        arr = _decode(ds, p, notes)
        arr, _ = as_integer_array(arr, str(p))
        if first_shape is None:
            first_shape, first_dtype, first_path = arr.shape[1:], arr.dtype, p
        elif arr.shape[1:] != first_shape:
            raise InputError(
                f"{p}: slice size {arr.shape[1]}x{arr.shape[2]} differs from "
                f"{first_shape[0]}x{first_shape[1]} of {first_path}; one series must have one size"
            )
        elif arr.dtype != first_dtype:
            if arr.dtype.newbyteorder("=") == first_dtype.newbyteorder("="):
                arr = arr.astype(first_dtype)
            else:
                raise InputError(
                    f"{p}: pixel dtype {arr.dtype} differs from {first_dtype} of {first_path}"
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

    def rel(p: Path) -> str:
        try:
            return p.relative_to(base).as_posix()
        except ValueError:
            return p.name

    names = [rel(members[fi][0]) for fi in files_sorted]
    common, datasets = _store(
        [_dataset_json(members[fi][1], names[r], notes) for r, fi in enumerate(files_sorted)]
    )
    file_meta_common, file_meta = _store(
        [_file_meta_json(members[fi][1], names[r], notes) for r, fi in enumerate(files_sorted)]
    )

    rescale = [[s["slope"], s["intercept"]] for s in ordered]
    if all(r == [None, None] for r in rescale):
        rescale = None
    first = members[files_sorted[0]][1]
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
    return Volume(data=data, source="dicom", meta=_jsonable(meta), path=str(where))
