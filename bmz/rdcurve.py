"""Rate–distortion curves of bmz and classical codecs on your own images (``bmz rd-curve``).

    bmz rd-curve INPUT... [--codecs bmz,jpeg,jpeg2000,htj2k,jpegls,jpegxl,avif] [--models a,b]
                 [--max-slices N] [--jobs N] [--anchor CODEC] [--reuse] -o OUTDIR

Inputs
    Anything ``bmz encode`` reads — a NIfTI file, a ``.npy`` file, a DICOM file or a DICOM series
    folder — and folders of them. A folder given on the command line is searched recursively
    (hidden entries skipped, sorted): every ``.nii``/``.nii.gz``/``.npy`` file is a volume; a folder
    that directly holds DICOM files (a ``.dcm``/``.ima`` suffix or the ``DICM`` preamble) is a DICOM
    input — one volume per series in it — and is not searched further (the DICOM reader takes its
    subfolders along). A path that does not exist, or a file that cannot be read, becomes an error
    row (never silently dropped).

Groups
    Each volume belongs to the group ``SOURCE/8-bit`` or ``SOURCE/>8-bit``: SOURCE is the name of
    the folder given on the command line that held it (for a file given directly: the name of its
    parent folder), the suffix the class of its bit depth B = ceil(log2(max − min + 1)) of the
    stored values (B ≤ 8 or B > 8). Curves, BD-rates, plots and error maps are per group.

Measurements (one row per volume × codec × setting)
    Classical codecs: :mod:`bmz.baselines` (one image per slice, ``stored − min`` at the true bit
    depth, REFERENCE.md §2's traps handled, lossless settings checked bit-exact); bmz: every quality
    level of every chosen shipped model through :func:`bmz.api.compress` / ``decompress``.

    * ``bpp``: every byte a user stores × 8 / voxels — the whole ``.bmz`` file (container,
      metadata, index, chunks) or every codec stream with its headers;
    * ``bpp_nohdr``: without headers — bmz: the slice chunks only; classical codecs: minus the
      per-image header estimate of :meth:`bmz.baselines.SliceCodec.header_bytes` (marker / box
      parsing, or a 1×1 image for JPEG XL);
    * ``ratio``: stored bytes (voxels × the stored dtype's size) / bytes;
    * ``psnr``: peak = volume max − min, from the volume MSE; ``ssim``: skimage per slice, data range
      = volume range, mean over slices; ``ms_ssim``: 5-scale, slices ≥ 161 px only (else empty);
      ``maxerr``: max absolute error;
    * ``enc_s``/``dec_s`` wall seconds on one thread, ``enc_MBps``/``dec_MBps`` in MB of 16-bit raw
      (voxels × 2 / 1e6) per second.

    A codec that refuses the bit depth, an unreadable input or a lossless setting that is not
    bit-exact gives a row with ``error`` set (and no numbers).

``--max-slices N`` keeps the N middle slices of each volume. ``--jobs N`` runs one volume × codec
per task in N processes (one thread each). ``--reuse`` keeps the rows of ``OUTDIR/points.csv``
whose volume, slice selection, codec version (bmz: model SHA-256) and setting match; rows of codecs,
models or inputs that a run does not select stay in ``points.csv`` (never discarded by a partial
run) but are not part of that run's curves and reports.

Outputs in OUTDIR
    ``points.csv`` / ``points.json`` (every row, error rows included), ``curves.csv`` (group means
    per codec and setting, as the reference did), ``bd_rate.csv`` / ``bd_rate.md`` (BD-rate of every
    curve vs JPEG 2000 and vs ``--anchor``, PSNR and SSIM), ``rd_<group>.png`` (bpp–PSNR and
    bpp–SSIM, log-rate axis), ``errormap_<group>.png`` (one slice per codec at about the same bpp)
    and ``report.md`` tying them together.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from tqdm import tqdm

from . import __version__, api, baselines, metrics
from . import io as bio
from ._deps import optional, pyplot
from .bitstream import BmzReader
from .bitstream.container import FORMAT_VERSION
from .codec import chunks, zoo
from .errors import InputError
from .io.discover import VOLUME_SUFFIXES, is_dicom_file, suffix, walk

__all__ = [
    "InputItem", "Result", "discover", "run", "group_curves", "bd_table", "compare",
    "reference_check", "FIELDS", "CURVE_FIELDS", "ALL_CODECS", "J2K", "RATES", "GUIDANCE",
]

J2K = "JPEG2000"
BMZ = "bmz"
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



# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------


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
        for d, dirs, files in walk(root):
            dpath = Path(d)
            if any(is_dicom_file(dpath / f) for f in files
                   if suffix(f) not in VOLUME_SUFFIXES):
                items += _dicom_items(dpath, str(dpath.relative_to(base)), source)
                dirs[:] = []
                continue
            for f in files:
                fp = dpath / f
                if suffix(fp) in VOLUME_SUFFIXES:
                    items.append(InputItem(str(fp), str(fp.relative_to(base)), source))
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


# ----------------------------------------------------------------------------------------------
# codecs: classical ones from bmz.baselines, bmz models as one more kind
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CodecSpec:
    """One curve family to run: a classical codec, or a bmz model."""

    kind: str  # "classical" | "bmz"
    name: str  # registry name (JPEG2000…) or model name
    version: str  # codec version, or the model weights' SHA-256
    error: str = ""  # set when the codec cannot run at all (no shipped model…)

    @property
    def curve(self) -> str:
        return f"{BMZ}/{self.name}" if self.kind == BMZ else self.name

    @property
    def codec(self) -> str:
        return BMZ if self.kind == BMZ else self.name

    @property
    def model(self) -> str:
        return self.name if self.kind == BMZ else ""


def resolve_codecs(codecs: Sequence[str] | None, models: Sequence[str] | None) -> list[CodecSpec]:
    """Codec specs for ``codecs`` (command-line names; default all) and bmz ``models`` (default
    every shipped one). Unknown names raise :class:`bmz.errors.InputError`."""
    names = list(codecs) if codecs else list(ALL_CODECS)
    specs: list[CodecSpec] = []
    for n in names:
        key = n.strip()
        if not key:
            continue
        if key.lower() == BMZ:
            avail = zoo.available_models()
            chosen = list(models) if models else sorted(avail)
            if not chosen:
                specs.append(CodecSpec(BMZ, "(none)", "", error=(
                    "no shipped bmz model found (models/ or $BMZ_MODEL_PATH); train and export "
                    "one, or leave bmz out of --codecs")))
            for m in chosen:
                if m not in avail:
                    raise InputError(f"--models: no shipped model {m!r}; available: "
                                     f"{', '.join(sorted(avail)) or 'none'}")
                specs.append(CodecSpec(BMZ, m, zoo.sha256_file(avail[m])))
            continue
        try:
            cname = baselines.canonical_name(key)
        except KeyError as e:
            raise InputError(f"--codecs: {e.args[0]}; or bmz") from None
        specs.append(CodecSpec("classical", cname, baselines.get_codec(cname).version()))
    seen, out = set(), []
    for s in specs:
        if s.curve not in seen:
            seen.add(s.curve)
            out.append(s)
    return out


def bmz_settings(model: str) -> list[baselines.Setting]:
    m, _ = zoo.load_model(model)
    return [baselines.Setting(f"q{q}", q) for q in range(1, int(m.n_qualities) + 1)]


def settings_for(spec: CodecSpec, bits: int) -> list[baselines.Setting]:
    if spec.kind == BMZ:
        return bmz_settings(spec.name)
    return list(baselines.get_codec(spec.name).settings_for(bits))


# ----------------------------------------------------------------------------------------------
# measuring
# ----------------------------------------------------------------------------------------------


def quality_metrics(ref: np.ndarray, rec: np.ndarray) -> dict:
    rng = metrics.volume_range(ref)
    return {"psnr": metrics.psnr(ref, rec, rng), "ssim": metrics.ssim(ref, rec, rng),
            "ms_ssim": metrics.ms_ssim(ref, rec, rng), "maxerr": metrics.max_abs_error(ref, rec)}


def code_bmz(vol: np.ndarray, model: str, quality: int) -> tuple[dict, np.ndarray]:
    """bmz at one quality: sizes (whole file, chunks only), times and the reconstruction."""
    t0 = time.perf_counter()
    data = api.compress(vol, quality=quality, model=model)
    t1 = time.perf_counter()
    rec = api.decompress(data)
    t2 = time.perf_counter()
    if rec.shape != vol.shape or rec.dtype != vol.dtype:
        raise RuntimeError(f"decoded {rec.shape} {rec.dtype}, expected {vol.shape} {vol.dtype}")
    with BmzReader(data, name="<bytes>") as r:
        chunks = int(sum(r.chunk_sizes()))
    return {"n_bytes": len(data), "hdr_bytes": len(data) - chunks, "enc_s": t1 - t0,
            "dec_s": t2 - t1}, rec


def code_point(spec: CodecSpec, vol: np.ndarray, setting: baselines.Setting,
               vmin: int, bits: int) -> tuple[dict, np.ndarray]:
    """One codec setting on ``vol`` → (size/time dict, reconstruction)."""
    if spec.kind == BMZ:
        return code_bmz(vol, spec.name, int(setting.param))
    cv = baselines.code_volume(baselines.get_codec(spec.name), vol, setting, vmin=vmin, bits=bits)
    return {"n_bytes": cv.n_bytes, "hdr_bytes": cv.header_bytes, "enc_s": cv.enc_s,
            "dec_s": cv.dec_s}, cv.recon


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".replace("\n", " ")


def _base_row(item: InputItem, spec: CodecSpec | None, max_slices: int | None) -> dict:
    return {"source": item.source, "volume": item.name, "path": item.path,
            "series": item.series or "", "codec": spec.codec if spec else "",
            "model": spec.model if spec else "", "version": spec.version if spec else "",
            "format": bmz_file_format() if spec and spec.kind == BMZ else "",
            "max_slices": max_slices or 0, "threads": 1, "error": ""}


def bmz_file_format() -> str:
    """What bmz's output bytes depend on besides the weights: container version / chunk format
    (e.g. ``1.1/4``). Part of a bmz point's cache key: a format change re-measures every model."""
    return f"{FORMAT_VERSION[0]}.{FORMAT_VERSION[1]}/{chunks.LOSSY.FORMAT}"


@dataclass
class Task:
    item: InputItem
    spec: CodecSpec
    max_slices: int | None
    skip: frozenset = frozenset()  # setting names already measured (reuse)


def run_task(task: Task) -> list[dict]:
    """All settings of one codec on one volume → rows (error rows instead of exceptions)."""
    item, spec = task.item, task.spec
    base = _base_row(item, spec, task.max_slices)
    if item.error:
        return [dict(base, group=f"{item.source}/?", setting="", error=item.error)]
    if spec.error:
        return [dict(base, group=f"{item.source}/?", setting="", error=spec.error)]
    try:
        vol = load_volume(item, task.max_slices)
    except Exception as e:  # noqa: BLE001
        return [dict(base, group=f"{item.source}/?", setting="", error=_err(e))]
    vmin, vmax = int(vol.min()), int(vol.max())
    bits = baselines.bit_depth(vmin, vmax)
    base.update(group=f"{item.source}/{depth_class(bits)}", n_slices=vol.shape[0],
                height=vol.shape[1], width=vol.shape[2], dtype=vol.dtype.str, bits=bits,
                vmin=vmin, vmax=vmax, n_voxels=int(vol.size))
    try:
        sets = settings_for(spec, bits)
    except Exception as e:  # noqa: BLE001
        return [dict(base, setting="", error=_err(e))]
    rows = []
    mb = vol.size * 2 / 1e6
    raw = vol.size * vol.dtype.itemsize
    for s in sets:
        if s.name in task.skip:
            continue
        row = dict(base, setting=s.name, mode=s.mode, param=s.param)
        try:
            m, rec = code_point(spec, vol, s, vmin, bits)
            m.update(quality_metrics(vol, rec))
        except Exception as e:  # noqa: BLE001 - one bad point must not lose the run
            row["error"] = _err(e)
        else:
            row.update(m, bpp=metrics.bpp(m["n_bytes"], vol.size),
                       bpp_nohdr=metrics.bpp(m["n_bytes"] - m["hdr_bytes"], vol.size),
                       ratio=raw / max(1, m["n_bytes"]),
                       enc_MBps=mb / m["enc_s"] if m["enc_s"] > 0 else math.inf,
                       dec_MBps=mb / m["dec_s"] if m["dec_s"] > 0 else math.inf)
        rows.append(row)
    return rows


def _init_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


# ----------------------------------------------------------------------------------------------
# points files
# ----------------------------------------------------------------------------------------------


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


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))


def _curve_of(r: dict) -> str:
    return f"{BMZ}/{r['model']}" if r.get("codec") == BMZ else str(r.get("codec"))


# ----------------------------------------------------------------------------------------------
# group curves, BD-rates, comparisons
# ----------------------------------------------------------------------------------------------


def _f(v) -> float:
    if v is None or v == "":
        return math.nan
    return float(v)


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


# ----------------------------------------------------------------------------------------------
# plots and error maps
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------


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


def write_report(path: Path, res: "Result") -> None:
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


# ----------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------


@dataclass
class Result:
    """What :func:`run` measured and wrote."""

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


def resolve_anchor(anchor: str | None, specs: list[CodecSpec]) -> str:
    """``--anchor`` → curve id: a codec name (``jpeg2000``, ``avif``…), ``bmz`` (the first bmz
    model) or ``bmz/MODEL``; default JPEG 2000."""
    if not anchor:
        return J2K
    a = anchor.strip()
    curves = [s.curve for s in specs]
    if a in curves:
        return a
    if a.lower() == BMZ:
        bm = [c for c in curves if c.startswith(BMZ + "/")]
        if bm:
            return bm[0]
        raise InputError("--anchor bmz: no bmz model among the curves")
    try:
        return baselines.canonical_name(a)
    except KeyError as e:
        raise InputError(f"--anchor: {e.args[0]}") from None


def run(inputs: Sequence[str | os.PathLike], outdir: str | os.PathLike,
        codecs: Sequence[str] | None = None, models: Sequence[str] | None = None,
        max_slices: int | None = None, jobs: int = 1, anchor: str | None = None,
        reuse: bool = False, progress: bool = True, reference: str | os.PathLike | None = None,
        reference_groups: dict[str, str] | None = None, command: str | None = None,
        plots: bool = True, items: list[InputItem] | None = None,
        log: Callable[[str], None] | None = None) -> Result:
    """Measure, aggregate and write everything to ``outdir`` (see the module docstring).

    ``reference`` / ``reference_groups`` ({our group: reference csv group}) add a reference check
    to the report; ``items`` replaces the discovery of ``inputs``."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    items = items if items is not None else discover(inputs)
    specs = resolve_codecs(codecs, models)
    anchor_id = resolve_anchor(anchor, specs)
    info = machine_info()
    info.update(jobs=max(1, int(jobs)), max_slices=max_slices,
                command=command or " ".join(["bmz rd-curve", *map(str, inputs)]))
    max_slices = max_slices or None

    points_path = out / "points.csv"
    cache: dict[tuple, dict] = {}
    if reuse:
        for r in load_points(points_path):
            if not r.get("error"):
                cache[point_key(r)] = r
    # tasks, skipping what the cache holds
    tasks: list[Task] = []
    reused: list[dict] = []
    for it in items:
        for sp in specs:
            base = _base_row(it, sp, max_slices)
            have = {k[6]: r for k, r in cache.items()
                    if k[:6] == point_key(dict(base, setting=""))[:6]}
            skip = frozenset(have)
            if have and not it.error and not sp.error:
                bits = int(next(iter(have.values()))["bits"])
                try:
                    wanted = {s.name for s in settings_for(sp, bits)}
                except Exception:  # noqa: BLE001
                    wanted = set()
                reused += [r for n, r in have.items() if n in wanted]
                if wanted and wanted <= skip:
                    continue
            tasks.append(Task(it, sp, max_slices, skip))
    rows: list[dict] = list(reused)
    order = {s.curve: i for i, s in enumerate(specs)}
    # cached points this run does not select (other codecs, models, inputs) stay in points.csv:
    # a partial run never discards measurements; curves and reports cover this run's selection
    used = {id(r) for r in reused}
    measured_models = {s.model for s in specs if s.codec == BMZ}
    kept = [r for r in cache.values() if id(r) not in used  # superseded weights of a model measured now: dropped
            and not (r.get("codec") == BMZ and r.get("model") in measured_models)]

    def save():
        write_csv(points_path, _sort_rows(rows, order) + kept, FIELDS)

    bar = tqdm(total=len(tasks), desc="rd-curve", unit="task", disable=not progress,
               dynamic_ncols=True, mininterval=0.2 if sys.stderr.isatty() else 30.0)
    n_measured = 0
    jobs = max(1, int(jobs))
    if jobs == 1 or len(tasks) <= 1:
        import torch

        nt = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for t in tasks:
                bar.set_postfix_str(f"{Path(t.item.name).name[:24]} {t.spec.curve}", refresh=False)
                got = run_task(t)
                rows += got
                n_measured += len(got)
                save()
                bar.update(1)
        finally:
            torch.set_num_threads(nt)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"),
                                 initializer=_init_worker) as ex:
            futs = {ex.submit(run_task, t): t for t in tasks}
            for fu in as_completed(futs):
                t = futs[fu]
                try:
                    got = fu.result()
                except Exception as e:  # noqa: BLE001 - a crashed worker is an error row
                    got = [dict(_base_row(t.item, t.spec, max_slices),
                                group=f"{t.item.source}/?", setting="", error=_err(e))]
                rows += got
                n_measured += len(got)
                save()
                bar.update(1)
    bar.close()
    save()
    rows = _sort_rows(rows, order)
    write_json(out / "points.json", {"info": info, "fields": FIELDS,
                                     "points": [{k: r.get(k) for k in FIELDS} for r in rows]})

    curves = group_curves(rows)
    write_csv(out / "curves.csv", curves, CURVE_FIELDS)
    anchors = [J2K] + ([anchor_id] if anchor_id != J2K else [])
    bd = bd_table(curves, anchors)
    write_csv(out / "bd_rate.csv", bd, ["group", "curve", "anchor", "bd_rate_psnr",
                                        "bd_rate_psnr_025_2", "bd_rate_ssim", "bd_psnr"])
    write_bd_md(out / "bd_rate.md", bd)
    groups = sorted({c["group"] for c in curves})
    res = Result(out, rows, curves, bd, groups, specs, info, n_reused=len(reused),
                 n_measured=n_measured, reference_groups=dict(reference_groups or {}))
    ref_rows = read_reference(reference)
    for g, rg in res.reference_groups.items():
        if ref_rows and g in groups:
            res.checks[g] = reference_check(curves, ref_rows, g, rg)
    if plots:
        items_by = {it.name: it for it in items}
        specs_by = {s.curve: s for s in specs}
        for g in groups:
            f = f"rd_{_slug(g)}.png"
            plot_group(out / f, g, curves, ref_rows, res.reference_groups.get(g))
            res.plots[g] = f
            f = f"errormap_{_slug(g)}.png"
            try:
                em = errormaps(out / f, g, rows, curves, items_by, specs_by, max_slices)
            except Exception as e:  # noqa: BLE001
                em = None
                if log:
                    log(f"error maps for {g} failed: {_err(e)}")
            if em:
                res.errormaps[g] = {"file": f, "info": em}
    write_report(out / "report.md", res)
    return res
