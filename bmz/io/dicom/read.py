"""Reading DICOM: a file, a series folder (:func:`read_dicom`) or data held in memory
(:func:`read_datasets`) into a :class:`~bmz.io.volume.Volume` whose ``attachment`` keeps every
file's bytes but its pixel data (:mod:`bmz.io.dicom.kept`) and whose ``meta`` describes the
series (the rules and the ``meta`` layout: :mod:`bmz.io.dicom`)."""

from __future__ import annotations

import base64
import io
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError, MissingDependencyError
from ..volume import Volume, as_integer_array
from .geometry import frame_geometry, sort_order
from .kept import KeepError, KeptFile, keep_file, pack
from .notes import kept_notes
from .series import BULK_LIMIT, group, open_file, require_pydicom, scan, select
from .values import as_int, text

try:
    import pydicom
    from pydicom import pixels as _pixels
    from pydicom.dataset import Dataset
    from pydicom.uid import UID, ImplicitVRLittleEndian
except ImportError:  # pragma: no cover - pydicom is a hard dependency
    pass

#: the DICOM meta layout bmz writes (``meta["dicom"]["layout"]``; 1: :mod:`bmz.io.dicom.legacy`)
LAYOUT = 2

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


def _transfer_syntax(ds: "Dataset") -> "UID":
    fm = getattr(ds, "file_meta", None)
    ts = fm.get("TransferSyntaxUID") if fm is not None else None
    return UID(ts) if ts else ImplicitVRLittleEndian


def _check_monochrome(ds: "Dataset", where: str) -> None:
    spp = as_int(ds.get("SamplesPerPixel", 1)) or 1
    photo = text(ds, "PhotometricInterpretation", "MONOCHROME2").strip().upper()
    if spp != 1 or photo not in ("MONOCHROME1", "MONOCHROME2"):
        raise InputError(
            f"{where}: colour image ({photo}, {spp} samples per pixel); bmz encodes greyscale "
            "(MONOCHROME1/2) images"
        )


def _check_bits(ds: "Dataset", where: str) -> None:
    """Refuse what bmz cannot keep exactly: 1-bit pixels, an allocation other than 8/16/32."""
    alloc = as_int(ds.get("BitsAllocated"))
    if alloc == 1:
        raise InputError(f"{where}: 1-bit pixel data (BitsAllocated 1, e.g. a segmentation or a "
                         "binary mask); bmz encodes images of 8 to 16 bits allocated")
    if alloc not in (8, 16, 32):
        raise InputError(f"{where}: BitsAllocated {alloc}; bmz encodes 8, 16 or 32 bits "
                         "allocated")


def _decode(ds: "Dataset", where: str) -> np.ndarray:
    """The stored pixel values of ``ds`` as ``(n_frames, rows, cols)``; errors name ``where``."""
    ts = _transfer_syntax(ds)
    try:
        decoder = _pixels.get_decoder(ts)
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


def read_dicom(path: Path, series: str | None = None, keep_encapsulated: bool = False) -> Volume:
    """Read a DICOM file, or the (chosen) series of a DICOM folder, into a :class:`Volume`
    whose ``attachment`` holds the files' kept bytes (:mod:`bmz.io.dicom.kept`; with
    ``keep_encapsulated`` the encapsulated pixel bytes of compressed originals too)."""
    require_pydicom()
    path = Path(path)
    if path.is_dir():
        items = scan(path)
        if not items:
            raise InputError(f"{path}: no DICOM images found in this folder")
        groups = group(items)
        uid = select(groups, series, path)
        members = groups[uid]
        base = path
    else:
        ds = open_file(path, strict=True)
        if ds is None or "PixelData" not in ds:
            raise InputError(f"{path}: DICOM file without pixel data (not an image)")
        if "Rows" not in ds or "Columns" not in ds:
            raise InputError(f"{path}: DICOM pixel data without Rows/Columns")
        if series is not None:
            select({text(ds, "SeriesInstanceUID"): [(path, ds)]}, series, path)
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

    The bytes kept of each file (:mod:`bmz.io.dicom.kept`) are those given: bytes and file
    objects as they are, a ``Dataset`` as pydicom writes it (``dcmwrite`` without enforcing the
    file format: its preamble and file meta as they are).
    """
    require_pydicom()
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
        groups.setdefault(text(ds, "SeriesInstanceUID"), []).append((label, ds))
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
                                   defer_size=BULK_LIMIT).original_encoding
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
    kept: list[KeptFile] = []
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
        bits_stored = max(bits_stored, as_int(ds.get("BitsStored")) or 0)
        instance = as_int(ds.get("InstanceNumber"))
        for k, g in enumerate(frame_geometry(ds, n_frames)):
            g.update(file=fi, frame=k, instance=instance)
            slices.append(g)
        arrays.append(arr)

    order, sorted_by = sort_order(slices)
    stacked = np.concatenate(arrays, axis=0) if len(arrays) > 1 else arrays[0]
    data = np.ascontiguousarray(stacked[order])
    ordered = [slices[i] for i in order]

    # files in order of first appearance in the slices
    file_rank: dict[int, int] = {}
    for s in ordered:
        file_rank.setdefault(s["file"], len(file_rank))
    files_sorted = sorted(file_rank, key=file_rank.get)

    names = [members[fi][1] for fi in files_sorted]
    descriptor, attachment = pack([kept[fi] for fi in files_sorted])

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
            "series_uid": text(first, "SeriesInstanceUID") or None,
            "geometry": geometry,
            "kept": descriptor,
            "notes": kept_notes(descriptor, names, lossless=True),
        },
        "bits_stored": bits_stored or int(data.dtype.itemsize * 8),
        "photometric": text(first, "PhotometricInterpretation", "MONOCHROME2").strip(),
    }
    return Volume(data=data, source="dicom", meta=_jsonable(meta), path=path,
                  attachment=attachment)


def _keep(ds: "Dataset", src: Any, label: str, arr: np.ndarray,
          keep_encapsulated: bool) -> "KeptFile":
    """The file's kept bytes (:func:`bmz.io.keep_file`)."""
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
    attrs = {"alloc": as_int(ds.get("BitsAllocated")), "stored": as_int(ds.get("BitsStored")) or 0,
             "signed": as_int(ds.get("PixelRepresentation")) == 1}
    try:
        kf = keep_file(raw, label, arr, attrs, encoding, keep_encapsulated)
    except KeepError as e:
        raise InputError(str(e)) from None
    return kf
