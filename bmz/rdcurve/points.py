"""``bmz rd-curve``'s points files: ``points.csv`` / ``points.json`` read and written, the key
that lets ``--reuse`` keep a row."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .common import _NUM, _curve_of, _num


def point_key(row: dict) -> tuple:
    """(volume, series, max_slices, codec, model, version|format, setting): the identity of a point
    (bmz rows measured with another file format — or before the format was recorded — differ)."""
    return (str(row["volume"]), str(row.get("series") or ""), int(float(row.get("max_slices") or 0)),
            str(row["codec"]), str(row.get("model") or ""),
            f"{row['version']}|{row.get('format') or ''}", str(row["setting"]))


def _parse(row: dict) -> dict:
    """A points.csv row with numbers as numbers (inf kept, empty → None)."""
    out = {}
    for k, v in row.items():
        if k in _NUM:
            if v is None or v == "":
                out[k] = None
            else:
                try:
                    out[k] = float(v)
                except ValueError:
                    out[k] = v
        else:
            out[k] = v if v is not None else ""
    return out


def load_points(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [_parse(r) for r in csv.DictReader(f)]


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if math.isnan(v):
            return ""
        if v == int(v) and abs(v) < 1e15:
            return str(int(v))
        return f"{v:.6g}"
    return v


def write_csv(path: Path, rows: Iterable[dict], fields: Sequence[str]) -> None:
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(r.get(k)) for k in fields})
    os.replace(tmp, path)


def _json_safe(v):
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, (np.floating, float)):
        v = float(v)
        return v if math.isfinite(v) else ("inf" if v == math.inf else None)
    if isinstance(v, np.integer):
        return int(v)
    return v


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(_json_safe(obj), indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)


def _sort_rows(rows: list[dict], order: dict[str, int]) -> list[dict]:
    def k(r):
        return (str(r.get("group")), str(r.get("volume")), order.get(_curve_of(r), 99),
                _curve_of(r), float(r["bpp"]) if _num(r.get("bpp")) else math.inf,
                str(r.get("setting")))
    return sorted(rows, key=k)
