"""``bmz rd-curve``'s ``report.md`` and ``bd_rate.md``."""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .. import metrics
from .._deps import optional
from .._version import __version__
from .common import BMZ, CHECK_BPP, CHECK_DB, GUIDANCE, J2K, RATES, _curve_of, _num
from .curves import at_rates, curves_by, lossy

if TYPE_CHECKING:
    from .measure import CodecSpec


@dataclass
class Result:
    """What :func:`bmz.rdcurve.run` measured and wrote."""

    outdir: Path
    rows: list[dict]
    curves: list[dict]
    bd: list[dict]
    groups: list[str]
    specs: list[CodecSpec]
    info: dict
    checks: dict = field(default_factory=dict)
    reference_groups: dict = field(default_factory=dict)
    plots: dict = field(default_factory=dict)
    errormaps: dict = field(default_factory=dict)
    n_reused: int = 0
    n_measured: int = 0

    @property
    def errors(self) -> list[dict]:
        return [r for r in self.rows if r.get("error")]


def _n(v, fmt="{:.2f}", none="–"):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    return fmt.format(v)


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
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count()
    imagecodecs = optional("imagecodecs", "bench", "bmz rd-curve")
    return {"bmz": __version__, "cpu": cpu, "nproc": nproc, "load_at_start": load,
            "python": platform.python_version(), "imagecodecs": imagecodecs.__version__,
            "host": platform.node(),
            "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}


def guidance_table(rows: list[dict], group: str, curve_ids: Sequence[str]) -> list[dict]:
    """Per curve: mean over the group's volumes of the PSNR/SSIM at the bpp that gives each
    :data:`GUIDANCE` ratio for that volume (stored bits per voxel / ratio), log-rate
    interpolation of the volume's own points; NaN where a volume's curve does not reach it."""
    ok = [r for r in rows if r.get("group") == group and not r.get("error")
          and r.get("mode") == "lossy" and _num(r.get("bpp")) and math.isfinite(r["psnr"])]
    out = []
    for cid in curve_ids:
        vals = {lab: ([], []) for lab, _ in GUIDANCE}
        vols = sorted({r["volume"] for r in ok if _curve_of(r) == cid})
        for v in vols:
            vr = [r for r in ok if _curve_of(r) == cid and r["volume"] == v]
            alloc = 8.0 * np.dtype(vr[0]["dtype"]).itemsize
            for lab, ratio in GUIDANCE:
                rate = alloc / ratio
                vals[lab][0].append(float(metrics.interp_log_rate(
                    [r["bpp"] for r in vr], [r["psnr"] for r in vr], rate)[0]))
                vals[lab][1].append(float(metrics.interp_log_rate(
                    [r["bpp"] for r in vr], [r["ssim"] for r in vr], rate)[0]))
        if vols:
            out.append({"curve": cid, **{lab: (float(np.mean(p)), float(np.mean(s)))
                                         for lab, (p, s) in vals.items()}})
    return out


def write_report(path: Path, res: Result) -> None:
    info = res.info
    L = ["# Rate–distortion report (`bmz rd-curve`)", ""]
    L += [f"- date: {info['date']}; bmz {info['bmz']}; Python {info['python']}; imagecodecs "
          f"{info['imagecodecs']}",
          f"- machine: {info['cpu']}, nproc {info['nproc']}, load at start "
          f"{info['load_at_start']} (host `{info['host']}`); {info['jobs']} job(s), one thread each",
          f"- command: `{info['command']}`",
          f"- max slices per volume: {info['max_slices'] or 'all'} (the middle ones)"]
    for s in res.specs:
        if s.error:
            L.append(f"- {s.curve}: **{s.error}**")
        else:
            L.append(f"- {s.curve}: {'model weights SHA-256 ' if s.kind == BMZ else ''}`{s.version}`")
    L += ["", "Method: stored integer values; bit depth B = ceil(log2(max − min + 1)) per volume; "
          "classical codecs code each slice as `stored − min` at B bits (see `bmz.baselines`); "
          "**bpp counts every byte stored** (the whole `.bmz` file; every codec stream with its "
          "headers), `bpp_nohdr` without them (bmz: slice chunks only; classical: minus a "
          "per-image header estimate); PSNR peak = volume max − min from the volume MSE; SSIM = "
          "skimage per slice, mean; group values are means over the group's volumes per setting; "
          "values at a given bpp interpolate linearly in log-bpp; BD-rates use PCHIP "
          "(`bmz.metrics`). Compression ratio = stored bytes (voxels × dtype size) / bytes.", ""]
    # inputs
    L += ["## Inputs", "", "| group | volume | shape | dtype | B | note |", "|---|---|---|---|---|---|"]
    vols: dict[str, list[dict]] = {}
    for r in res.rows:
        vols.setdefault(r["volume"], []).append(r)
    for v, rs in vols.items():
        r = next((x for x in rs if _num(x.get("n_slices"))), rs[0])
        shape = (f"{int(r['n_slices'])}×{int(r['height'])}×{int(r['width'])}"
                 if _num(r.get("n_slices")) else "–")
        note = rs[0]["error"] if all(x.get("error") and not x.get("setting") for x in rs) else ""
        L.append(f"| {r['group']} | `{v}` | {shape} | {r.get('dtype') or '–'} | "
                 f"{_n(r.get('bits'), '{:.0f}')} | {note} |")
    L.append("")
    for g in res.groups:
        by = curves_by(res.curves, g)
        nv = len({r["volume"] for r in res.rows if r.get("group") == g})
        L += [f"## {g} ({nv} volume{'s' if nv != 1 else ''})", "",
              f"![rate–distortion]({res.plots.get(g, '')})", ""]
        order = sorted(by, key=lambda s: (not s.startswith(BMZ), s != J2K, s))
        L += ["### PSNR (dB) / SSIM at given bpp (group means, log-bpp interpolation)", "",
              "| curve | " + " | ".join(f"{r:g} bpp" for r in RATES) + " | lossless bpp |",
              "|---|" + "---|" * (len(RATES) + 1)]
        for cid in order:
            ps, ss = at_rates(by[cid], "psnr"), at_rates(by[cid], "ssim")
            ll = [c for c in by[cid] if c["mode"] == "lossless" and c.get("complete", True)]
            lb = min((c["bpp"] for c in ll), default=None)
            L.append(f"| {cid} | " + " | ".join(f"{_n(p)} / {_n(s, '{:.3f}')}" for p, s in zip(ps, ss))
                     + f" | {_n(lb, '{:.3f}')} |")
        L.append("")
        bd = [b for b in res.bd if b["group"] == g]
        if bd:
            L += ["### BD-rate (negative = fewer bits for the same quality; details in "
                  "[bd_rate.md](bd_rate.md))", "",
                  "| curve | anchor | BD-rate PSNR % | BD-rate SSIM % | BD-PSNR dB |",
                  "|---|---|---|---|---|"]
            for b in bd:
                L.append(f"| {b['curve']} | {b['anchor']} | {_n(b['bd_rate_psnr'], '{:+.1f}')} | "
                         f"{_n(b['bd_rate_ssim'], '{:+.1f}')} | {_n(b['bd_psnr'], '{:+.2f}')} |")
            L.append("")
        gt = guidance_table(res.rows, g, order)
        if gt:
            L += ["### Compression ratio vs published guidance for irreversible MR compression", "",
                  "Guidance (REFERENCE.md §4): about **1:7** (German consensus) up to **24:1** (CAR "
                  "upper bound) depending on body region. PSNR / SSIM each curve achieves at those "
                  "ratios (ratio against the stored bits per voxel of each volume):", "",
                  "| curve | " + " | ".join(lab for lab, _ in GUIDANCE) + " |",
                  "|---|" + "---|" * len(GUIDANCE)]
            for t in gt:
                L.append(f"| {t['curve']} | " + " | ".join(
                    f"{_n(t[lab][0])} dB / {_n(t[lab][1], '{:.3f}')}" for lab, _ in GUIDANCE) + " |")
            L += ["", "Achieved ratios per setting (group mean):", "",
                  "| curve | setting | bpp | ratio | PSNR | SSIM | max err |", "|---|---|---|---|---|---|---|"]
            for cid in order:
                for c in sorted(lossy(by[cid]), key=lambda c: c["bpp"]):
                    if cid.startswith(BMZ) or 0.2 <= c["bpp"] <= 3.0:
                        L.append(f"| {cid} | {c['setting']} | {c['bpp']:.3f} | {c['ratio']:.1f}:1 | "
                                 f"{_n(c['psnr'])} | {_n(c['ssim'], '{:.4f}')} | {_n(c['maxerr'], '{:.1f}')} |")
            L.append("")
        em = res.errormaps.get(g)
        if em:
            L += [f"### Error maps near {em['info']['target_bpp']:.2f} bpp", "",
                  f"![error maps]({em['file']})", "",
                  f"`{em['info']['volume']}`, slice {em['info']['slice']}: "
                  + "; ".join(f"{p['curve']} {p['setting']} ({p['bpp']:.2f} bpp, slice "
                              f"{p['slice_psnr']:.1f} dB)" for p in em["info"]["panels"]), ""]
        L += ["### Speed (single thread, MB/s of 16-bit raw; group means)", "",
              "| curve | setting | bpp | encode MB/s | decode MB/s |", "|---|---|---|---|---|"]
        for cid in order:
            lc = lossy(by[cid])
            pick = [min(lc, key=lambda c: abs(math.log(c["bpp"]))) ] if lc else []
            pick += [c for c in by[cid] if c["mode"] == "lossless"]
            for c in pick:
                L.append(f"| {cid} | {c['setting']} | {c['bpp']:.3f} | {_n(c['enc_MBps'], '{:.1f}')} | "
                         f"{_n(c['dec_MBps'], '{:.1f}')} |")
        L.append("")
        ck = res.checks.get(g)
        if ck:
            L += report_reference_check(ck, res.reference_groups.get(g, ""))
    errs = [r for r in res.rows if r.get("error")]
    if errs:
        L += [f"## Errors ({len(errs)} rows)", ""]
        for r in errs:
            L.append(f"- `{r['volume']}` {_curve_of(r) or '–'} {r.get('setting') or ''}: {r['error']}")
        L.append("")
    L += ["Files: `points.csv` / `points.json` (one row per volume × codec × setting, error rows "
          "included), `curves.csv` (group means), `bd_rate.csv` / `bd_rate.md`, `rd_*.png`, "
          "`errormap_*.png`.", ""]
    path.write_text("\n".join(L))


def report_reference_check(ck: dict, ref_group: str) -> list[str]:
    L = [f"### Reference check: group means vs `classical_val.csv` (group `{ref_group}`)", "",
         f"Tolerance {CHECK_DB} dB and {CHECK_BPP * 100:.0f} % bpp per setting: "
         f"**{ck['n_ok']}/{ck['n']} settings within**"
         + ("" if ck["full"] else " — PARTIAL: fewer volumes than the reference"), "",
         "| codec | setting | n | bpp | ref bpp | Δbpp % | bpp_nohdr | ref | PSNR | ref PSNR | ΔdB | SSIM | ref SSIM | ok |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in ck["per_setting"]:
        L.append(f"| {p['codec']} | {p['setting']} | {p['n_volumes']}/{p['n_ref']} | {p['bpp']:.4f} | "
                 f"{p['ref_bpp']:.4f} | {p['d_bpp'] * 100:+.1f} | {_n(p['bpp_nohdr'], '{:.4f}')} | "
                 f"{_n(p['ref_bpp_nohdr'], '{:.4f}')} | {_n(p['psnr'])} | {_n(p['ref_psnr'])} | "
                 f"{_n(p['d_db'], '{:+.2f}')} | {p['ssim']:.4f} | {p['ref_ssim']:.4f} | "
                 f"{'yes' if p['ok'] else 'NO'} |")
    L += ["", "PSNR at the same bpp, ours − reference (dB):", "",
          "| codec | " + " | ".join(f"{r:g} bpp" for r in RATES) + " |", "|---|" + "---|" * len(RATES)]
    for codec, vals in ck["at"].items():
        L.append(f"| {codec} | " + " | ".join(_n(v[2], '{:+.2f}') for v in vals) + " |")
    L.append("")
    return L


def write_bd_md(path: Path, bd: list[dict]) -> None:
    L = ["# BD-rates", "",
         "Bjøntegaard delta rate of each curve against the anchor (PCHIP over the overlapping "
         "quality range, `bmz.metrics.bd_rate`): negative = the curve needs fewer bits than the "
         "anchor for the same PSNR / SSIM. `0.25–2 bpp`: PSNR BD-rate over the anchor's quality "
         "between 0.25 and 2 bpp. Lossless points are not part of the curves.", ""]
    for g in sorted({b["group"] for b in bd}):
        L += [f"## {g}", "", "| curve | anchor | BD-rate PSNR % | BD-rate PSNR 0.25–2 bpp % | "
              "BD-rate SSIM % | BD-PSNR dB |", "|---|---|---|---|---|---|"]
        for b in (b for b in bd if b["group"] == g):
            L.append(f"| {b['curve']} | {b['anchor']} | {_n(b['bd_rate_psnr'], '{:+.1f}')} | "
                     f"{_n(b['bd_rate_psnr_025_2'], '{:+.1f}')} | {_n(b['bd_rate_ssim'], '{:+.1f}')} | "
                     f"{_n(b['bd_psnr'], '{:+.2f}')} |")
        L.append("")
    path.write_text("\n".join(L))
