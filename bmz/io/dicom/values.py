"""Tolerant reading of DICOM element values: a damaged or missing value gives a default
(``None``, ``""``) instead of an error, for the reader's description of a series."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


def text(ds: "Dataset", keyword: str, default: str = "") -> str:
    """Element ``keyword`` of ``ds`` as a string, ``default`` when missing or unreadable."""
    try:
        v = ds.get(keyword, default)
        return default if v is None else str(v)
    except Exception:
        return default


def as_int(value: Any) -> int | None:
    """``int(value)``, or ``None`` for a missing, empty or non-numeric value."""
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def floats(value: Any, n: int) -> list[float] | None:
    """``n`` finite floats, or ``None``."""
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    if len(out) != n or not all(math.isfinite(v) for v in out):
        return None
    return out


def as_float(value: Any) -> float | None:
    """A finite float, or ``None``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def first_item(ds: "Dataset | None", keyword: str) -> "Dataset | None":
    """The first item of sequence ``keyword`` of ``ds``, or ``None``."""
    if ds is None:
        return None
    try:
        seq = ds.get(keyword)
        return seq[0] if seq else None
    except Exception:
        return None
