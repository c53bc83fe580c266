#!/usr/bin/env python
"""Per-volume BD-rates from a ``points.csv`` of ``bmz rd-curve`` / ``benchmarks/rd_val.py``: every
bmz model against JPEG 2000 and AVIF on each volume (PSNR, whole sweep and 0.25–2 bpp), so that a
group mean never hides a volume where bmz loses.

    python benchmarks/per_volume.py benchmarks/results/native/points.csv  → per_volume.md beside it
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bmz.metrics import bd_rate  # noqa: E402

ANCHORS = ("JPEG2000", "AVIF")


def curve(rows, vol, codec, model=""):
    pts = [(float(r["bpp"]), float(r["psnr"])) for r in rows
           if r["volume"] == vol and r["codec"] == codec and (r.get("model") or "") == model
           and r["mode"] == "lossy" and not r["error"] and r["psnr"] not in ("", "inf")]
    pts.sort()
    return [p[0] for p in pts], [p[1] for p in pts]


def _range(rows, vol, anchor):
    """The anchor's PSNR between 0.25 and 2 bpp on this volume (log-bpp interpolation)."""
    import numpy as np

    r, d = curve(rows, vol, anchor)
    if len(r) < 2:
        return None
    lo, hi = (float(np.interp(math.log(b), np.log(r), d)) for b in (0.25, 2.0))
    return (lo, hi) if hi > lo else None


def fmt(v):
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.1f} %"


def main() -> None:
    src = Path(sys.argv[1])
    rows = list(csv.DictReader(open(src)))
    vols = list(dict.fromkeys(r["volume"] for r in rows))
    models = sorted({r["model"] for r in rows if r["codec"] == "bmz" and r["model"]})
    lines = [f"# Per-volume BD-rates (PSNR) of bmz against JPEG 2000 and AVIF", "",
             f"From `{src.relative_to(REPO) if src.is_absolute() and REPO in src.parents else src}` "
             "(`benchmarks/per_volume.py`): each volume's own curves, BD-rate over the overlap of "
             "the two sweeps, and within 0.25–2 bpp of the anchor (negative = bmz needs fewer "
             "bits for the same PSNR).", "",
             "| volume | group | bits | " + " | ".join(
                 f"{m} vs {a}{s}" for m in models for a in ANCHORS for s in ("", " 0.25–2")) + " |",
             "|---|---|---|" + "---|" * (len(models) * len(ANCHORS) * 2)]
    for v in vols:
        r0 = next(r for r in rows if r["volume"] == v and r["bits"])
        cells = []
        for m in models:
            for a in ANCHORS:
                ar, ad = curve(rows, v, a)
                br, bd = curve(rows, v, "bmz", m)
                cells.append(fmt(bd_rate(ar, ad, br, bd)))
                rng = _range(rows, v, a)
                cells.append(fmt(bd_rate(ar, ad, br, bd, dist_range=rng) if rng else None))
        lines.append(f"| {v} | {r0['group']} | {r0['bits']} | " + " | ".join(cells) + " |")
    out = src.parent / "per_volume.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
