#!/usr/bin/env python
"""Guaranteed fidelity on ``../shared/data/val``: bmz ``max_error=δ`` against JPEG-LS NEAR=δ and,
for δ = 0, JPEG 2000 and JPEG XL lossless.

    python benchmarks/lossless.py [--deltas 0,1,2,4,8] [--every 1] [--no-base-study]

Groups as in ``rd_val.py``: ``val/8-bit`` (10 IXI T1 volumes + the studyforrest slab) and
``val/12-bit`` (the native Siemens Prisma FLASH series, 11 significant bits). For every volume
and δ it measures

* **bmz**: ``bmz.compress(volume, max_error=δ)`` with the default automatic base-layer choice;
  bpp counts every byte of the ``.bmz`` file (headers, metadata, index); the decoded volume's
  max |error| (must be ≤ δ: the script fails otherwise); encode (including the automatic base
  choice and the encode-time check, which decodes every chunk again) and decode speed;
* **JPEG-LS** (CharLS 2.x through ``pyjpegls``, which declares the true bit depth B — imagecodecs'
  ``jpegls_encode`` cannot, REFERENCE.md §2 — and, for comparison, imagecodecs' CharLS declaring
  8/16 bits), NEAR=δ, one codestream per slice, all bytes counted; decoded and its max error
  measured;
* δ = 0: **JPEG 2000** (OpenJPEG, reversible 5/3, B declared) and **JPEG XL** (libjxl modular
  lossless, B declared, default effort 7) via ``bmz.baselines``, checked bit-exact.

A second study (``--no-base-study`` skips it) forces a learned base layer in every slice
(hyperprior quality 1 and 2, no per-slice fallback; every 4th slice, ``--base-every``) and splits
its bytes into base and residual, beside the residual coder alone on the same slices: what the
learned layer costs and what it saves the residual coder.

Speeds are single-thread wall clock in MB/s of the original array bytes (1 byte per voxel for the
8-bit group, 2 for the 12-bit one) and Mvox/s; group values are means over the group's volumes.
Writes ``benchmarks/results/lossless.md`` and ``lossless.csv``.
"""

from __future__ import annotations

import argparse
import csv
import io as _io
import math
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
VAL = REPO.parent / "shared" / "data" / "val"
OUT = HERE / "results"

import numpy as np  # noqa: E402

import bmz  # noqa: E402
from bmz import api, baselines  # noqa: E402
from bmz import io as bio  # noqa: E402
from bmz.codec import pipeline, residual, zoo  # noqa: E402
from bmz.codec.chunks import bounded  # noqa: E402


def volumes() -> list[tuple[str, str, Path]]:
    out = [("val/8-bit", p.name.split("_")[0], p)
           for p in sorted((VAL / "ixi_nichart" / "t1").glob("*.nii.gz"))]
    out.append(("val/8-bit", "studyforrest", VAL / "datalad_example_dicom_structural"))
    for p in sorted((VAL / "dcm_qa_decubitus").iterdir()):
        if p.is_dir():
            out.append(("val/12-bit", "prisma-" + p.name, p))
    return out


def _timed(f, *a, **k):
    t = time.perf_counter()
    r = f(*a, **k)
    return r, time.perf_counter() - t


def jls_true_bits(v: np.ndarray, bits: int, delta: int) -> tuple[int, int, float, float]:
    """CharLS with B declared (pyjpegls) → (bytes, max error, enc s, dec s)."""
    import jpeg_ls

    nb, err, te, td = 0, 0, 0.0, 0.0
    for s in v:
        s = np.ascontiguousarray(s)
        data, t = _timed(jpeg_ls.encode_buffer, s.tobytes(), s.shape[0], s.shape[1], 1,
                         max(2, bits), lossy_error=delta)
        te += t
        (buf, _), t = _timed(jpeg_ls.decode_buffer, bytes(data))
        td += t
        nb += len(data)
        back = np.frombuffer(bytes(buf), dtype="<u1" if s.dtype == np.uint8 else "<u2")
        err = max(err, int(np.abs(back.astype(np.int64).reshape(s.shape) - s).max()))
    return nb, err, te, td


def jls_imagecodecs(v: np.ndarray, delta: int) -> tuple[int, int]:
    import imagecodecs

    nb, err = 0, 0
    for s in v:
        data = imagecodecs.jpegls_encode(np.ascontiguousarray(s), level=delta or None)
        back = imagecodecs.jpegls_decode(data)
        nb += len(baselines.strip_spiff(bytes(data)))
        err = max(err, int(np.abs(back.astype(np.int64) - s).max()))
    return nb, err


def classical_lossless(name: str, v: np.ndarray, bits: int) -> tuple[int, float, float]:
    codec = baselines.get_codec(name)
    setting = codec.setting("lossless", bits)
    nb, te, td = 0, 0.0, 0.0
    for s in v:
        data, t = _timed(codec.encode, np.ascontiguousarray(s), setting, bits)
        te += t
        back, t = _timed(codec.decode, data, bits)
        td += t
        if not np.array_equal(np.asarray(back).astype(np.int64), s.astype(np.int64)):
            raise RuntimeError(f"{name} lossless is not bit-exact")
        nb += len(data)
    return nb, te, td


def base_study(vol: np.ndarray, delta: int, q: int) -> tuple[int, int]:
    """Every slice with a learned base layer at quality ``q`` → (base bytes, residual bytes)."""
    model, _ = zoo.load_model(zoo.DEFAULT_MODEL)
    mapping = pipeline.mapping_for_range(int(vol.min()), int(vol.max()))
    enc = bounded.BoundedEncoder(model, mapping, delta, q)
    enc.fallback = False
    with pipeline.single_thread():
        for s in vol:
            enc.encode_slice(s)
    return sum(p[0] for p in enc.parts), sum(p[1] for p in enc.parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--deltas", default="0,1,2,4,8")
    ap.add_argument("--every", type=int, default=1, help="use every N-th slice (quick runs)")
    ap.add_argument("--no-base-study", action="store_true")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite lossless.md from the last run's lossless.csv")
    ap.add_argument("--base-every", type=int, default=4,
                    help="the base-layer study codes every N-th slice (it runs the learned encoder)")
    args = ap.parse_args()
    deltas = [int(d) for d in args.deltas.split(",")]
    if args.report_only:
        write(read_csv(), deltas, args)
        return 0
    import torch

    torch.set_num_threads(1)
    # warm up the JIT (and its cache) outside the timings
    bmz.decompress(bmz.compress(np.arange(64 * 64, dtype=np.uint16).reshape(1, 64, 64) % 999,
                                max_error=1))
    rows = []
    for group, name, path in volumes():
        vol = np.ascontiguousarray(np.asarray(bio.read(path).data)[::args.every])
        lo = int(vol.min())
        bits = pipeline.bit_depth(lo, int(vol.max()))
        img = (vol.astype(np.int64) - lo).astype(np.uint8 if bits <= 8 else np.uint16)
        nvox, raw = vol.size, vol.size * (1 if bits <= 8 else 2)
        row0 = {"group": group, "volume": name, "shape": "x".join(map(str, vol.shape)),
                "bits": bits}

        def add(codec, delta, nbytes, max_err, te=None, td=None, **extra):
            r = dict(row0, codec=codec, delta=delta, bpp=8 * nbytes / nvox, max_error=max_err,
                     load=os.getloadavg()[0],
                     enc_MBps=raw / te / 1e6 if te else "", dec_MBps=raw / td / 1e6 if td else "",
                     enc_Mvoxps=nvox / te / 1e6 if te else "", dec_Mvoxps=nvox / td / 1e6 if td else "")
            r.update(extra)
            rows.append(r)
            print(f"{name:14s} {codec:22s} δ={delta} {r['bpp']:.4f} bpp  max err {max_err}"
                  + (f"  enc {r['enc_MBps']:.2f} dec {r['dec_MBps']:.2f} MB/s" if te else ""),
                  file=sys.stderr, flush=True)

        for d in deltas:
            data, te = _timed(bmz.compress, vol, max_error=d)
            back, td = _timed(bmz.decompress, data)
            err = int(np.abs(back.astype(np.int64) - vol).max())
            if err > d or back.dtype != vol.dtype:
                raise RuntimeError(f"{name}: bmz max error {err} > δ = {d}")
            add("bmz", d, len(data), err, te, td, base_quality=api.info(data)["quality"])
            nb, e, te, td = jls_true_bits(img, bits, d)
            if e > d:
                raise RuntimeError(f"{name}: JPEG-LS max error {e} > NEAR = {d}")
            add("JPEG-LS (B declared)", d, nb, e, te, td)
            if bits > 8:
                nb, e = jls_imagecodecs(img, d)
                add("JPEG-LS (16-bit)", d, nb, e)
            if d == 0:
                for cname, label in (("JPEG2000", "JPEG 2000"), ("JPEG-XL", "JPEG XL")):
                    nb, te, td = classical_lossless(cname, img, bits)
                    add(label, 0, nb, 0, te, td)
        if not args.no_base_study:
            for d in (0, 4):
                for q in (1, 2):
                    sub = vol[::args.base_every]
                    nbase, nres = base_study(sub, d, q)
                    nres0 = sum(len(residual.encode(s.astype(np.int64) - lo, int(vol.max()) - lo, d)[0])
                                for s in sub)
                    add(f"bmz base q{q} forced", d, (nbase + nres) * vol.size / sub.size, "",
                        base_bpp=8 * nbase / sub.size, residual_bpp=8 * nres / sub.size,
                        nobase_bpp=8 * nres0 / sub.size)
    write(rows, deltas, args)
    return 0


def read_csv() -> list[dict]:
    rows = []
    with open(OUT / "lossless.csv", newline="") as f:
        for r in csv.DictReader(f):
            for k, v in r.items():
                if v in ("", None):
                    r[k] = ""
                elif k in ("bits", "delta", "max_error", "base_quality"):
                    r[k] = int(v)
                elif k not in ("group", "volume", "shape", "codec"):
                    r[k] = float(v)
            rows.append(r)
    return rows


def write(rows: list[dict], deltas: list[int], args) -> None:
    OUT.mkdir(exist_ok=True)
    keys = ["group", "volume", "shape", "bits", "codec", "delta", "bpp", "max_error", "enc_MBps",
            "dec_MBps", "enc_Mvoxps", "dec_Mvoxps", "base_quality", "base_bpp", "residual_bpp",
            "nobase_bpp", "load"]
    with open(OUT / "lossless.csv", "w", newline="") as f:
        w = csv.DictWriter(f, keys, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.5f}" if isinstance(v, float) else v) for k, v in r.items()})

    def mean(group, codec, d, key="bpp"):
        v = [r[key] for r in rows if r["group"] == group and r["codec"] == codec
             and r["delta"] == d and r.get(key) not in ("", None)]
        return sum(v) / len(v) if v else None

    def worst(group, codec, d):
        v = [r["max_error"] for r in rows if r["group"] == group and r["codec"] == codec
             and r["delta"] == d]
        return max(v) if v else None

    groups = list(dict.fromkeys(r["group"] for r in rows))
    loads = [r["load"] for r in rows if r.get("load") not in ("", None)]
    load = f"{min(loads):.1f}–{max(loads):.1f}" if loads else "(not recorded)"
    L = ["# Guaranteed fidelity: bmz `max_error` vs JPEG-LS, JPEG 2000, JPEG XL", "",
         f"`python benchmarks/lossless.py{' --every ' + str(args.every) if args.every > 1 else ''}`"
         f" on `../shared/data/val`; bmz {bmz.__version__}, residual coder `{residual.CODER_ID}`, "
         f"base-layer model `{zoo.DEFAULT_MODEL}` (automatic choice: none, q1 or q2); load average "
         f"{load} on {os.cpu_count()} cores during the run (a training run held one core; speeds "
         "are single-thread wall clock and suffer from the load, every codec alike).", "",
         "bpp: every byte of the file or codestreams (bmz: header, metadata, index; classical: one "
         "codestream per slice) × 8 / voxels, mean over the group's volumes. *max err*: the largest "
         "|decoded − original| over every voxel of every volume of the group, measured after "
         "decoding. JPEG-LS: CharLS with the true bit depth declared (pyjpegls); for the 12-bit "
         "group also CharLS through imagecodecs, which declares 16 bits.", ""]
    L += ["## Targets", ""]
    for g in groups:
        beat_jls = all(mean(g, "bmz", d) < mean(g, "JPEG-LS (B declared)", d) for d in deltas)
        jx = mean(g, "JPEG XL", 0) if 0 in deltas else None
        worst_err = max((worst(g, "bmz", d) - d for d in deltas), default=0)
        L.append(f"* **{g}**: fewer bits than JPEG-LS NEAR=δ at every δ measured: "
                 f"**{'yes' if beat_jls else 'NO'}** ("
                 + ", ".join(f"δ{d} {100 * (mean(g, 'bmz', d) / mean(g, 'JPEG-LS (B declared)', d) - 1):+.1f} %"
                             for d in deltas) + ")"
                 + (f"; fewer than JPEG XL lossless at δ = 0: **{'yes' if mean(g, 'bmz', 0) < jx else 'NO'}**"
                    f" ({mean(g, 'bmz', 0):.3f} vs {jx:.3f} bpp, {100 * (mean(g, 'bmz', 0) / jx - 1):+.1f} %)"
                    if jx else "")
                 + f"; measured max error ≤ δ on every voxel of every volume: "
                 f"**{'yes' if worst_err <= 0 else 'NO'}**.")
    def ratio(c, k, better):
        v = [mean(g, c, 0, k) / mean(g, "bmz", 0, k) for g in groups
             if mean(g, c, 0, k) and mean(g, "bmz", 0, k)]
        return f"{min(v):.0f}–{max(v):.0f}×" if v else "?"

    def span(k):
        v = [mean(g, "bmz", d, k) for g in groups for d in deltas if mean(g, "bmz", d, k)]
        return f"{min(v):.1f}–{max(v):.1f}" if v else "?"

    L += ["", "Speed is where bmz loses: its residual coder models every voxel sequentially with "
          "context mixing (a few hundred integer operations per voxel, one core), so it encodes at "
          f"{span('enc_MBps')} MB/s and decodes at {span('dec_MBps')} MB/s. At δ = 0 that is "
          f"{ratio('JPEG-LS (B declared)', 'enc_MBps', 0)} slower to encode and "
          f"{ratio('JPEG-LS (B declared)', 'dec_MBps', 0)} slower to decode than CharLS, and "
          f"{ratio('JPEG XL', 'enc_MBps', 0)} / {ratio('JPEG XL', 'dec_MBps', 0)} slower than "
          "libjxl's lossless mode at its default effort. Encoding also pays for the automatic "
          "base-layer choice (the learned encoder on a few sample slices) and for decoding every "
          "chunk again before writing it.", "",
          "The learned base layer does not pay for itself on this data: forced into every slice "
          "(tables below), it saves the residual coder less than it costs at every δ measured, so "
          "the automatic choice picks no base layer on every volume here "
          "(csv column `base_quality`).", "",
          "REFERENCE.md gives 2.71 bpp for JPEG XL lossless on the 8-bit group; this run measures "
          f"{mean('val/8-bit', 'JPEG XL', 0) or 0:.2f}, as `rd_val.py` does (JPEG-LS 2.89, JPEG "
          "2000 3.13 there too): every classical codec measures 2–3 % above the reference sheet on "
          "these volumes, an offset investigated in `rd_val.md` (the reference's volumes are most "
          "likely not byte-identical to these). bmz is below both figures.", ""]
    for g in groups:
        L += [f"## {g}", "", "| δ | bmz bpp | max err | JPEG-LS NEAR=δ bpp | max err | bmz vs JPEG-LS |"
              + (" JPEG-LS 16-bit decl. |" if g != "val/8-bit" else "")
              + " JPEG 2000 | JPEG XL | bmz vs JPEG XL |",
              "|---|---|---|---|---|---|" + ("---|" if g != "val/8-bit" else "") + "---|---|---|"]
        for d in deltas:
            b, j = mean(g, "bmz", d), mean(g, "JPEG-LS (B declared)", d)
            j2, jx = mean(g, "JPEG 2000", d), mean(g, "JPEG XL", d)
            line = (f"| {d} | **{b:.3f}** | {worst(g, 'bmz', d)} | {j:.3f} | "
                    f"{worst(g, 'JPEG-LS (B declared)', d)} | {100 * (b / j - 1):+.1f} % |")
            if g != "val/8-bit":
                j16 = mean(g, "JPEG-LS (16-bit)", d)
                line += f" {j16:.3f} |" if j16 is not None else " |"
            line += (f" {j2:.3f} | {jx:.3f} | {100 * (b / jx - 1):+.1f} % |" if jx else " | | |")
            L.append(line)
        L += ["", "Speed (MB/s of the original array, single thread; bmz encode includes the base "
              "choice and the encode-time decode check):", "",
              "| δ | bmz enc | bmz dec | JPEG-LS enc | JPEG-LS dec | JPEG 2000 enc / dec | JPEG XL enc / dec |",
              "|---|---|---|---|---|---|---|"]
        for d in deltas:
            f = lambda c, k: mean(g, c, d, k)  # noqa: E731
            s = (f"| {d} | {f('bmz', 'enc_MBps'):.2f} | {f('bmz', 'dec_MBps'):.2f} | "
                 f"{f('JPEG-LS (B declared)', 'enc_MBps'):.1f} | {f('JPEG-LS (B declared)', 'dec_MBps'):.1f} |")
            if f("JPEG 2000", "enc_MBps"):
                s += (f" {f('JPEG 2000', 'enc_MBps'):.1f} / {f('JPEG 2000', 'dec_MBps'):.1f} |"
                      f" {f('JPEG XL', 'enc_MBps'):.2f} / {f('JPEG XL', 'dec_MBps'):.1f} |")
            else:
                s += " | |"
            L.append(s)
        L += ["", "Per volume (bpp):", "",
              "| volume | " + " | ".join(f"bmz δ{d} / JPEG-LS" for d in deltas) + " | JPEG XL δ0 |",
              "|---|" + "---|" * (len(deltas) + 1)]
        for v in dict.fromkeys(r["volume"] for r in rows if r["group"] == g):
            def one(c, d):
                x = [r["bpp"] for r in rows if r["volume"] == v and r["codec"] == c and r["delta"] == d]
                return x[0] if x else math.nan
            L.append(f"| {v} | " + " | ".join(f"{one('bmz', d):.3f} / {one('JPEG-LS (B declared)', d):.3f}"
                                              for d in deltas) + f" | {one('JPEG XL', 0):.3f} |")
        base = [r for r in rows if r["group"] == g and r["codec"].startswith("bmz base")]
        if base:
            L += ["", f"Learned base layer forced in every slice (no fallback), measured on every "
                  f"{args.base_every}-th slice: what it costs and what it saves:", "",
                  "| δ | base | base bpp | residual bpp | base + residual | residual coder alone "
                  "(same slices) |", "|---|---|---|---|---|---|"]
            for d in (0, 4):
                for q in (1, 2):
                    c = f"bmz base q{q} forced"
                    if mean(g, c, d) is None:
                        continue
                    b, r = mean(g, c, d, 'base_bpp'), mean(g, c, d, 'residual_bpp')
                    L.append(f"| {d} | q{q} | {b:.3f} | {r:.3f} | {b + r:.3f} | "
                             f"{mean(g, c, d, 'nobase_bpp'):.3f} |")
        L.append("")
    (OUT / "lossless.md").write_text("\n".join(L) + "\n")
    print(f"wrote {OUT / 'lossless.md'}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
