"""DICOM meta layout 1: the DICOM-JSON datasets of the ``.bmz`` files bmz wrote before the
kept bytes (:mod:`bmz.io.dicom.kept`, layout 2) — read only, so that those files still decode.

Their ``source_meta.dicom`` holds each file's dataset as pydicom's DICOM-JSON (tag → ``{"vr",
"Value" | "InlineBinary" | "BulkDataURI"}``) without the pixel data, de-duplicated: ``common``
holds the elements most files share, ``datasets[k]`` the rest of file ``k`` plus ``"absent":
[tags]`` for those of ``common`` it lacks; binary values are stored as lowercase hex
(``"bmz:hex"``) instead of base64; binary elements over 64 KiB were not kept
(``"BulkDataURI": "bmz:dropped:<n>"``). ``file_meta_common`` / ``file_meta`` the same for the
file meta. :func:`dicom_datasets` and :func:`dicom_file_meta` rebuild the full dicts;
:func:`legacy_dataset` makes a pydicom dataset of one, for DICOM output.
"""

from __future__ import annotations

import base64
import copy
from typing import Any

import numpy as np
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.uid import UID, ImplicitVRLittleEndian

from ...errors import FormatError, OutputError
from .derive import SWAP_WIDTH
from .values import as_int

_DROPPED = "bmz:dropped:"


_ABSENT = "absent"  # key, in a per-file entry, of the tags of "common" that file lacks


def _merge_common(common: Any, entries: Any) -> list[dict[str, Any]]:
    """The full per-file dicts (keys sorted) from the de-duplicated ones; new objects,
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


def _hex_to_binary(value: Any) -> Any:
    """Stored hex back to base64 ``InlineBinary`` (new objects throughout); bad hex raises
    ``ValueError``."""
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


def _rebuild(common: Any, entries: Any) -> list[dict[str, Any]]:
    """The per-file DICOM-JSON dicts from their stored form (``common``, ``entries``)."""
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


def _json_value(d: dict, tag: str) -> Any:
    """The first value of element ``tag`` of a DICOM-JSON dict, or ``None``."""
    elem = d.get(tag)
    if isinstance(elem, dict) and isinstance(elem.get("Value"), list) and elem["Value"]:
        return elem["Value"][0]
    return None


def plan(d: dict, name: str, n_frames: int, hw: tuple, where: str) -> dict[str, Any]:
    """What writing file ``name`` (DICOM-JSON ``d``) needs, checked against the volume."""
    def num(tag: str, what: str) -> int:
        v = _json_value(d, tag)
        if isinstance(v, str):
            v = as_int(v)
        if not isinstance(v, int) or isinstance(v, bool):
            raise FormatError(f"{where}: {name}: the stored dataset has no valid {what}")
        return v

    rows, cols = num("00280010", "Rows"), num("00280011", "Columns")
    if (rows, cols) != hw:
        raise FormatError(f"{where}: {name}: {rows}x{cols} pixels, but the volume's slices are "
                          f"{hw[0]}x{hw[1]}")
    declared = as_int(_json_value(d, "00280008")) if "00280008" in d else None
    if (declared or 1) != n_frames:
        raise FormatError(f"{where}: {name}: Number of Frames is {declared or 1}, the volume "
                          f"holds {n_frames} of its frames")
    alloc, stored = num("00280100", "BitsAllocated"), num("00280101", "BitsStored")
    signed = num("00280103", "PixelRepresentation") == 1
    if alloc not in (8, 16, 32) or not 1 <= stored <= alloc:
        raise OutputError(f"{where}: {name}: BitsAllocated {alloc} / BitsStored {stored} cannot be "
                          "written (bmz writes 8, 16 or 32 bits allocated)")
    return {
        "bits_stored": stored, "signed": signed, "alloc": alloc,
        "min": -(1 << (stored - 1)) if signed else 0,
        "max": (1 << (stored - 1)) - 1 if signed else (1 << stored) - 1,
    }


def _prepared_json(d: dict, name: str, swap: bool, encapsulated: bool,
                   notes: list[tuple[str, str]], at: str = "") -> dict:
    """A DICOM-JSON dict made ready for ``Dataset.from_json`` and native little-endian output:
    dropped bulk elements omitted (with their whole overlay/curve group), an encapsulated
    original's icon omitted, big-endian binary words swapped; recursive through sequences."""
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
            elif swap and vr in SWAP_WIDTH and isinstance(elem.get("InlineBinary"), str):
                raw = base64.b64decode(elem["InlineBinary"])
                width = SWAP_WIDTH[vr]
                if len(raw) % width == 0:
                    raw = np.frombuffer(raw, f">u{width}").astype(f"<u{width}").tobytes()
                    elem = dict(elem, InlineBinary=base64.b64encode(raw).decode("ascii"))
        out[tag] = elem
    return out


def legacy_dataset(d: dict, name: str, ts: str, notes: list[tuple[str, str]],
                   where: str) -> "Dataset":
    """File ``name``'s dataset (DICOM-JSON ``d``, original transfer syntax ``ts``) as a pydicom
    Dataset for native little-endian output (:func:`_prepared_json`: dropped elements omitted
    and noted, big-endian words swapped)."""
    uid = UID(ts) if ts else ImplicitVRLittleEndian
    prepared = _prepared_json(d, name, swap=not uid.is_little_endian,
                              encapsulated=uid.is_encapsulated, notes=notes)
    try:
        return Dataset.from_json(prepared)
    except Exception as exc:  # a stored element pydicom cannot rebuild: damaged meta
        raise FormatError(f"{where}: {name}: the stored DICOM elements cannot be rebuilt "
                          f"({exc})") from None
