#!/usr/bin/env python
"""Decoding and encoding speed of bmz against OpenJPEG and HTJ2K, side by side in one run.

For each series (default: the 16-bit UIH 512×460 T1 and the 12-bit Prisma series of ``val/``, the
N middle slices) and each model (default: what ``bmz encode`` picks for the series, the
``hyperprior`` flagship and the ``hyperprior-fast`` profile), at the model's default level:

* one thread: encode and decode seconds per slice (best of R), and the same for JPEG 2000
  (OpenJPEG) and HTJ2K (OpenJPH) through imagecodecs, one thread each, at the setting of each
  whose bpp is nearest bmz's — the ratios are what the targets are about;
* all cores: decode throughput against one thread, and whether the arrays are identical;
* warm: ``bmz.decompress(data, slices=[k])`` of one middle slice in a process that has decoded
  before (model loaded);
* cold: ``bmz decode x.bmz --slices k -o s.npy`` in a fresh process (start-up, imports, model
  loading and the one slice), wall seconds, and its peak resident memory beside a fresh process
  decoding every slice (``bmz decode x.bmz -o all.npy``);
* the decoder's multiply–accumulates per pixel (synthesis and hyper-synthesis);
* where a CUDA GPU is present: ``bmz.decompress(..., device="cuda")`` on all cores, slices per
  second end to end (entropy decoding included) and whether the arrays are the CPU's.

    python benchmarks/speed.py [--slices 8] [--repeats 3] [--out benchmarks/results]

Writes ``speed.md`` and ``speed.csv`` under ``--out``. Machines are noisy: compare ratios measured
in one run, and read the load average the report gives.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import bmz  # noqa: E402
from bmz import baselines  # noqa: E402
from bmz import io as bio  # noqa: E402
from bmz.codec import models as bmodels  # noqa: E402
from bmz.codec import zoo  # noqa: E402
from bmz.file import default_threads  # noqa: E402

VAL = REPO.parent / "shared" / "data" / "val"
SERIES = {"UIH 3-D T1 (16-bit, 512×460)": VAL / "dcm_qa_uih",
          "Prisma T1 (12-bit, 256×256)": VAL / "dcm_qa_decubitus"}

#: the targets of the issue (benchmarks/README.md): ratios to OpenJPEG, seconds
TARGETS = {"default_decode_x_j2k": 15.0, "default_encode_x_j2k": 10.0, "fast_decode_x_j2k": 3.0,
           "all_cores_speedup_2": 1.8, "warm_fast_s": 0.15, "warm_default_s": 0.5, "cold_s": 2.0}


def best(fn, repeats: int) -> tuple[float, object]:
    """(best wall seconds of ``repeats`` runs, the output of the last)."""
    t, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        t = min(t, time.perf_counter() - t0)
    return t, out


def nearest_setting(codec, x: np.ndarray, bits: int, bpp: float):
    """The setting of ``codec`` whose bpp over the slices ``x`` is nearest ``bpp``, its bytes."""
    best_s, best_d, best_data = None, float("inf"), None
    for s in codec.settings_for(bits):
        if s.lossless:
            continue
        data = [codec.encode(sl, s, bits) for sl in x]
        b = 8 * sum(len(d) for d in data) / x.size
        if abs(np.log(b / bpp)) < best_d:
            best_s, best_d, best_data = s, abs(np.log(b / bpp)), data
    return best_s, best_data


def classical(name: str, x: np.ndarray, bits: int, bpp: float, repeats: int) -> dict:
    codec = baselines.get_codec(name, threads=1)
    s, data = nearest_setting(codec, x, bits, bpp)
    te, _ = best(lambda: [codec.encode(sl, s, bits) for sl in x], repeats)
    td, _ = best(lambda: [codec.decode(d, bits) for d in data], repeats)
    return {"setting": s.name, "bpp": 8 * sum(len(d) for d in data) / x.size,
            "enc": te / len(x), "dec": td / len(x)}


#: the child's own peak RSS: VmHWM of its address space (ru_maxrss is no use here: Linux carries
#: it over from the parent through fork and exec, and the parent holds the models)
_PEAK = ("import re, runpy, sys\n"
         "sys.argv = ['bmz'] + sys.argv[1:]\n"
         "try:\n    runpy.run_module('bmz.cli', run_name='__main__')\n"
         "finally:\n    print('PEAK_KB', re.search(r'VmHWM:\\s+(\\d+)', "
         "open('/proc/self/status').read()).group(1), file=sys.stderr)\n")


def child(args: list[str], repeats: int) -> tuple[float, float]:
    """(best wall seconds, the largest peak RSS MB) of ``bmz ARGS`` in fresh processes (the
    wall time includes the few milliseconds the peak-reporting wrapper adds)."""
    t, rss = float("inf"), 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", _PEAK, *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
        t = min(t, time.perf_counter() - t0)
        peaks = [line.split()[1] for line in out.stderr.splitlines() if line.startswith("PEAK_KB")]
        if out.returncode != 0 or not peaks:
            raise RuntimeError(f"bmz {' '.join(args)} failed: {out.stderr[-2000:]}")
        rss = max(rss, int(peaks[-1]) / 1024.0)
    return t, rss


def measure(label: str, path: Path, model: str, vol: np.ndarray, bits: int, repeats: int,
            n_threads: int, tmp: Path) -> dict:
    mid = len(vol) // 2
    te, data = best(lambda: bmz.compress(vol, model=model, threads=1), repeats)
    info = bmz.info(data)
    td, x1 = best(lambda: bmz.decompress(data, threads=1), repeats)
    tn, xn = best(lambda: bmz.decompress(data, threads=n_threads), repeats)
    bmz.decompress(data, slices=[mid], threads=1)
    tw, _ = best(lambda: bmz.decompress(data, slices=[mid], threads=1), repeats)
    f = tmp / f"{model}.bmz"
    f.write_bytes(data)
    tc, rss1 = child(["decode", str(f), "--slices", str(mid), "-o", str(tmp / "s.npy"), "-f", "--quiet"],
                     repeats)
    _, rss_all = child(["decode", str(f), "-o", str(tmp / "all.npy"), "-f", "--quiet"], 1)
    gpu = {}
    if torch.cuda.is_available():  # the GPU target: slices/s end to end, entropy decoding included
        bmz.decompress(data, threads=n_threads, device="cuda")
        tg, xg = best(lambda: bmz.decompress(data, threads=n_threads, device="cuda"), repeats)
        gpu = {"gpu_slices_per_s": len(vol) / tg, "gpu_identical": bool(np.array_equal(xg, x1))}
    peak = float(np.max(np.abs(vol.astype(np.float64) - x1)))
    mse = float(np.mean((vol.astype(np.float64) - x1) ** 2))
    psnr = 10 * np.log10(float(vol.max() - vol.min()) ** 2 / mse) if mse else float("inf")
    return {"series": label, "model": info["model"], "level": info["quality"],
            "bpp": 8 * len(data) / vol.size, "psnr": psnr, "max_err": peak,
            "enc": te / len(vol), "dec": td / len(vol), "dec_all": tn / len(vol),
            "identical": bool(np.array_equal(x1, xn)), "warm": tw, "cold": tc,
            "rss_one": rss1, "rss_all": rss_all,
            "macs": bmodels.decoder_macs_per_pixel(zoo.load_model(info["model"])[0]), **gpu}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default="default,hyperprior,hyperprior-fast",
                    help="'default' is what bmz encode picks for the series")
    ap.add_argument("--threads", type=int, default=None, help="all-cores runs (default: every core)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--note", default="", help="what else ran on the machine (for the report)")
    a = ap.parse_args()
    n = a.threads or default_threads()
    known = set(zoo.available_models())
    load0 = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as td:
        for label, path in SERIES.items():
            v = bio.read(path).data
            mid = v.shape[0] // 2
            vol = np.ascontiguousarray(v[mid - a.slices // 2: mid - a.slices // 2 + a.slices])
            x, _, bits = baselines.codec_input(vol)
            names = []
            for m in a.models.split(","):
                name = (zoo.DEFAULT_MODEL_NATIVE if bits > 8 else zoo.DEFAULT_MODEL) if m == "default" else m
                if name not in names and name in known:
                    names.append(name)
            for name in names:
                r = measure(label, path, name, vol, bits, a.repeats, n, Path(td))
                for codec in ("JPEG2000", "HTJ2K"):
                    c = classical(codec, x, bits, r["bpp"], a.repeats)
                    r.update({f"{codec}_{k}": val for k, val in c.items()})
                r["default"] = name == names[0] and a.models.split(",")[0] == "default"
                rows.append(r)
                print({k: (round(val, 4) if isinstance(val, float) else val) for k, val in r.items()},
                      flush=True)
    load1 = os.getloadavg()[0]
    write(rows, Path(a.out), a, n, load0, load1)


def write(rows: list[dict], out: Path, a, n: int, load0: float, load1: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "speed.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    head = ("| series | model | level | MAC/px | bpp | PSNR dB | J2K setting (bpp) | "
            "enc s/slice | dec s/slice | dec ÷ OpenJPEG | enc ÷ OpenJPEG | dec ÷ HTJ2K | "
            "all cores × | identical | warm 1 slice s | cold `--slices k` s | RSS MB 1 / all |")
    lines = ["# Speed: bmz against OpenJPEG and HTJ2K, one run", "",
             f"`benchmarks/speed.py --slices {a.slices} --repeats {a.repeats}`: the {a.slices} "
             "middle slices of each series, each model at its default level; JPEG 2000 "
             "(OpenJPEG) and HTJ2K (OpenJPH) through imagecodecs at the setting whose bpp is "
             "nearest bmz's, one thread each; bmz one thread (`threads=1`) unless the column "
             f"says all cores ({n} here). Best of {a.repeats} runs. Warm: `bmz.decompress(data, "
             "slices=[k])` in a process that has decoded before. Cold: a fresh `bmz decode x.bmz "
             "--slices k -o s.npy` (start-up, imports, model, one slice). RSS: peak resident "
             "memory of a fresh process decoding one slice / every slice. "
             f"Load average at the start {load0:.2f}, at the end {load1:.2f}." +
             (f" {a.note}" if a.note else ""), "",
             head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        dj = r["dec"] / r["JPEG2000_dec"]
        ej = r["enc"] / r["JPEG2000_enc"]
        lines.append(
            f"| {r['series']} | {r['model']}{' (default)' if r['default'] else ''} | {r['level']} | "
            f"{r['macs']:,.0f} | {r['bpp']:.3f} | {r['psnr']:.2f} | {r['JPEG2000_setting']} "
            f"({r['JPEG2000_bpp']:.3f}) | {r['enc']:.3f} | {r['dec']:.3f} | {dj:.1f}× | {ej:.1f}× | "
            f"{r['dec'] / r['HTJ2K_dec']:.0f}× | {r['dec'] / r['dec_all']:.2f} | "
            f"{'yes' if r['identical'] else 'NO'} | {r['warm']:.3f} | {r['cold']:.2f} | "
            f"{r['rss_one']:.0f} / {r['rss_all']:.0f} |")
    if any("gpu_slices_per_s" in r for r in rows):
        lines += ["", f"## GPU ({torch.cuda.get_device_name(0)}): `bmz.decompress(data, "
                  f"threads={n}, device=\"cuda\")`, entropy decoding on the CPU threads", "",
                  "| series | model | slices/s | identical to the CPU |", "|---|---|---|---|"]
        lines += [f"| {r['series']} | {r['model']} | {r['gpu_slices_per_s']:.1f} | "
                  f"{'yes' if r['gpu_identical'] else 'NO'} |" for r in rows if "gpu_slices_per_s" in r]
    lines += ["", "## Against the targets", "",
              "| target | series | measured | met |", "|---|---|---|---|"]
    for r in rows:
        fast = r["model"] == "hyperprior-fast"
        dj = r["dec"] / r["JPEG2000_dec"]
        checks = []
        if r["default"]:
            checks += [("default decode ≤ 15× OpenJPEG", dj, TARGETS["default_decode_x_j2k"], False),
                       ("default encode ≤ 10× OpenJPEG", r["enc"] / r["JPEG2000_enc"],
                        TARGETS["default_encode_x_j2k"], False),
                       ("warm 1 slice ≤ 0.5 s (default)", r["warm"], TARGETS["warm_default_s"], False)]
        if fast:
            checks += [("fast decode ≤ 3× OpenJPEG", dj, TARGETS["fast_decode_x_j2k"], False),
                       ("warm 1 slice ≤ 0.15 s (fast)", r["warm"], TARGETS["warm_fast_s"], False)]
        checks += [(f"cold `--slices k` ≤ 2 s ({r['model']})", r["cold"], TARGETS["cold_s"], False)]
        if n == 2:
            checks.append((f"all cores ≥ 1.8× on 2 cores ({r['model']})", r["dec"] / r["dec_all"],
                           TARGETS["all_cores_speedup_2"], True))
        if "gpu_slices_per_s" in r and r["default"]:
            checks.append(("GPU ≥ 300 slices/s end to end (default)", r["gpu_slices_per_s"], 300.0, True))
        for name, v, t, above in checks:
            met = v >= t if above else v <= t
            lines.append(f"| {name} | {r['series']} | {v:.2f} | {'yes' if met else 'no'} |")
    (out / "speed.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
