#!/usr/bin/env python
"""Coding on all cores against one thread, side by side in one run, on a real 16-bit 512×460
series (``val/dcm_qa_uih``, N middle slices): ``bmz.decompress`` and ``bmz.compress`` for each
model at its default level (and bounded error, ``max_error=1``), one thread against ``threads``
(default: every core), best of R runs each; decoded arrays and encoded bytes checked identical.

    python benchmarks/parallel.py [--slices 8] [--repeats 2] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import bmz  # noqa: E402
from bmz import io as bio  # noqa: E402
from bmz.file import default_threads  # noqa: E402


def best(fn, repeats: int) -> tuple[float, object, float]:
    """(best wall seconds, the output, CPU seconds / wall seconds of that run: the cores it got)."""
    t, out, cores = float("inf"), None, 0.0
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if dt < t:
            t, cores = dt, dc / dt
    return t, out, cores


def settings(models: str, max_errors: str) -> list[tuple[str, dict]]:
    """(label, bmz.compress keywords) of each setting measured."""
    out = [(m, {"model": m}) for m in models.split(",") if m]
    out += [(f"max-error {d}", {"max_error": int(d)}) for d in max_errors.split(",") if d]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "val" / "dcm_qa_uih"))
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--models", default="hyperprior,hyperprior-ctx")
    ap.add_argument("--max-errors", default="1", help="bounded-error settings (encode and decode)")
    ap.add_argument("--threads", type=int, default=None, help="default: every core")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--note", default="", help="what else ran on the machine (for the report)")
    a = ap.parse_args()
    v = bio.read(a.data).data
    mid = v.shape[0] // 2
    vol = np.ascontiguousarray(v[mid - a.slices // 2: mid - a.slices // 2 + a.slices])
    n = a.threads or default_threads()
    load0 = os.getloadavg()[0]
    mb = vol.size * 2 / 1e6
    bmz.decompress(bmz.compress(vol[:1], max_error=1, threads=1))  # JIT, models: not timed
    dec, enc = [], []
    for label, kw in settings(a.models, a.max_errors):
        te1, d1, _ = best(lambda: bmz.compress(vol, threads=1, **kw), a.repeats)
        ten, dn, ce = best(lambda: bmz.compress(vol, threads=n, **kw), a.repeats)
        td1, x1, _ = best(lambda: bmz.decompress(d1, threads=1), a.repeats)
        tdn, xn, cd = best(lambda: bmz.decompress(d1, threads=n), a.repeats)
        info = bmz.info(d1)
        head = (label, info["quality"], info.get("group") or 1, 8 * len(d1) / vol.size)
        enc.append(head + (te1 / len(vol), ten / len(vol), te1 / ten, mb / te1, mb / ten, d1 == dn,
                           ce))
        dec.append(head + (td1 / len(vol), tdn / len(vol), td1 / tdn, mb / td1, mb / tdn,
                           bool(np.array_equal(x1, xn)), cd))
        print("encode", enc[-1], "\ndecode", dec[-1], flush=True)
    load1 = os.getloadavg()[0]
    cols = ("| setting | level | group | bpp | s/slice, 1 thread | s/slice, all cores | speed-up | "
            "MB/s 1 thread | MB/s all cores | cores used | identical |",
            "|---|---|---|---|---|---|---|---|---|---|---|")

    def table(rows):
        return [*cols] + [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.3f} | {r[4]:.3f} | {r[5]:.3f} | "
                          f"{r[6]:.2f}× | {r[7]:.2f} | {r[8]:.2f} | {r[10]:.2f} | "
                          f"{'yes' if r[9] else 'NO'} |" for r in rows]

    lines = [f"# Coding on all cores ({n} here) against one thread", "",
             f"`benchmarks/parallel.py`: `bmz.compress` and `bmz.decompress` of {len(vol)} middle "
             f"slices {vol.shape[1]}×{vol.shape[2]} of `{os.path.relpath(a.data, REPO)}` (16-bit), "
             "each model at its default level and bounded error (`max_error`, the flagship's base "
             f"layer where it pays), best of {a.repeats} runs, one process, measured side by side "
             "in one run. The encoded bytes and the decoded arrays are compared: identical. "
             f"Load average when the run started: {load0:.2f}, when it ended: {load1:.2f} — on a "
             "shared machine a core another job holds is not there to be used: the speed-up "
             "measures the machine as much as the code. *Cores used*: the all-cores run's CPU seconds per wall second (what it "
             "got of the machine, at most the cores it asked for)." + (f" {a.note}" if a.note else ""),
             "",
             "How the work is split: independent slices run one per thread. In a slice group of "
             "format 5 (`hyperprior-ctx`) encoding analyses every slice on its own (the analysis "
             "and the float synthesis choosing the floor: most of the work) and only codes it "
             "once its predecessor's analysis is there; decoding runs the group's chain of "
             "entropy decoding in order on one thread and the syntheses on the others. In a "
             "bounded-error group (format 6) each slice's residual needs the previous slice's "
             "coder state: encoding runs the coding chain and the check (every chunk decoded "
             "again) one slice apart, and groups in parallel; decoding runs groups in parallel "
             "(a volume of one group: one thread). Torch runs on one thread inside each worker, so "
             "a slice's float arithmetic is the same on any thread count.", "",
             "## Encoding", "", *table(enc), "", "## Decoding", "", *table(dec)]
    Path(a.out, "parallel.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
