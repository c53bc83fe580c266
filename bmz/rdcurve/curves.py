"""``bmz rd-curve``'s curves: group means per codec and setting, BD-rates, comparisons, the
reference check."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import metrics
from .common import BMZ, CHECK_BPP, CHECK_DB, ENVELOPE, J2K, RATES, _curve_of, _f, _num


def group_curves(rows: list[dict]) -> list[dict]:
    """Mean over a group's volumes per (curve, setting) of the valid points (as the reference
    did); ``complete`` says whether every volume of the group that this curve measured at all has
    the point (only complete points enter BD-rates and plots)."""
    ok = [r for r in rows if not r.get("error") and _num(r.get("bpp"))]
    vols_of: dict[tuple, set] = {}
    for r in ok:
        vols_of.setdefault((r["group"], _curve_of(r)), set()).add(r["volume"])
    acc: dict[tuple, list] = {}
    for r in ok:
        acc.setdefault((r["group"], _curve_of(r), r["setting"]), []).append(r)
    out = []
    for (g, cid, setting), rs in acc.items():
        r0 = rs[0]
        d = {"group": g, "curve": cid, "codec": r0["codec"], "model": r0.get("model", ""),
             "version": r0["version"], "setting": setting, "mode": r0["mode"],
             "param": r0["param"], "n_volumes": len(rs),
             "complete": len(rs) == len(vols_of[(g, cid)])}
        for k in ("bpp", "bpp_nohdr", "ratio", "psnr", "ssim", "maxerr", "enc_MBps", "dec_MBps"):
            d[k] = float(np.mean([_f(r.get(k)) for r in rs]))
        ms = [_f(r.get("ms_ssim")) for r in rs]
        d["ms_ssim"] = float(np.mean(ms)) if ms and all(np.isfinite(ms)) else None
        out.append(d)
    out.sort(key=lambda d: (d["group"], d["curve"] != J2K, d["curve"], d["bpp"]))
    return out


def envelope(curves: list[dict]) -> list[dict]:
    """bmz's best operating points, per group with at least two bmz curves: the complete lossy
    points of every bmz curve (quality levels and ``max-error`` bounds) that
    :func:`bmz.metrics.envelope_points` keeps — none beaten by a point or by another curve's
    interpolation. Each point is one setting used for every volume of the group, so an encoder
    reaches it by choosing the model and setting; its ``setting`` says which
    (``MODEL:SETTING``). The curve is ``bmz/envelope``."""
    out = []
    for g in sorted({c["group"] for c in curves}):
        bm = {cid: lossy(cur) for cid, cur in curves_by(curves, g).items()
              if cid.startswith(BMZ + "/") and cid != f"{BMZ}/{ENVELOPE}"}
        bm = {cid: pts for cid, pts in bm.items() if pts}
        if len(bm) < 2:
            continue
        keep = metrics.envelope_points({cid: ([p["bpp"] for p in pts], [p["psnr"] for p in pts])
                                        for cid, pts in bm.items()})
        for cid, i in keep:
            p = bm[cid][i]
            out.append({**p, "curve": f"{BMZ}/{ENVELOPE}", "model": ENVELOPE,
                        "setting": f"{p['model']}:{p['setting']}"})
    return out


def lossy(curve: list[dict]) -> list[dict]:
    return [c for c in curve if c["mode"] == "lossy" and c.get("complete", True)
            and math.isfinite(c["psnr"])]


def curves_by(curves: list[dict], group: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for c in curves:
        if c["group"] == group:
            out.setdefault(c["curve"], []).append(c)
    return out


def _rd(curve, key):
    lc = lossy(curve)
    return [c["bpp"] for c in lc], [c[key] for c in lc]


def bd_table(curves: list[dict], anchors: Sequence[str]) -> list[dict]:
    """BD-rate (PSNR, SSIM) and BD-PSNR of every curve vs each anchor curve, per group."""
    out = []
    for g in sorted({c["group"] for c in curves}):
        by = curves_by(curves, g)
        for a in anchors:
            if a not in by:
                continue
            ar, ap = _rd(by[a], "psnr")
            _, as_ = _rd(by[a], "ssim")
            for cid, cur in by.items():
                if cid == a or not lossy(cur):
                    continue
                r, p = _rd(cur, "psnr")
                _, s = _rd(cur, "ssim")
                out.append({"group": g, "curve": cid, "anchor": a,
                            "bd_rate_psnr": metrics.bd_rate(ar, ap, r, p),
                            "bd_rate_ssim": metrics.bd_rate(ar, as_, r, s),
                            "bd_psnr": metrics.bd_psnr(ar, ap, r, p),
                            "bd_rate_psnr_025_2": metrics.bd_rate(
                                ar, ap, r, p, dist_range=_psnr_span(ar, ap, (0.25, 2.0)))})
    return out


def _psnr_span(r, p, rates):
    """The anchor's PSNR range between two rates (for a BD-rate restricted to those rates)."""
    v = metrics.interp_log_rate(r, p, rates)
    if not np.all(np.isfinite(v)):
        return None
    return (float(v[0]), float(v[1]))


def at_rates(curve: list[dict], key: str, rates=RATES) -> list[float]:
    r, d = _rd(curve, key)
    return [float(x) for x in metrics.interp_log_rate(r, d, rates)]


def compare(test: list[dict], anchor: list[dict], target: tuple[float, float] = (0.25, 1.0),
            ref_anchor: tuple[list, list] | None = None) -> dict:
    """``test`` vs ``anchor`` curves of one group: per-point anchor quality at the same bpp,
    BD-rates, the PSNR gap over ``target`` (bpp range) and whether test ≥ anchor across it;
    ``ref_anchor`` (bpp list, PSNR list), e.g. the reference csv's curve, is compared too."""
    b, j = lossy(test), lossy(anchor)
    jr, jp, js = ([c[k] for c in j] for k in ("bpp", "psnr", "ssim"))
    br, bp, bs = ([c[k] for c in b] for k in ("bpp", "psnr", "ssim"))
    pts = []
    for c in sorted(b, key=lambda c: c["bpp"]):
        ap = float(metrics.interp_log_rate(jr, jp, c["bpp"])[0])
        as_ = float(metrics.interp_log_rate(jr, js, c["bpp"])[0])
        pts.append({**c, "a_psnr": ap, "a_ssim": as_, "d_db": c["psnr"] - ap,
                    "d_ssim": c["ssim"] - as_})
    at = {}
    for rate in RATES:
        bv = float(metrics.interp_log_rate(br, bp, rate)[0])
        jv = float(metrics.interp_log_rate(jr, jp, rate)[0])
        at[rate] = (bv, jv, bv - jv)
    grid = np.geomspace(target[0], target[1], 41)
    gap = metrics.interp_log_rate(br, bp, grid) - metrics.interp_log_rate(jr, jp, grid)
    covered = bool(np.all(np.isfinite(gap)))
    fin = gap[np.isfinite(gap)]
    res = {"points": pts, "at": at, "target": target,
           "bd_rate_psnr": metrics.bd_rate(jr, jp, br, bp),
           "bd_rate_ssim": metrics.bd_rate(jr, js, br, bs),
           "bd_psnr": metrics.bd_psnr(jr, jp, br, bp),
           "bd_psnr_target": metrics.bd_psnr(jr, jp, br, bp, rate_range=target),
           "gap_min": float(fin.min()) if fin.size else None,
           "gap_max": float(fin.max()) if fin.size else None, "gap_covered": covered}
    res["target_met"] = bool(covered and fin.size and fin.min() >= 0)
    if ref_anchor is not None:
        rr, rp = ref_anchor
        gap_r = metrics.interp_log_rate(br, bp, grid) - metrics.interp_log_rate(rr, rp, grid)
        fin_r = gap_r[np.isfinite(gap_r)]
        res["ref"] = {
            "at": {rate: float(metrics.interp_log_rate(br, bp, rate)[0]
                               - metrics.interp_log_rate(rr, rp, rate)[0]) for rate in RATES},
            "gap_min": float(fin_r.min()) if fin_r.size else None,
            "bd_rate_psnr": metrics.bd_rate(rr, rp, br, bp),
            "target_met": bool(np.all(np.isfinite(gap_r)) and fin_r.size and fin_r.min() >= 0)}
    return res


def read_reference(path: str | os.PathLike | None) -> list[dict]:
    if not path or not Path(path).is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def reference_check(curves: list[dict], ref_rows: list[dict], group: str,
                    ref_group: str) -> dict:
    """Our group means vs the reference csv's rows (``ref_group``), per codec and setting present
    in both (tolerance :data:`CHECK_DB` dB / :data:`CHECK_BPP` relative bpp), and per codec the
    PSNR of both curves at :data:`RATES`."""
    ref = {(r["codec"], r["setting"]): r for r in ref_rows if r["group"] == ref_group}
    per = []
    for c in curves:
        if c["group"] != group or c["codec"] == BMZ:
            continue
        r = ref.get((c["codec"], c["setting"]))
        if r is None:
            continue
        rb, rp = float(r["bpp"]), float(r["psnr"])
        d_bpp = c["bpp"] / rb - 1.0
        d_db = (c["psnr"] - rp) if math.isfinite(rp) and math.isfinite(c["psnr"]) else 0.0
        per.append({"codec": c["codec"], "setting": c["setting"], "n_volumes": c["n_volumes"],
                    "n_ref": int(r["n_volumes"]), "bpp": c["bpp"], "ref_bpp": rb, "d_bpp": d_bpp,
                    "bpp_nohdr": c["bpp_nohdr"], "ref_bpp_nohdr": _f(r.get("bpp_nohdr")),
                    "psnr": c["psnr"], "ref_psnr": rp, "d_db": d_db, "ssim": c["ssim"],
                    "ref_ssim": float(r["ssim"]),
                    "ok": abs(d_bpp) <= CHECK_BPP and abs(d_db) <= CHECK_DB})
    at = {}
    for codec in sorted({p["codec"] for p in per}):
        cur = [c for c in curves if c["group"] == group and c["codec"] == codec]
        rl = [r for r in ref.values() if r["codec"] == codec and r["mode"] == "lossy"]
        ours = at_rates(cur, "psnr")
        theirs = [float(x) for x in metrics.interp_log_rate(
            [float(r["bpp"]) for r in rl], [float(r["psnr"]) for r in rl], RATES)]
        at[codec] = [(o, t, o - t) for o, t in zip(ours, theirs)]
    return {"per_setting": per, "at": at, "n_ok": sum(p["ok"] for p in per), "n": len(per),
            "full": bool(per) and all(p["n_volumes"] == p["n_ref"] for p in per)}
