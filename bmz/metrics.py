"""Image-quality and rate metrics for integer MRI volumes, and Bjøntegaard deltas.

Conventions (the same as ``docs``/REFERENCE's classical-codec method, so numbers are comparable):

* Arrays are the STORED integer values, shape ``(n_slices, H, W)`` (a 2-D array is one slice).
* ``peak`` / ``data_range`` is the reference VOLUME's ``max - min`` (not the dtype's range),
  see :func:`volume_range`.
* PSNR is computed from the MSE of the whole volume (not a mean of per-slice PSNRs).
* SSIM is scikit-image's ``structural_similarity`` (default 7×7 uniform window) per slice,
  then the mean over slices.
* bpp = bits of everything stored (headers included) / voxels.

Rate–distortion comparisons (:func:`bd_rate`, :func:`bd_psnr`) follow Bjøntegaard (VCEG-M33)
with piecewise cubic Hermite (PCHIP) interpolation instead of the original cubic polynomial fit,
as in the JVET/AOM common test conditions (CTC "BD-rate with pchip").
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ._deps import optional

__all__ = [
    "volume_range", "mse", "psnr", "ssim", "ms_ssim", "max_abs_error", "bpp",
    "bd_rate", "bd_psnr", "interp_log_rate", "MS_SSIM_MIN_SIDE",
]

#: pytorch_msssim's 5-scale MS-SSIM with an 11-pixel Gaussian window needs the smaller image side
#: to be larger than (11 - 1) * 2**4 = 160 pixels, i.e. at least 161.
MS_SSIM_WIN = 11
MS_SSIM_MIN_SIDE = (MS_SSIM_WIN - 1) * 2 ** 4 + 1


def _as3d(a) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"expected a 2-D slice or a 3-D (n, H, W) volume, got shape {a.shape}")
    return a


def _pair(ref, test) -> tuple[np.ndarray, np.ndarray]:
    r, t = _as3d(ref), _as3d(test)
    if r.shape != t.shape:
        raise ValueError(f"shape mismatch: reference {r.shape}, test {t.shape}")
    return r, t


def volume_range(ref) -> int:
    """``max - min`` of the reference volume's stored values (the PSNR peak / SSIM data range)."""
    r = np.asarray(ref)
    return int(r.max()) - int(r.min())


def mse(ref, test) -> float:
    """Mean squared error over the whole volume (exact, in float64)."""
    r, t = _pair(ref, test)
    d = r.astype(np.float64) - t.astype(np.float64)
    return float(np.mean(d * d))


def psnr(ref, test, peak: float | None = None) -> float:
    """PSNR in dB = 10·log10(peak² / MSE) with the MSE of the whole volume; ``inf`` when identical.

    ``peak`` defaults to the reference volume's ``max - min``."""
    if peak is None:
        peak = volume_range(ref)
    return psnr_from_mse(mse(ref, test), peak)


def psnr_from_mse(m: float, peak: float) -> float:
    """10·log10(peak² / m): ``inf`` when ``m`` is 0, ``-inf`` when the peak is not positive."""
    if m == 0.0:
        return math.inf
    if peak <= 0:
        return -math.inf
    return 10.0 * math.log10(float(peak) ** 2 / m)


def ssim(ref, test, data_range: float | None = None) -> float:
    """Mean over slices of ``skimage.metrics.structural_similarity(ref_k, test_k, data_range)``.

    ``data_range`` defaults to the reference volume's ``max - min`` (at least 1)."""
    structural_similarity = optional("skimage.metrics", "bench", "SSIM").structural_similarity
    r, t = _pair(ref, test)
    if data_range is None:
        data_range = volume_range(r)
    data_range = max(float(data_range), 1.0)
    vals = [structural_similarity(r[k].astype(np.float64), t[k].astype(np.float64),
                                  data_range=data_range)
            for k in range(r.shape[0])]
    return float(np.mean(vals))


def ms_ssim(ref, test, data_range: float | None = None) -> float | None:
    """Mean over slices of 5-scale MS-SSIM (pytorch_msssim, 11-pixel Gaussian window).

    Returns ``None`` when the slices are too small: both sides must be at least
    :data:`MS_SSIM_MIN_SIDE` (161) pixels."""
    r, t = _pair(ref, test)
    if min(r.shape[1:]) < MS_SSIM_MIN_SIDE:
        return None
    import torch

    _ms_ssim = optional("pytorch_msssim", "bench", "MS-SSIM").ms_ssim

    if data_range is None:
        data_range = volume_range(r)
    data_range = max(float(data_range), 1.0)
    lo = float(r.min())  # shift so values are >= 0 (MS-SSIM's contrast terms assume it)
    vals = []
    with torch.no_grad():
        for k0 in range(0, r.shape[0], 16):
            x = torch.from_numpy(r[k0:k0 + 16].astype(np.float32) - lo)[:, None]
            y = torch.from_numpy(t[k0:k0 + 16].astype(np.float32) - lo)[:, None]
            vals.append(_ms_ssim(x, y, data_range=data_range, size_average=False,
                                 win_size=MS_SSIM_WIN).double().numpy())
    return float(np.mean(np.concatenate(vals)))


def max_abs_error(ref, test) -> int:
    """Largest absolute difference of stored values."""
    r, t = _pair(ref, test)
    if r.size == 0:
        return 0
    return int(np.max(np.abs(r.astype(np.int64) - t.astype(np.int64))))


def bpp(n_bytes: int, n_voxels: int) -> float:
    """Bits per voxel (pixel): ``8 · n_bytes / n_voxels``."""
    return 8.0 * float(n_bytes) / max(1, int(n_voxels))


# ----------------------------------------------------------------------------------------------
# Bjøntegaard deltas
# ----------------------------------------------------------------------------------------------


def _clean_curve(rate: Sequence[float], dist: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Finite points with rate > 0, sorted by rate, keeping only those whose distortion strictly
    increases with rate (dominated/duplicate points — e.g. saturated settings — are dropped, so
    both log-rate(dist) and dist(log-rate) are monotone and PCHIP is well defined)."""
    r = np.asarray(rate, dtype=np.float64)
    d = np.asarray(dist, dtype=np.float64)
    ok = np.isfinite(r) & np.isfinite(d) & (r > 0)
    r, d = r[ok], d[ok]
    order = np.lexsort((-d, r))  # by rate, then best distortion first
    r, d = r[order], d[order]
    keep_r, keep_d = [], []
    for ri, di in zip(r, d):
        if keep_r and (ri <= keep_r[-1] or di <= keep_d[-1]):
            continue
        keep_r.append(ri)
        keep_d.append(di)
    return np.array(keep_r), np.array(keep_d)


def _pchip_integral(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    f = optional("scipy.interpolate", "bench", "BD-rate").PchipInterpolator(x, y, extrapolate=False)
    return float(f.integrate(lo, hi))


def bd_rate(r1, d1, r2, d2, dist_range: tuple[float, float] | None = None) -> float | None:
    """Bjøntegaard delta rate of curve 2 (test) against curve 1 (anchor), in percent.

    ``r`` are rates (bpp, > 0), ``d`` distortion-quality values (PSNR dB, SSIM…: higher is
    better). Method: log10(rate) as a PCHIP function of quality for each curve, both integrated
    over the overlapping quality interval (optionally narrowed to ``dist_range``); the mean
    log-rate difference ``Δ`` gives ``(10**Δ - 1)·100``. Negative = the test needs fewer bits for
    the same quality. Non-finite points (lossless PSNR = inf) and dominated points are ignored.

    Returns ``None`` when either curve has fewer than 2 usable points or the quality ranges do
    not overlap."""
    ra, da = _clean_curve(r1, d1)
    rb, db = _clean_curve(r2, d2)
    if len(ra) < 2 or len(rb) < 2:
        return None
    lo, hi = max(da.min(), db.min()), min(da.max(), db.max())
    if dist_range is not None:
        lo, hi = max(lo, dist_range[0]), min(hi, dist_range[1])
    if not hi > lo:
        return None
    ia = _pchip_integral(da, np.log10(ra), lo, hi)
    ib = _pchip_integral(db, np.log10(rb), lo, hi)
    avg = (ib - ia) / (hi - lo)
    return float((10.0 ** avg - 1.0) * 100.0)


def bd_psnr(r1, d1, r2, d2, rate_range: tuple[float, float] | None = None) -> float | None:
    """Bjøntegaard delta quality of curve 2 (test) against curve 1 (anchor): the mean difference
    of quality (dB for PSNR) over the overlapping log10-rate interval (optionally narrowed to
    ``rate_range`` in bpp), each curve a PCHIP function of log-rate. Positive = test better.
    ``None`` when the curves do not overlap or have fewer than 2 usable points."""
    ra, da = _clean_curve(r1, d1)
    rb, db = _clean_curve(r2, d2)
    if len(ra) < 2 or len(rb) < 2:
        return None
    la, lb = np.log10(ra), np.log10(rb)
    lo, hi = max(la.min(), lb.min()), min(la.max(), lb.max())
    if rate_range is not None:
        lo, hi = max(lo, math.log10(rate_range[0])), min(hi, math.log10(rate_range[1]))
    if not hi > lo:
        return None
    ia = _pchip_integral(la, da, lo, hi)
    ib = _pchip_integral(lb, db, lo, hi)
    return float((ib - ia) / (hi - lo))


def interp_log_rate(rate, dist, at) -> np.ndarray:
    """Quality of the curve (``rate``, ``dist``) at rates ``at``, interpolated linearly in
    log10(rate) between neighbouring points (dominated/non-finite points dropped); NaN outside the
    curve's rate span."""
    r, d = _clean_curve(rate, dist)
    at_arr = np.atleast_1d(np.asarray(at, dtype=np.float64))
    out = np.full(at_arr.shape, np.nan)
    if len(r) == 0:
        return out
    lr = np.log10(r)
    with np.errstate(divide="ignore", invalid="ignore"):
        la = np.log10(at_arr)
    inside = np.isfinite(la) & (la >= lr[0]) & (la <= lr[-1])
    out[inside] = np.interp(la[inside], lr, d)
    return out


def envelope_points(curves: dict) -> list[tuple]:
    """The best operating points of several RD curves of one image set: ``curves`` maps a name to
    (rates, qualities); returns (name, index) of each point kept, by rate. A point is kept when no
    point of any curve has at most its rate and at least its quality (a tie keeps one), and no
    *other* curve, interpolated linearly in log-rate between its own points, needs fewer bits
    for its quality: so the kept points, interpolated as any curve is, never fall below a curve
    they came from (a point picked only because it sits just left of another curve's point, and
    below that curve, is not kept)."""
    pts = []
    lines = {}
    for name, (rate, dist) in curves.items():
        r, d = np.asarray(rate, dtype=np.float64), np.asarray(dist, dtype=np.float64)
        lines[name] = _clean_curve(r, d)
        pts += [(float(r[i]), float(d[i]), name, i) for i in range(len(r))
                if np.isfinite(r[i]) and np.isfinite(d[i]) and r[i] > 0]
    pts.sort(key=lambda p: (p[0], -p[1]))
    out, best = [], -math.inf
    for r, d, name, i in pts:
        if d <= best:
            continue  # another point has fewer (or as many) bits and at least this quality
        beaten = False
        for other, (lr, ld) in lines.items():
            if other == name or len(lr) < 2 or not ld[0] <= d <= ld[-1]:
                continue
            if 10.0 ** float(np.interp(d, ld, np.log10(lr))) < r * (1 - 1e-12):
                beaten = True
                break
        if not beaten:
            best = d
            out.append((name, i))
    return out
