"""``bmz rd-curve``'s inputs: the volumes in the command-line paths, their groups and slices."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import io as bio
from ..io.discover import inputs
from .common import D8, DHI


@dataclass
class InputItem:
    """One volume to measure (or an input that could not even be listed: ``error``)."""

    path: str
    name: str  # unique id: the path relative to the command-line argument's parent
    source: str  # the group source: the command-line folder's name (a file: its parent's)
    series: str | None = None
    error: str = ""


def _dicom_items(folder: Path, name: str, source: str) -> list[InputItem]:
    try:
        series = bio.list_series(folder)
    except Exception as e:  # noqa: BLE001 - recorded as an error row
        return [InputItem(str(folder), name, source, error=f"{type(e).__name__}: {e}")]
    if not series:
        return [InputItem(str(folder), name, source,
                          error="DICOM folder without an image series")]
    if len(series) == 1:
        return [InputItem(str(folder), name, source)]
    out = []
    for s in series:
        tag = s["series_number"] if s["series_number"] is not None else s["uid"][-8:]
        out.append(InputItem(str(folder), f"{name}#{tag}", source, series=s["uid"]))
    return out


def discover(paths: Sequence[str | os.PathLike]) -> list[InputItem]:
    """The volumes in the command-line ``paths`` (see the module docstring for the rules)."""
    items: list[InputItem] = []
    for arg in paths:
        p = Path(os.fspath(arg))
        if not p.exists():
            items.append(InputItem(str(p), str(p), p.parent.name or ".",
                                   error=f"InputError: {p}: no such file or folder"))
            continue
        if p.is_file():
            items.append(InputItem(str(p), p.name, p.resolve().parent.name or "."))
            continue
        root = p.resolve()
        source = root.name or str(root)
        base = root.parent
        for kind, found in inputs(root):
            name = str(found.relative_to(base))
            if kind == "dicom":
                items += _dicom_items(found, name, source)
            else:
                items.append(InputItem(str(found), name, source))
    names: dict[str, int] = {}
    for it in items:  # unique names
        k = names.get(it.name, 0)
        names[it.name] = k + 1
        if k:
            it.name = f"{it.name}~{k}"
    return items


def depth_class(bits: int) -> str:
    return D8 if bits <= 8 else DHI


def middle_slices(n: int, max_slices: int | None) -> slice:
    """The ``max_slices`` middle slices of ``n`` (all when None or ≥ n)."""
    if not max_slices or max_slices >= n:
        return slice(0, n)
    start = (n - max_slices) // 2
    return slice(start, start + max_slices)


def load_volume(item: InputItem, max_slices: int | None) -> np.ndarray:
    vol = bio.read(item.path, series=item.series).data
    return np.ascontiguousarray(vol[middle_slices(vol.shape[0], max_slices)])
