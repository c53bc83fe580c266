"""``bmz rd-curve``'s figures: rate–distortion plots and error maps per group (``bmz[plots]``)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from .. import baselines, metrics
from .._deps import pyplot
from .common import BMZ, J2K, _curve_of, _num
from .curves import curves_by, lossy
from .inputs import InputItem, load_volume
from .measure import CodecSpec, code_bmz


def _slug(g: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", g.replace(">", "gt")).strip("_")


_STYLE = {J2K: dict(color="k", marker="s"), "JPEG": dict(color="tab:brown", marker="v"),
          "HTJ2K": dict(color="tab:gray", marker="D"), "JPEG-LS": dict(color="tab:olive", marker="<"),
          "JPEG-XL": dict(color="tab:purple", marker="^"), "AVIF": dict(color="tab:red", marker="P")}


def plot_group(path: Path, group: str, curves: list[dict], ref_rows: list[dict] | None = None,
               ref_group: str | None = None) -> None:
    plt = pyplot("bmz rd-curve's plots")

    by = curves_by(curves, group)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, key, lab in ((axes[0], "psnr", "PSNR (dB, peak = volume range)"),
                         (axes[1], "ssim", "SSIM (mean over slices)")):
        for cid in sorted(by, key=lambda s: (not s.startswith(BMZ), s != J2K, s)):
            cc = sorted(lossy(by[cid]), key=lambda c: c["bpp"])
            if not cc:
                continue
            st = dict(_STYLE.get(cid, dict(marker="o")))
            lw = 2.2 if cid.startswith(BMZ) else 1.2
            ax.plot([c["bpp"] for c in cc], [c[key] for c in cc], label=cid, ms=4, lw=lw, **st)
        if ref_rows and ref_group:
            for codec in (J2K, "AVIF"):
                rr = sorted((r for r in ref_rows if r["group"] == ref_group
                             and r["codec"] == codec and r["mode"] == "lossy"),
                            key=lambda r: float(r["bpp"]))
                if rr:
                    ax.plot([float(r["bpp"]) for r in rr], [float(r[key]) for r in rr], ls=":",
                            lw=1, color=_STYLE[codec]["color"], alpha=0.6,
                            label=f"{codec} (reference csv)")
        ax.set_xscale("log")
        ax.set_xlabel("bpp (all bytes stored, log scale)")
        ax.set_ylabel(lab)
        ax.grid(True, which="both", alpha=0.3)
        ys = [c[key] for cid in by for c in lossy(by[cid]) if 0.05 <= c["bpp"] <= 10]
        if ys and key == "psnr":
            ax.set_ylim(max(min(ys), 15.0) - 1, max(ys) + 1)
        if ys and key == "ssim":
            ax.set_ylim(max(min(ys), 0.4) - 0.01, 1.0)
        ax.set_xlim(0.03, 12)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{group}: rate–distortion (group means per setting)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def errormap_choice(rows: list[dict], curves: list[dict], group: str) -> tuple[str, float, dict]:
    """For ``group``: the representative volume (the first, by name, with valid lossy points for
    the most curves), the target bpp (1 bpp if every curve's lossy points on it span 1 bpp, else
    the median of their bpp) and per curve the setting nearest to it in log-rate."""
    ok = [r for r in rows if r.get("group") == group and not r.get("error")
          and r.get("mode") == "lossy" and _num(r.get("bpp")) and math.isfinite(r["psnr"])]
    if not ok:
        return "", math.nan, {}
    per_vol: dict[str, set] = {}
    for r in ok:
        per_vol.setdefault(r["volume"], set()).add(_curve_of(r))
    vol = sorted(per_vol, key=lambda v: (-len(per_vol[v]), v))[0]
    vr = [r for r in ok if r["volume"] == vol]
    by: dict[str, list] = {}
    for r in vr:
        by.setdefault(_curve_of(r), []).append(r)
    spans = all(min(r["bpp"] for r in rs) <= 1.0 <= max(r["bpp"] for r in rs) for rs in by.values())
    target = 1.0 if spans else float(np.median([r["bpp"] for r in vr]))
    pick = {cid: min(rs, key=lambda r: abs(math.log(r["bpp"] / target))) for cid, rs in by.items()}
    return vol, target, pick


def errormaps(path: Path, group: str, rows: list[dict], curves: list[dict],
              items: dict[str, InputItem], specs: dict[str, CodecSpec],
              max_slices: int | None) -> dict | None:
    """One slice (the middle one) of the group's representative volume through each curve's
    setting nearest the target bpp: reconstructions and signed error maps in one PNG."""
    vol_name, target, pick = errormap_choice(rows, curves, group)
    if not pick or vol_name not in items:
        return None
    plt = pyplot("bmz rd-curve's plots")

    vol = load_volume(items[vol_name], max_slices)
    vmin, vmax = int(vol.min()), int(vol.max())
    bits = baselines.bit_depth(vmin, vmax)
    k = vol.shape[0] // 2
    ref = vol[k].astype(np.int64)
    recs = []
    order = sorted(pick, key=lambda s: (not s.startswith(BMZ), s != J2K, s))
    for cid in order:
        r = pick[cid]
        spec = specs.get(cid)
        if spec is None:
            continue
        try:
            if spec.kind == BMZ:
                _, rec = code_bmz(vol, spec.name, int(float(r["param"])))
                rec = rec[k]
            else:
                codec = baselines.get_codec(spec.name)
                s = codec.setting(r["setting"], bits)
                rec = baselines.code_volume(codec, vol[k:k + 1], s, vmin=vmin, bits=bits).recon[0]
        except Exception:  # noqa: BLE001 - a missing panel is not worth losing the report
            continue
        recs.append((cid, r, rec.astype(np.int64)))
    if not recs:
        return None
    errs = [np.abs(rec - ref) for _, _, rec in recs]
    lim = max(1.0, float(np.percentile(np.concatenate([e.ravel() for e in errs]), 99.5)))
    n = len(recs) + 1
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 5.6), squeeze=False)
    axes[0, 0].imshow(ref, cmap="gray", vmin=vmin, vmax=vmax)
    axes[0, 0].set_title("original", fontsize=8)
    axes[1, 0].axis("off")
    axes[1, 0].text(0.0, 0.5, f"{vol_name}\nslice {k}\nerror = decoded − original\n"
                    f"colour limit ±{lim:.0f}", fontsize=7, va="center")
    info = {"volume": vol_name, "slice": k, "target_bpp": target, "panels": []}
    for j, (cid, r, rec) in enumerate(recs, start=1):
        sp = metrics.psnr(ref[None], rec[None], metrics.volume_range(vol))
        axes[0, j].imshow(rec, cmap="gray", vmin=vmin, vmax=vmax)
        axes[0, j].set_title(f"{cid} {r['setting']}\n{r['bpp']:.2f} bpp (volume), "
                             f"slice {sp:.1f} dB", fontsize=7)
        axes[1, j].imshow(rec - ref, cmap="seismic", vmin=-lim, vmax=lim)
        axes[1, j].set_xlabel(f"max |err| {int(np.abs(rec - ref).max())}", fontsize=7)
        info["panels"].append({"curve": cid, "setting": r["setting"], "bpp": r["bpp"],
                               "slice_psnr": sp})
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{group}: one slice per codec near {target:.2f} bpp", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return info
