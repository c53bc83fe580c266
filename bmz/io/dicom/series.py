"""Finding DICOM files and their series: opening a file (large values deferred), scanning a
folder for image files, grouping them by series, and choosing the series to read
(:func:`bmz.io.dicom.read.read_dicom` describes the rules)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import InputError, MissingDependencyError
from ..discover import DICOM_SUFFIXES, has_dicom_preamble, walk
from .values import as_int, text

try:
    import pydicom
    from pydicom.dataset import Dataset
except ImportError:  # pragma: no cover - pydicom is a hard dependency
    pydicom = None  # type: ignore[assignment]

#: values larger than this are read only when needed (scanning a folder reads headers)
BULK_LIMIT = 64 * 1024
# files read as DICOM (with or without a preamble) by their suffix; "": no suffix (IM0001)
_DICOM_SUFFIXES = set(DICOM_SUFFIXES) | {""}



def require_pydicom() -> None:
    """Raise :class:`MissingDependencyError` when pydicom is missing."""
    if pydicom is None:  # pragma: no cover
        raise MissingDependencyError("DICOM support needs pydicom: pip install pydicom")


def open_file(path: Path, strict: bool) -> "Dataset | None":
    """Read a DICOM file's dataset (large values deferred). With ``strict`` (a file that claims to
    be DICOM, or the file the user named) errors raise :class:`InputError`; otherwise a file that
    does not parse as DICOM gives ``None``."""
    preamble = has_dicom_preamble(path)
    if not preamble and not strict and path.suffix.lower() not in _DICOM_SUFFIXES:
        return None
    try:
        return pydicom.dcmread(path, defer_size=BULK_LIMIT, force=not preamble)
    except MemoryError:
        raise
    except Exception as exc:  # pydicom raises many kinds of errors on damaged or foreign files
        if strict or preamble:
            raise InputError(f"{path}: not a readable DICOM file ({exc})") from None
        return None


def is_image(ds: "Dataset") -> bool:
    """Whether ``ds`` holds pixel data with its size."""
    return "PixelData" in ds and "Rows" in ds and "Columns" in ds


def is_dicom_image(path: Path) -> bool:
    """Whether the file at ``path`` reads as a DICOM image (one without the preamble and without
    a suffix, e.g. ``IM0001``, is tried too)."""
    ds = open_file(path, strict=False)
    return ds is not None and is_image(ds)


def scan(folder: Path) -> list[tuple[Path, "Dataset"]]:
    """All DICOM image files under ``folder`` (recursive, sorted by path, hidden ones skipped)."""
    found: list[tuple[Path, Dataset]] = []
    for root, _, files in walk(folder):
        for name in files:
            p = Path(root) / name
            ds = open_file(p, strict=False)
            if ds is not None and is_image(ds):
                found.append((p, ds))
    return found


def group(items: list[tuple[Path, "Dataset"]]) -> dict[str, list[tuple[Path, "Dataset"]]]:
    """``items`` by SeriesInstanceUID."""
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    for p, ds in items:
        groups.setdefault(text(ds, "SeriesInstanceUID"), []).append((p, ds))
    return groups


def _series_info(uid: str, members: list[tuple[Path, "Dataset"]]) -> dict[str, Any]:
    ds = members[0][1]
    return {
        "uid": uid,
        "description": text(ds, "SeriesDescription"),
        "series_number": as_int(ds.get("SeriesNumber")),
        "n_files": len(members),
        "modality": text(ds, "Modality"),
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
    require_pydicom()
    return _sorted_infos(group(scan(Path(folder))))


def select(groups: dict[str, list], series: str | None, where: Path) -> str:
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
