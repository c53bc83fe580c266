#!/usr/bin/env python
"""Per-volume BD-rates from a ``points.csv`` of ``bmz rd-curve`` / ``benchmarks/rd_val.py``: every
bmz curve (models, ``max-error``) against JPEG 2000 and AVIF on each volume (PSNR, whole sweep
and 0.25–2 bpp), so that a group mean never hides a volume where bmz loses; and ``envelope``:
the volume's own Pareto front over those bmz curves (the best setting for this file, as an
encoder that tries them and keeps the smallest file meeting a quality target would choose).

    python benchmarks/per_volume.py benchmarks/results/native/points.csv [MODEL,…]
        → per_volume.md beside it (the models named, default every bmz curve in the file)
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bmz.metrics import bd_rate, envelope_points  # noqa: E402

ANCHORS = ("JPEG2000", "AVIF")


ENVELOPE = "envelope"


def curve(rows, vol, codec, model=""):
    pts = [(float(r["bpp"]), float(r["psnr"])) for r in rows
           if r["volume"] == vol and r["codec"] == codec and (r.get("model") or "") == model
           and r["mode"] == "lossy" and not r["error"] and r["psnr"] not in ("", "inf")]
    pts.sort()
    return [p[0] for p in pts], [p[1] for p in pts]


def envelope(rows, vol, models):
    """The volume's best points over the bmz curves of ``models`` (:func:`bmz.metrics.envelope_points`):
    (bpp, PSNR) lists."""
    cs = {m: curve(rows, vol, "bmz", m) for m in models}
    keep = envelope_points(cs)
    return [cs[m][0][i] for m, i in keep], [cs[m][1][i] for m, i in keep]


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
    models = (sys.argv[2].split(",") if len(sys.argv) > 2 else
              sorted({r["model"] for r in rows if r["codec"] == "bmz" and r["model"]}))
    columns = models + ([ENVELOPE] if len(models) > 1 else [])
    lines = [f"# Per-volume BD-rates (PSNR) of bmz against JPEG 2000 and AVIF", "",
             f"From `{src.relative_to(REPO) if src.is_absolute() and REPO in src.parents else src}` "
             "(`benchmarks/per_volume.py`): each volume's own curves, BD-rate over the overlap of "
             "the two sweeps, and within 0.25–2 bpp of the anchor (negative = bmz needs fewer "
             "bits for the same PSNR).", "",
             "| volume | group | bits | " + " | ".join(
                 f"{m} vs {a}{s}" for m in columns for a in ANCHORS for s in ("", " 0.25–2")) + " |",
             "|---|---|---|" + "---|" * (len(columns) * len(ANCHORS) * 2)]
    for v in vols:
        r0 = next(r for r in rows if r["volume"] == v and r["bits"])
        cells = []
        for m in columns:
            for a in ANCHORS:
                ar, ad = curve(rows, v, a)
                br, bd = envelope(rows, v, models) if m == ENVELOPE else curve(rows, v, "bmz", m)
                cells.append(fmt(bd_rate(ar, ad, br, bd)))
                rng = _range(rows, v, a)
                cells.append(fmt(bd_rate(ar, ad, br, bd, dist_range=rng) if rng else None))
        lines.append(f"| {v} | {r0['group']} | {r0['bits']} | " + " | ".join(cells) + " |")
    out = src.parent / "per_volume.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
