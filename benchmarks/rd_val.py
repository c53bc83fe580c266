#!/usr/bin/env python
"""Rate–distortion of bmz vs JPEG 2000 on the validation set (``../shared/data/val``).

    python benchmarks/rd_val.py [--data DIR] [--out benchmarks/results] [--max-volumes N]
                                [--qualities 1,2,..] [--threads 1] [--models a,b] [--groups g,..]
                                [--j2k-settings psnr30,psnr36,..] [--no-j2k | --no-bmz] [--fresh]

Volumes and groups:

* ``val-8bit``: the 10 IXI T1 volumes (``ixi_nichart/t1/*.nii.gz``) + the studyforrest slab
  (``datalad_example_dicom_structural``) — the ``val`` group of ``shared/reference/classical_val.csv``;
* ``prisma-12bit``: the native 12-bit Siemens Prisma FLASH series (``dcm_qa_decubitus/HFS_t1_fl2d_sag``).

Slices are ``Volume.data`` axis 0 (the last NIfTI axis). For every shipped model
(``zoo.available_models()``) × quality level, and for JPEG 2000 over its settings sweep
(:mod:`bmz.baselines`), per volume: bpp (all bytes: the whole ``.bmz`` file / all J2K
codestreams), PSNR (peak = volume max − min, from the volume MSE), SSIM (mean over slices),
MS-SSIM (slices ≥ 161 px only), max error, and single-thread encode/decode MB/s (MB of 16-bit raw =
voxels × 2 / 1e6; wall time of ``bmz.api.compress``/``decompress``, or of all the slice codec
calls). Group curves are means over the group's volumes per setting (as the reference did).

Outputs in ``--out``: ``rd_val_points.csv`` (one row per volume × codec × setting; also the cache
that makes reruns resume: rows whose volume, codec version / model SHA-256 and setting match are
reused unless ``--fresh``), ``rd_val_groups.csv``, ``rd_val.md`` and ``rd_val.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import datetime as _dt
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bmz import __version__ as BMZ_VERSION  # noqa: E402
from bmz import baselines, metrics  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "val"
DEFAULT_OUT = REPO / "benchmarks" / "results"
REFERENCE_CSV = REPO.parent / "shared" / "reference" / "classical_val.csv"

G8, G12 = "val-8bit", "prisma-12bit"
GROUPS = (G8, G12)
REF_GROUP = {G8: "val"}  # our group -> classical_val.csv group
J2K = "JPEG2000"
CHECK_DB, CHECK_BPP = 0.3, 0.03  # reference check tolerances (dB, relative bpp)
RATES = (0.25, 0.5, 1.0, 2.0)  # table rates (bpp), as REFERENCE.md
TARGET = (0.25, 1.0)  # bmz >= J2K PSNR across this bpp range on val-8bit

FIELDS = ["group", "volume", "path", "codec", "model", "version", "setting", "mode", "param",
          "n_slices", "height", "width", "dtype", "bits", "vmin", "vmax", "n_voxels", "n_bytes",
          "bpp", "psnr", "ssim", "ms_ssim", "maxerr", "enc_s", "dec_s", "enc_MBps", "dec_MBps",
          "threads", "error"]
GFIELDS = ["group", "curve", "codec", "model", "version", "setting", "mode", "param", "n_volumes",
           "bpp", "psnr", "ssim", "ms_ssim", "maxerr", "enc_MBps", "dec_MBps"]


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------


def find_volumes(data: Path, groups, max_volumes: int | None) -> list[tuple[str, str, Path]]:
    """[(group, volume name, path)] in a fixed order; at most ``max_volumes`` per group."""
    vols: dict[str, list[tuple[str, Path]]] = {G8: [], G12: []}
    for p in sorted((data / "ixi_nichart" / "t1").glob("*.nii.gz")):
        vols[G8].append((p.name[: -len(".nii.gz")], p))
    sf = data / "datalad_example_dicom_structural"
    if sf.is_dir():
        vols[G8].append(("studyforrest_slab", sf))
    pr = data / "dcm_qa_decubitus" / "HFS_t1_fl2d_sag"
    if pr.is_dir():
        vols[G12].append(("prisma_HFS_t1_fl2d_sag", pr))
    out = []
    for g in groups:
        sel = vols[g][:max_volumes] if max_volumes else vols[g]
        out += [(g, n, p) for n, p in sel]
    return out


def machine_info() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    import imagecodecs
    import torch

    return {"nproc": usable, "cpu": cpu, "load_at_start": load, "python": platform.python_version(),
            "torch": torch.__version__, "imagecodecs": imagecodecs.__version__,
            "openjpeg": imagecodecs.jpeg2k_version(), "host": platform.node()}


# ----------------------------------------------------------------------------------------------
# cache of points
# ----------------------------------------------------------------------------------------------


def _key(row) -> tuple:
    return (row["volume"], row["codec"], row["model"], row["version"], row["setting"])


def load_points(path: Path) -> dict[tuple, dict]:
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {_key(r): r for r in csv.DictReader(f) if not r.get("error")}


def write_csv(path: Path, rows, fields) -> None:
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(r.get(k)) for k in fields})
    os.replace(tmp, path)


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if math.isnan(v):
            return ""
        return f"{v:.6g}"
    return v


def _f(v) -> float:
    """CSV/float value → float (NaN when empty)."""
    if v is None or v == "":
        return math.nan
    return float(v)


# ----------------------------------------------------------------------------------------------
# measuring one point
# ----------------------------------------------------------------------------------------------


def quality_metrics(ref: np.ndarray, rec: np.ndarray) -> dict:
    rng = metrics.volume_range(ref)
    return {"psnr": metrics.psnr(ref, rec, rng), "ssim": metrics.ssim(ref, rec, rng),
            "ms_ssim": metrics.ms_ssim(ref, rec, rng), "maxerr": metrics.max_abs_error(ref, rec)}


def measure_bmz(vol: np.ndarray, model: str, quality: int) -> dict:
    from bmz import api

    t0 = time.perf_counter()
    data = api.compress(vol, quality=quality, model=model)
    t1 = time.perf_counter()
    rec = api.decompress(data)
    t2 = time.perf_counter()
    if rec.shape != vol.shape or rec.dtype != vol.dtype:
        raise RuntimeError(f"decoded {rec.shape} {rec.dtype}, expected {vol.shape} {vol.dtype}")
    return {"n_bytes": len(data), "enc_s": t1 - t0, "dec_s": t2 - t1, **quality_metrics(vol, rec)}


def measure_classical(codec, vol: np.ndarray, setting) -> dict:
    cv = baselines.code_volume(codec, vol, setting)
    return {"n_bytes": cv.n_bytes, "enc_s": cv.enc_s, "dec_s": cv.dec_s,
            **quality_metrics(vol, cv.recon)}


# ----------------------------------------------------------------------------------------------
# aggregation and comparisons
# ----------------------------------------------------------------------------------------------


def curve_id(row) -> str:
    return f"bmz/{row['model']}" if row["codec"] == "bmz" else row["codec"]


def group_curves(rows, vol_names_by_group) -> list[dict]:
    """Mean over a group's volumes per (curve, setting); n_volumes says how many it had."""
    acc: dict[tuple, list] = {}
    for r in rows:
        if r["volume"] not in vol_names_by_group.get(r["group"], ()):
            continue
        acc.setdefault((r["group"], curve_id(r), r["setting"]), []).append(r)
    out = []
    for (g, cid, setting), rs in acc.items():
        r0 = rs[0]
        d = {"group": g, "curve": cid, "codec": r0["codec"], "model": r0["model"],
             "version": r0["version"], "setting": setting, "mode": r0["mode"],
             "param": r0["param"], "n_volumes": len(rs)}
        for k in ("bpp", "psnr", "ssim", "maxerr", "enc_MBps", "dec_MBps"):
            d[k] = float(np.mean([_f(r[k]) for r in rs]))
        ms = [_f(r["ms_ssim"]) for r in rs]
        d["ms_ssim"] = float(np.mean(ms)) if all(np.isfinite(ms)) else None
        out.append(d)
    out.sort(key=lambda d: (GROUPS.index(d["group"]), d["curve"] != J2K, d["curve"], d["bpp"]))
    return out


def lossy(curve):
    return [c for c in curve if c["mode"] == "lossy"]


def compare(bmz_curve, j2k_curve, ref_j2k=None) -> dict:
    """bmz vs J2K for one group: per-point J2K at the same bpp, BD-rates, the 0.25–1 bpp gap.

    ``ref_j2k``: optional (bpp list, PSNR list) of the reference csv's J2K curve, compared too."""
    b, j = lossy(bmz_curve), lossy(j2k_curve)
    jr, jp, js = ([c[k] for c in j] for k in ("bpp", "psnr", "ssim"))
    br, bp, bs = ([c[k] for c in b] for k in ("bpp", "psnr", "ssim"))
    pts = []
    for c in sorted(b, key=lambda c: c["bpp"]):
        jpsnr = float(metrics.interp_log_rate(jr, jp, c["bpp"])[0])
        jssim = float(metrics.interp_log_rate(jr, js, c["bpp"])[0])
        pts.append({**c, "j2k_psnr": jpsnr, "j2k_ssim": jssim, "d_db": c["psnr"] - jpsnr,
                    "d_ssim": c["ssim"] - jssim})
    at = {}
    for rate in RATES:
        bv = float(metrics.interp_log_rate(br, bp, rate)[0])
        jv = float(metrics.interp_log_rate(jr, jp, rate)[0])
        at[rate] = (bv, jv, bv - jv)
    grid = np.geomspace(TARGET[0], TARGET[1], 41)
    gap = metrics.interp_log_rate(br, bp, grid) - metrics.interp_log_rate(jr, jp, grid)
    covered = bool(np.all(np.isfinite(gap)))
    fin = gap[np.isfinite(gap)]
    res = {
        "points": pts, "at": at,
        "bd_rate_psnr": metrics.bd_rate(jr, jp, br, bp),
        "bd_rate_ssim": metrics.bd_rate(jr, js, br, bs),
        "bd_psnr": metrics.bd_psnr(jr, jp, br, bp),
        "bd_psnr_target": metrics.bd_psnr(jr, jp, br, bp, rate_range=TARGET),
        "gap_min": float(fin.min()) if fin.size else None,
        "gap_max": float(fin.max()) if fin.size else None,
        "gap_covered": covered,
    }
    res["target_met"] = bool(covered and fin.size and fin.min() >= 0)
    if ref_j2k is not None:
        rr, rp = ref_j2k
        gap_r = metrics.interp_log_rate(br, bp, grid) - metrics.interp_log_rate(rr, rp, grid)
        fin_r = gap_r[np.isfinite(gap_r)]
        res["ref"] = {
            "at": {rate: float(metrics.interp_log_rate(br, bp, rate)[0]
                               - metrics.interp_log_rate(rr, rp, rate)[0]) for rate in RATES},
            "gap_min": float(fin_r.min()) if fin_r.size else None,
            "bd_rate_psnr": metrics.bd_rate(rr, rp, br, bp),
            "target_met": bool(np.all(np.isfinite(gap_r)) and fin_r.min() >= 0),
        }
    return res


def reference_check(j2k_curve, ref_rows) -> dict:
    """Our val-8bit J2K group means vs classical_val.csv, per setting and at the table rates."""
    ref = {r["setting"]: r for r in ref_rows if r["codec"] == J2K}
    per = []
    for c in j2k_curve:
        r = ref.get(c["setting"])
        if r is None:
            continue
        rb, rp = float(r["bpp"]), float(r["psnr"])
        d_bpp = c["bpp"] / rb - 1.0
        d_db = (c["psnr"] - rp) if math.isfinite(rp) else 0.0
        ok = abs(d_bpp) <= CHECK_BPP and abs(d_db) <= CHECK_DB
        per.append({"setting": c["setting"], "n_volumes": c["n_volumes"], "n_ref": int(r["n_volumes"]),
                    "bpp": c["bpp"], "ref_bpp": rb, "d_bpp": d_bpp, "psnr": c["psnr"],
                    "ref_psnr": rp, "d_db": d_db, "ssim": c["ssim"], "ref_ssim": float(r["ssim"]),
                    "ok": ok})
    rl = [r for r in ref.values() if r["mode"] == "lossy"]
    rr, rp_ = [float(r["bpp"]) for r in rl], [float(r["psnr"]) for r in rl]
    jl = lossy(j2k_curve)
    at = {}
    for rate in RATES:
        ours = float(metrics.interp_log_rate([c["bpp"] for c in jl], [c["psnr"] for c in jl], rate)[0])
        theirs = float(metrics.interp_log_rate(rr, rp_, rate)[0])
        at[rate] = (ours, theirs, ours - theirs)
    full = bool(per) and all(p["n_volumes"] == p["n_ref"] for p in per)
    return {"per_setting": per, "at": at, "all_ok": bool(per) and all(p["ok"] for p in per),
            "n_ok": sum(p["ok"] for p in per), "n": len(per), "full": full}


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------


def _n(v, fmt="{:.2f}", none="–"):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    return fmt.format(v)


def write_report(path: Path, info: dict, curves: list[dict], comps: dict, checks: dict,
                 vols: list, errors: list) -> None:
    L = [f"# bmz vs JPEG 2000 on the validation set", ""]
    L += [f"- date: {info['date']}",
          f"- machine: {info['cpu']}, nproc {info['nproc']}, load average at start "
          f"{info['load_at_start']} (host `{info['host']}`)",
          f"- bmz {BMZ_VERSION}; Python {info['python']}, torch {info['torch']}, imagecodecs "
          f"{info['imagecodecs']} ({info['openjpeg']}); threads: {info['threads']}",
          f"- command: `{info['command']}`"]
    if info["models"]:
        for name, sha in info["models"].items():
            L.append(f"- model `{name}`: weights SHA-256 `{sha}`")
    else:
        L.append("- **no shipped model found** (`models/` or `$BMZ_MODEL_PATH`): JPEG 2000 only")
    L.append("")
    L += ["Method: stored integer values; PSNR peak = volume max − min from the volume MSE; SSIM = "
          "skimage per slice then mean (data range = volume range); bpp counts every byte (the "
          "whole `.bmz` file; every J2K codestream incl. its ~130–145 B header); group values "
          "are means over the group's volumes per setting; values at a given bpp interpolate "
          "linearly in log-bpp. JPEG 2000 = OpenJPEG via imagecodecs, one slice at a time, "
          "fixed-quality target `level=psnrNN` (dB re. 2^B − 1), raw J2K codestream, true bit "
          "depth B declared. Speed: MB of 16-bit raw (voxels × 2 / 1e6) per second, wall time, "
          f"{info['threads']} thread(s); other jobs were running (see load) so speeds are indicative.",
          ""]
    for g in GROUPS:
        gvols = [v for v in vols if v[0] == g]
        if not gvols:
            continue
        L += [f"## {g} ({len(gvols)} volume{'s' if len(gvols) > 1 else ''}: "
              f"{', '.join(v[1] for v in gvols)})", ""]
        gc = [c for c in curves if c["group"] == g]
        j2k = [c for c in gc if c["curve"] == J2K]
        for cid in sorted({c["curve"] for c in gc if c["codec"] == "bmz"}):
            comp = comps.get((g, cid))
            if comp is None:
                continue
            L += [f"### {cid} vs JPEG 2000", "",
                  "| quality | bpp | PSNR dB | SSIM | MS-SSIM | max err | J2K PSNR @ bpp | ΔdB | "
                  "J2K SSIM @ bpp | ΔSSIM |", "|---|---|---|---|---|---|---|---|---|---|"]
            for p in comp["points"]:
                L.append(f"| {p['setting']} | {p['bpp']:.4f} | {_n(p['psnr'])} | {_n(p['ssim'], '{:.4f}')} "
                         f"| {_n(p['ms_ssim'], '{:.4f}')} | {_n(p['maxerr'], '{:.1f}')} | "
                         f"{_n(p['j2k_psnr'])} | {_n(p['d_db'], '{:+.2f}')} | "
                         f"{_n(p['j2k_ssim'], '{:.4f}')} | {_n(p['d_ssim'], '{:+.4f}')} |")
            L += ["", "| bpp | " + " | ".join(f"{r:g}" for r in RATES) + " |",
                  "|---|" + "---|" * len(RATES)]
            L.append(f"| {cid} PSNR | " + " | ".join(_n(comp['at'][r][0]) for r in RATES) + " |")
            L.append("| J2K PSNR | " + " | ".join(_n(comp['at'][r][1]) for r in RATES) + " |")
            L.append("| ΔdB | " + " | ".join(_n(comp['at'][r][2], '{:+.2f}') for r in RATES) + " |")
            L += ["",
                  f"- BD-rate vs J2K (PSNR): **{_n(comp['bd_rate_psnr'], '{:+.1f}')} %**; "
                  f"(SSIM): **{_n(comp['bd_rate_ssim'], '{:+.1f}')} %** (negative = fewer bits "
                  f"than J2K for the same quality; over the overlapping quality range, pchip)",
                  f"- BD-PSNR vs J2K: {_n(comp['bd_psnr'], '{:+.2f}')} dB overall, "
                  f"{_n(comp['bd_psnr_target'], '{:+.2f}')} dB between {TARGET[0]:g} and "
                  f"{TARGET[1]:g} bpp",
                  f"- gap {TARGET[0]:g}–{TARGET[1]:g} bpp (bmz − J2K PSNR, log-bpp grid): min "
                  f"{_n(comp['gap_min'], '{:+.2f}')} dB, max {_n(comp['gap_max'], '{:+.2f}')} dB"
                  + ("" if comp["gap_covered"] else " (bmz's curve does not span the whole range)"),
                  ]
            if g == G8:
                L.append(f"- target (bmz ≥ J2K PSNR across {TARGET[0]:g}–{TARGET[1]:g} bpp on "
                         f"val 8-bit): **{'MET' if comp['target_met'] else 'NOT MET'}**")
            if "ref" in comp:
                rf = comp["ref"]
                L.append(f"- against the reference csv's J2K curve instead (stricter if it lies "
                         f"above ours, see the reference check): ΔdB at "
                         + ", ".join(f"{r:g}: {_n(rf['at'][r], '{:+.2f}')}" for r in RATES)
                         + f" bpp; min gap {TARGET[0]:g}–{TARGET[1]:g} bpp "
                         f"{_n(rf['gap_min'], '{:+.2f}')} dB; BD-rate "
                         f"{_n(rf['bd_rate_psnr'], '{:+.1f}')} %; target "
                         f"{'met' if rf['target_met'] else 'not met'}")
            L.append("")
        L += ["### JPEG 2000 (OpenJPEG) group curve", "",
              "| setting | n | bpp | PSNR dB | SSIM | MS-SSIM | max err | enc MB/s | dec MB/s |",
              "|---|---|---|---|---|---|---|---|---|"]
        for c in j2k:
            L.append(f"| {c['setting']} | {c['n_volumes']} | {c['bpp']:.4f} | {_n(c['psnr'])} | "
                     f"{_n(c['ssim'], '{:.4f}')} | {_n(c['ms_ssim'], '{:.4f}')} | {_n(c['maxerr'], '{:.1f}')} | "
                     f"{_n(c['enc_MBps'], '{:.1f}')} | {_n(c['dec_MBps'], '{:.1f}')} |")
        L.append("")
        # speed
        L += ["### Speed (single-thread MB/s of 16-bit raw)", "",
              "| codec | setting | bpp | encode MB/s | decode MB/s |", "|---|---|---|---|---|"]
        for c in gc:
            if c["codec"] == "bmz" or (c["mode"] == "lossless" or 0.1 <= c["bpp"] <= 3.0):
                L.append(f"| {c['curve']} | {c['setting']} | {c['bpp']:.3f} | "
                         f"{_n(c['enc_MBps'], '{:.1f}')} | {_n(c['dec_MBps'], '{:.1f}')} |")
        L.append("")
        if g in checks:
            ck = checks[g]
            L += ["### Reference check: our J2K vs `shared/reference/classical_val.csv` (group `val`)", "",
                  f"Tolerance {CHECK_DB} dB and {CHECK_BPP * 100:.0f} % bpp per setting: "
                  f"**{ck['n_ok']}/{ck['n']} settings within**"
                  + ("" if ck["full"] else
                     f" — PARTIAL: {ck['per_setting'][0]['n_volumes']} of the reference's "
                     f"{ck['per_setting'][0]['n_ref']} volumes, so differences are expected"), "",
                  "| setting | n | bpp | ref bpp | Δbpp % | PSNR | ref PSNR | ΔdB | SSIM | ref SSIM | ok |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
            for p in ck["per_setting"]:
                L.append(f"| {p['setting']} | {p['n_volumes']}/{p['n_ref']} | {p['bpp']:.4f} | "
                         f"{p['ref_bpp']:.4f} | {p['d_bpp'] * 100:+.1f} | {_n(p['psnr'])} | "
                         f"{_n(p['ref_psnr'])} | {_n(p['d_db'], '{:+.2f}')} | {p['ssim']:.4f} | "
                         f"{p['ref_ssim']:.4f} | {'yes' if p['ok'] else 'NO'} |")
            L += ["", "PSNR at the same bpp (log-bpp interpolation of both group curves):", "",
                  "| bpp | " + " | ".join(f"{r:g}" for r in RATES) + " |", "|---|" + "---|" * len(RATES),
                  "| ours | " + " | ".join(_n(ck['at'][r][0]) for r in RATES) + " |",
                  "| reference | " + " | ".join(_n(ck['at'][r][1]) for r in RATES) + " |",
                  "| Δ dB | " + " | ".join(_n(ck['at'][r][2], '{:+.2f}') for r in RATES) + " |", ""]
    if errors:
        L += ["## Errors", ""] + [f"- {e}" for e in errors] + [""]
    L += ["Files: `rd_val_points.csv` (per volume × codec × setting), `rd_val_groups.csv` (group "
          "means), `rd_val.png` (bpp–PSNR).", ""]
    path.write_text("\n".join(L))


def plot(path: Path, curves: list[dict], ref_rows: list[dict], groups) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in groups if any(c["group"] == g for c in curves)]
    if not groups:
        return
    fig, axes = plt.subplots(1, len(groups), figsize=(6.5 * len(groups), 5), squeeze=False)
    for ax, g in zip(axes[0], groups):
        gc = [c for c in curves if c["group"] == g and c["mode"] == "lossy"]
        for cid in sorted({c["curve"] for c in gc}, key=lambda s: (s != J2K, s)):
            cc = sorted((c for c in gc if c["curve"] == cid), key=lambda c: c["bpp"])
            style = dict(marker="s", color="k", lw=1.5) if cid == J2K else dict(marker="o", lw=2)
            lab = "JPEG 2000 (ours)" if cid == J2K else cid
            ax.plot([c["bpp"] for c in cc], [c["psnr"] for c in cc], label=lab, ms=4, **style)
        if g in REF_GROUP:
            for codec, st in ((J2K, dict(marker="x", color="grey", ls="--")),
                              ("AVIF", dict(marker="^", color="tab:red", ls=":"))):
                rr = sorted((r for r in ref_rows if r["codec"] == codec and r["mode"] == "lossy"
                             and r["group"] == REF_GROUP[g]), key=lambda r: float(r["bpp"]))
                if rr:
                    ax.plot([float(r["bpp"]) for r in rr], [float(r["psnr"]) for r in rr],
                            label=f"{codec} (reference csv)", ms=4, lw=1, **st)
        ax.set_xscale("log")
        ax.set_xlim(0.05, 8)
        ys = [c["psnr"] for c in gc if math.isfinite(c["psnr"]) and 0.05 <= c["bpp"] <= 8]
        bys = [c["psnr"] for c in gc if c["codec"] == "bmz" and math.isfinite(c["psnr"])]
        if ys:  # hide J2K's collapsed lowest settings, never a bmz point
            ax.set_ylim(min([max(min(ys), 20.0)] + bys) - 2, max(ys) + 2)
        for x in TARGET:
            ax.axvline(x, color="0.85", lw=0.8, zorder=0)
        ax.set_xlabel("bpp (all bytes)")
        ax.set_ylabel("PSNR (dB, peak = volume range)")
        ax.set_title(g)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------


def update_cards(models: dict[str, str], curves: list[dict], comps: dict, info: dict) -> None:
    """Record each model's measured RD (group means per quality) in its model card."""
    from bmz.codec import zoo

    for name, sha in models.items():
        card_path = zoo.find_weights(name).with_suffix(".json")
        card = json.loads(card_path.read_text())
        if card.get("sha256") != sha:
            continue
        card["rd_val"] = [
            {"group": c["group"], "quality": int(float(c["param"])), "n_volumes": c["n_volumes"],
             "bpp": round(c["bpp"], 4), "psnr": round(c["psnr"], 3), "ssim": round(c["ssim"], 4),
             "ms_ssim": None if c["ms_ssim"] is None else round(c["ms_ssim"], 4)}
            for c in curves if c["curve"] == f"bmz/{name}"]
        card["rd_val_vs_jpeg2000"] = {
            g: {"bd_rate_psnr_pct": c["bd_rate_psnr"], "bd_rate_ssim_pct": c["bd_rate_ssim"]}
            for (g, cid), c in comps.items() if cid == f"bmz/{name}"}
        card["rd_val_measured"] = {"by": "benchmarks/rd_val.py", "date": info["date"],
                                   "bpp": "whole .bmz bytes of the array (container and codec "
                                          "metadata included) x 8 / voxels",
                                   "psnr": "peak = volume max - min, from the volume MSE"}
        zoo.write_card(card_path, card)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the val folder (%(default)s)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (%(default)s)")
    ap.add_argument("--max-volumes", type=int, default=None, help="at most N volumes per group")
    ap.add_argument("--qualities", default=None, help="bmz quality levels, e.g. 1,5 (default: all)")
    ap.add_argument("--threads", type=int, default=1, help="torch / OpenJPEG threads (default 1)")
    ap.add_argument("--models", default=None, help="comma list of shipped models (default: all)")
    ap.add_argument("--groups", default=",".join(GROUPS), help="comma list (%(default)s)")
    ap.add_argument("--j2k-settings", default=None, help="comma list of J2K settings (default: all)")
    ap.add_argument("--no-j2k", action="store_true", help="skip JPEG 2000")
    ap.add_argument("--no-bmz", action="store_true", help="skip bmz models (JPEG 2000 only)")
    ap.add_argument("--fresh", action="store_true", help="ignore rows cached in rd_val_points.csv")
    ap.add_argument("--reference", type=Path, default=REFERENCE_CSV, help="classical_val.csv")
    ap.add_argument("--update-cards", action="store_true",
                    help="write each model's measured group curves into its model card (rd_val)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from tqdm import tqdm

    from bmz import io as bio
    from bmz.codec import zoo

    torch.set_num_threads(max(1, args.threads))
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    for g in groups:
        if g not in GROUPS:
            sys.exit(f"unknown group {g!r}; known: {', '.join(GROUPS)}")
    vols = find_volumes(args.data, groups, args.max_volumes)
    if not vols:
        sys.exit(f"no validation volumes found under {args.data}")
    args.out.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    info.update(date=_dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                threads=args.threads, command=" ".join(["python", *sys.argv]))

    # models and their quality levels
    avail = zoo.available_models()
    names = ([] if args.no_bmz else
             [m.strip() for m in args.models.split(",")] if args.models else sorted(avail))
    models: dict[str, str] = {}
    model_q: dict[str, list[int]] = {}
    for name in names:
        if name not in avail:
            sys.exit(f"model {name!r} not found; available: {', '.join(avail) or 'none'}")
        m, sha = zoo.load_model(name)
        models[name] = sha
        nq = int(m.n_qualities)
        qs = [int(q) for q in args.qualities.split(",")] if args.qualities else list(range(1, nq + 1))
        bad = [q for q in qs if not 1 <= q <= nq]
        if bad:
            sys.exit(f"model {name!r} has quality levels 1..{nq}; got {bad}")
        model_q[name] = qs
    info["models"] = models

    j2k = baselines.get_codec(J2K, threads=args.threads)
    j2k_version = j2k.version()
    j2k_settings = ([] if args.no_j2k else
                    [j2k.setting(s.strip()) for s in args.j2k_settings.split(",")]
                    if args.j2k_settings else list(j2k.settings))

    points_path = args.out / "rd_val_points.csv"
    cache = {} if args.fresh else load_points(points_path)
    # drop cached rows of other model weights (retrained) so the CSV stays truthful
    cache = {k: r for k, r in cache.items()
             if r["codec"] != "bmz" or models.get(r["model"], r["version"]) == r["version"]}

    jobs = []  # (group, vname, path, kind, spec)
    for g, vname, p in vols:
        for name in models:
            for q in model_q[name]:
                jobs.append((g, vname, p, "bmz", (name, q)))
        for s in j2k_settings:
            jobs.append((g, vname, p, J2K, s))

    errors: list[str] = []
    rows_run: list[dict] = []
    loaded: dict[str, np.ndarray] = {}
    bar = tqdm(jobs, desc="rd_val", unit="pt", dynamic_ncols=True,
               mininterval=0.1 if sys.stderr.isatty() else 30.0)
    for g, vname, p, kind, spec in bar:
        if kind == "bmz":
            name, q = spec
            base = {"codec": "bmz", "model": name, "version": models[name], "setting": f"q{q}",
                    "mode": "lossy", "param": q}
        else:
            base = {"codec": J2K, "model": "", "version": j2k_version, "setting": spec.name,
                    "mode": spec.mode, "param": spec.param}
        base.update(group=g, volume=vname)
        bar.set_postfix_str(f"{vname[:18]} {base['codec'] if kind == J2K else base['model']} "
                            f"{base['setting']}", refresh=False)
        hit = cache.get(_key(base))
        if hit is not None:
            rows_run.append(hit)
            continue
        if vname not in loaded:
            loaded.clear()  # one volume in memory at a time
            loaded[vname] = np.ascontiguousarray(bio.read(p).data)
        vol = loaded[vname]
        vmin, vmax = int(vol.min()), int(vol.max())
        row = dict(base, path=str(Path(p).relative_to(args.data)) if args.data in Path(p).parents
                   else str(p), n_slices=vol.shape[0], height=vol.shape[1], width=vol.shape[2],
                   dtype=vol.dtype.str, bits=baselines.bit_depth(vmin, vmax), vmin=vmin, vmax=vmax,
                   n_voxels=int(vol.size), threads=args.threads, error="")
        try:
            m = measure_bmz(vol, *spec) if kind == "bmz" else measure_classical(j2k, vol, spec)
        except Exception as e:  # record and go on: one bad point must not lose the run
            row["error"] = f"{type(e).__name__}: {e}"
            errors.append(f"{vname} {base['codec']} {base['model']} {base['setting']}: {row['error']}")
            tqdm.write(f"ERROR {errors[-1]}")
        else:
            mb = vol.size * 2 / 1e6
            row.update(m, bpp=metrics.bpp(m["n_bytes"], vol.size),
                       enc_MBps=mb / m["enc_s"] if m["enc_s"] > 0 else math.inf,
                       dec_MBps=mb / m["dec_s"] if m["dec_s"] > 0 else math.inf)
            row = {k: _fmt(v) for k, v in row.items()}
            cache[_key(row)] = row
            rows_run.append(row)
        # keep the cache on disk after every point: an interrupted run resumes from here
        write_csv(points_path, sorted(cache.values(), key=lambda r: (r["group"], r["volume"],
                                                                     r["codec"], r["model"])), FIELDS)
    bar.close()

    # ---- aggregate over this run's selection
    by_group = {g: {v for gg, v, _ in vols if gg == g} for g in groups}
    sel = [r for r in rows_run if not r.get("error")]
    curves = group_curves(sel, by_group)
    write_csv(args.out / "rd_val_groups.csv", curves, GFIELDS)

    ref_rows = []
    if args.reference.is_file():
        with open(args.reference, newline="") as f:
            ref_rows = list(csv.DictReader(f))
    comps, checks = {}, {}
    for g in groups:
        gc = [c for c in curves if c["group"] == g]
        jc = [c for c in gc if c["curve"] == J2K]
        ref_j2k = None
        if g in REF_GROUP and ref_rows:
            rl = [r for r in ref_rows if r["group"] == REF_GROUP[g] and r["codec"] == J2K
                  and r["mode"] == "lossy"]
            ref_j2k = ([float(r["bpp"]) for r in rl], [float(r["psnr"]) for r in rl])
        for cid in {c["curve"] for c in gc if c["codec"] == "bmz"}:
            if jc:
                comps[(g, cid)] = compare([c for c in gc if c["curve"] == cid], jc, ref_j2k)
        if g in REF_GROUP and jc and ref_rows:
            checks[g] = reference_check(jc, [r for r in ref_rows if r["group"] == REF_GROUP[g]])

    write_report(args.out / "rd_val.md", info, curves, comps, checks, vols, errors)
    if args.update_cards:
        update_cards(models, curves, comps, info)
    plot(args.out / "rd_val.png", curves, ref_rows, groups)

    # ---- console summary
    for (g, cid), c in sorted(comps.items()):
        print(f"{g} {cid}: BD-rate vs J2K PSNR {_n(c['bd_rate_psnr'], '{:+.1f}')} %, SSIM "
              f"{_n(c['bd_rate_ssim'], '{:+.1f}')} %; ΔdB @0.25/0.5/1 bpp "
              + "/".join(_n(c['at'][r][2], '{:+.2f}') for r in (0.25, 0.5, 1.0))
              + (f"; target {'MET' if c['target_met'] else 'NOT MET'}" if g == G8 else ""))
    for g, ck in checks.items():
        worst = max(ck["per_setting"], key=lambda p: abs(p["d_db"]) / CHECK_DB + abs(p["d_bpp"]) / CHECK_BPP)
        print(f"reference check {g} (J2K vs classical_val.csv{'' if ck['full'] else ', PARTIAL volumes'}): "
              f"{ck['n_ok']}/{ck['n']} settings within {CHECK_DB} dB / {CHECK_BPP * 100:.0f} % bpp; "
              f"worst {worst['setting']}: {worst['d_db']:+.2f} dB, {worst['d_bpp'] * 100:+.1f} % bpp; "
              "PSNR @0.25/0.5/1/2 bpp Δ " + "/".join(_n(ck['at'][r][2], '{:+.2f}') for r in RATES) + " dB")
    if errors:
        print(f"{len(errors)} point(s) failed; see rd_val.md", file=sys.stderr)
    print(f"wrote {args.out}/rd_val.md, rd_val_points.csv, rd_val_groups.csv, rd_val.png")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
