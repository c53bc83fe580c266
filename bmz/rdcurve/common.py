"""What every part of ``bmz rd-curve`` shares: codec names, rates, the CSV columns, small
helpers on rows."""

from __future__ import annotations

import math

J2K = "JPEG2000"
BMZ = "bmz"
#: bmz's bounded-error mode as one more bmz curve (``--max-error δ`` at δ = 0, 1, 2, 4, …)
MAX_ERROR = "max-error"
#: the curve of bmz's best operating points: per group, the Pareto front over every bmz curve
ENVELOPE = "envelope"
#: command-line codec names, in report order
ALL_CODECS = ("bmz", "jpeg", "jpeg2000", "htj2k", "jpegls", "jpegxl", "avif")
RATES = (0.25, 0.5, 1.0, 2.0)  # table rates (bpp), as REFERENCE.md
#: published guidance for irreversible MR compression (REFERENCE.md §4): (label, ratio)
GUIDANCE = (("German consensus (~1:7)", 7.0), ("10:1", 10.0), ("CAR upper bound (24:1)", 24.0))
D8, DHI = "8-bit", ">8-bit"
CHECK_DB, CHECK_BPP = 0.3, 0.03  # reference check tolerances (dB, relative bpp)
FIELDS = ["group", "source", "volume", "path", "series", "codec", "model", "version", "format", "setting",
          "mode", "param", "max_slices", "n_slices", "height", "width", "dtype", "bits", "vmin",
          "vmax", "n_voxels", "n_bytes", "hdr_bytes", "bpp", "bpp_nohdr", "ratio", "psnr", "ssim",
          "ms_ssim", "maxerr", "enc_s", "dec_s", "enc_MBps", "dec_MBps", "threads", "error"]
CURVE_FIELDS = ["group", "curve", "codec", "model", "version", "setting", "mode", "param",
                "n_volumes", "complete", "bpp", "bpp_nohdr", "ratio", "psnr", "ssim", "ms_ssim",
                "maxerr", "enc_MBps", "dec_MBps"]
_NUM = {"param", "max_slices", "n_slices", "height", "width", "bits", "vmin", "vmax", "n_voxels",
        "n_bytes", "hdr_bytes", "bpp", "bpp_nohdr", "ratio", "psnr", "ssim", "ms_ssim", "maxerr",
        "enc_s", "dec_s", "enc_MBps", "dec_MBps", "threads"}


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".replace("\n", " ")


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))


def _curve_of(r: dict) -> str:
    return f"{BMZ}/{r['model']}" if r.get("codec") == BMZ else str(r.get("codec"))


def _f(v) -> float:
    if v is None or v == "":
        return math.nan
    return float(v)
