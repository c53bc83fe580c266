"""Throughput of ``bmz batch encode`` on a Dask LocalCluster with 1 and 2 worker processes.

    python benchmarks/batch.py [--data ../shared/data/val] [--workers 1,2] [--quality 5]
                               [--model hyperprior] [--out benchmarks/results]

Encodes every NIfTI file and DICOM series under ``--data`` (default: the validation set, 10 IXI
T1 volumes, a studyforrest slab and a 12-bit Siemens series) with the flagship model, once per
worker count, each into a fresh output folder (nothing skipped), with the default
``--verify`` (every output decoded again for its PSNR). Measures, per worker count: cluster
start, model load (the worker plugin, all workers in parallel), the encode itself (wall), slices/s
and MB/s of raw input, the sum of the tasks' own times (busy time) and each worker's memory.
Writes ``batch.md`` and ``batch.csv`` to ``--out``; notes what else was running on the machine
(the load average and a training run, if one is going), because on a shared 2-core machine that
decides the scaling more than bmz does.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _others() -> list[str]:
    """Other CPU-heavy processes now (not ours): the command lines of the busiest few."""
    import psutil

    me = {os.getpid(), *(p.pid for p in psutil.Process().children(recursive=True))}
    procs = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if p.info["pid"] in me:
            continue
        try:
            p.cpu_percent(None)
            procs.append(p)
        except psutil.Error:
            pass
    time.sleep(1.0)
    busy = []
    for p in procs:
        try:
            c = p.cpu_percent(None)
            if c > 20:
                cmd = " ".join(p.info["cmdline"] or [])[:110]
                busy.append(f"{c:.0f} % CPU: {cmd}")
        except psutil.Error:
            pass
    return sorted(busy, reverse=True)[:5]


def _rss(client) -> dict:
    import psutil

    return client.run(lambda: psutil.Process().memory_info().rss)


def run_one(data: Path, n_workers: int, quality: int, model: str, tmp: Path) -> dict:
    from distributed import Client, LocalCluster

    from bmz import batch

    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                           dashboard_address=":0", silence_logs=logging.ERROR)
    client = Client(cluster)
    t_cluster = time.perf_counter() - t0
    t1 = time.perf_counter()
    client.register_plugin(batch.WorkerSetup([model]))  # what batch.encode does first: model load
    t_model = time.perf_counter() - t1
    rss_loaded = _rss(client)
    try:
        res = batch.encode(str(data), str(tmp / f"out{n_workers}"), quality, model, client=client)
        rss_after = _rss(client)
    finally:
        client.close()
        cluster.close()
    ok = [r for r in res.results if r["status"] == "ok"]
    busy = sum(r["seconds"] for r in ok)
    cpu = sum(r["cpu_seconds"] for r in ok)
    voxels = sum(int(math.prod(r["shape"])) for r in ok)
    out_bytes = sum(r["bytes"] for r in ok)
    return {
        "workers": n_workers, "inputs": len(ok), "failed": res.n_failed, "slices": res.slices,
        "raw_MB": res.raw_bytes / 1e6, "bmz_MB": out_bytes / 1e6,
        "cluster_start_s": t_cluster, "model_load_s": t_model, "encode_wall_s": res.seconds,
        "slices_per_s": res.slices / res.seconds, "MB_per_s": res.raw_bytes / 1e6 / res.seconds,
        "voxels": voxels, "busy_s": busy, "busy_per_slice_ms": 1000 * busy / max(1, res.slices),
        "busy_per_Mvoxel_s": busy / (voxels / 1e6),
        "utilisation": busy / (n_workers * res.seconds),
        "cpu_s": cpu, "cpu_per_slice_ms": 1000 * cpu / max(1, res.slices),
        "cpu_per_Mvoxel_s": cpu / (voxels / 1e6),
        "cpu_share": cpu / (n_workers * res.seconds),
        "task_s_median": statistics.median(r["seconds"] for r in ok),
        "task_s_max": max(r["seconds"] for r in ok),
        "rss_loaded_MB": max(rss_loaded.values()) / 1e6, "rss_after_MB": max(rss_after.values()) / 1e6,
        "model_loads": sorted({r.get("model_loads") for r in ok}),
        "pids": len({r["pid"] for r in ok}), "loadavg_before": load0,
        "loadavg_after": os.getloadavg()[0],
    }


def _projection(rows: list[dict], weights_mb: float, nodes: int = 100, cores: int = 32) -> list[str]:
    """What ``nodes`` nodes of ``cores`` cores would need, from the measured per-worker costs."""
    one = rows[0]
    w = nodes * cores
    # CPU-seconds per million voxels (encode + verify decode), the least contended run's: what a
    # dedicated core spends; wall time on this shared machine also counts waiting for a core
    s_per_mvox = min(r["cpu_per_Mvoxel_s"] for r in rows)
    clinical = 512 * 512 * 200 / 1e6  # a 200-slice 512x512 series, in Mvoxels
    per_series = s_per_mvox * clinical
    series_per_s = w / per_series
    raw_per_vox = one["raw_MB"] / (one["voxels"] / 1e6)  # MB per Mvoxel (bytes per voxel)
    ratio = one["raw_MB"] / one["bmz_MB"]
    read_mb_s = series_per_s * clinical * 2.0  # 16-bit clinical data
    write_mb_s = read_mb_s / ratio
    scaling = ""
    if len(rows) > 1:
        last = rows[-1]
        sp = last["slices_per_s"] / one["slices_per_s"]
        cpu_rate = (last["cpu_share"] * last["workers"]) / (one["cpu_share"] * one["workers"])
        scaling = (f"**Scaling measured here.** {one['workers']} → {last['workers']} workers: "
                   f"{sp:.2f}× the slices/s. The CPU the workers got together grew "
                   f"{cpu_rate:.2f}× ({one['cpu_share']:.2f} → {last['workers']} × "
                   f"{last['cpu_share']:.2f} of a core) while the CPU per slice stayed "
                   f"{one['cpu_per_slice_ms']:.0f} → {last['cpu_per_slice_ms']:.0f} ms: the "
                   "speed-up is what the machine had free (its other core runs a training job "
                   "and other engineers' benchmarks, above), not a cost of Dask or of bmz. Each "
                   "input is an independent task — no data moves between workers, one result "
                   "dict goes back to the client — so on dedicated cores the rate grows with "
                   "the worker count until storage or the client's discovery becomes the limit. ")
    return [
        f"## What a {nodes}-node cluster would need",
        "",
        scaling,
        "",
        f"**Cost.** One single-threaded worker spends **{s_per_mvox:.1f} CPU-seconds per million "
        f"voxels** with the flagship at quality 5, encode + verify decode "
        f"({min(r['cpu_per_slice_ms'] for r in rows):.0f} ms per slice of these volumes, "
        f"{raw_per_vox:.2f} bytes/voxel raw, compressed {ratio:.1f}:1 overall).",
        "",
        f"- **Throughput.** {nodes} nodes × {cores} cores = {w} single-threaded workers (one "
        f"per core, as here). A clinical series of 200 slices of 512×512 ({clinical:.0f} Mvoxels) "
        f"costs {per_series:.0f} CPU-seconds, so the cluster does ≈ {series_per_s:.1f} series/s "
        f"(≈ {series_per_s * 3600 / 1e3:.0f} k series per hour); a million such series take "
        f"≈ {1e6 / series_per_s / 3600:.1f} h. `--no-verify` saves the verify decode, about "
        "half of that (`benchmarks/results/rd_val.md`: the flagship encodes 1.2 and decodes 1.0 "
        "MB/s of 16-bit raw on one thread), and the manifest then has no PSNR.",
        f"- **I/O.** At that rate the workers read ≈ {read_mb_s / 1e3:.1f} GB/s of 16-bit input and "
        f"write ≈ {write_mb_s:.0f} MB/s of `.bmz` (at this data's ratio; plus a re-read of each output for its "
        "SHA-256): per node "
        f"≈ {read_mb_s / nodes:.0f} MB/s in — within a 10 GbE link, but the shared file system "
        "must sustain the aggregate. DICOM archives add per-file metadata operations (one open "
        "per instance, headers read twice: discovery and encoding).",
        f"- **Model loading.** Each worker loads the model once, when it starts (worker plugin "
        f"`bmz.batch.WorkerSetup`): here {one['model_load_s']:.0f} s (import of torch and the "
        f"model, {weights_mb:.1f} MB of weights, on a busy machine). {w} workers starting together "
        f"read {w * weights_mb / 1e3:.0f} GB of weights: install them on each node's local disk "
        "(the bmz wheel's `share/bmz/models`, or `BMZ_MODEL_PATH`) rather than reading them from "
        "the shared file system. A restarted worker (the nanny restarts a killed one) loads "
        "again; nothing else does.",
        f"- **Memory per worker.** {one['rss_loaded_MB']:.0f} MB resident after loading the model "
        f"(mostly torch), {one['rss_after_MB']:.0f} MB after encoding; NIfTI inputs stream a "
        "slice at a time, a DICOM series is held whole (a 1000-slice 512×512 int16 series is "
        f"0.5 GB). Plan ≈ 2–3 GB per worker: {cores} workers need ≈ {cores * 2.5:.0f} GB per node "
        "(`dask worker --memory-limit`).",
        f"- **Scheduler and client.** With tasks of ~{per_series:.0f} s, {w} workers finish ≈ "
        f"{series_per_s:.0f} tasks/s — far below what one Dask scheduler handles (thousands per "
        "second); the client keeps at most 8 tasks per worker submitted and appends one "
        "manifest line per result. The serial part is discovery on the client: walking the "
        "source tree (NIfTI by name; one 132-byte read per folder to spot DICOM, whose headers "
        "are then read on the workers). For a tree of millions of files on a network file "
        "system that walk takes minutes to hours: run one batch per top-level folder (e.g. per "
        "year or scanner), each with its own output folder and manifest.",
        "- **Restart.** A re-run re-reads every finished output once (SHA-256 + checksums) on "
        "the workers: about 1/ratio of the input volume, so cheap next to encoding.",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "val"))
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--quality", type=int, default=5)
    ap.add_argument("--model", default="hyperprior")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args()

    import dask
    import distributed
    import torch

    from bmz.codec import zoo

    others = _others()
    tmp = Path(tempfile.mkdtemp(prefix="bmz-batch-bench-"))
    rows = []
    try:
        for n in [int(x) for x in a.workers.split(",")]:
            print(f"{n} worker(s)…", flush=True)
            rows.append(run_one(Path(a.data), n, a.quality, a.model, tmp))
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in rows[-1].items()},
                  flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    others_after = _others()

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "batch.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    weights = zoo.find_weights(a.model)
    base = rows[0]
    lines = [
        "# `bmz batch encode` throughput on a Dask LocalCluster",
        "",
        f"`python benchmarks/batch.py` — {time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}: "
        f"{os.cpu_count()} CPU cores, Python {platform.python_version()}, torch {torch.__version__}, "
        f"dask {dask.__version__}, distributed {distributed.__version__}.",
        "",
        f"Data: every input under `{os.path.relpath(a.data, ROOT)}` ({base['inputs']} volumes/series, "
        f"{base['slices']} slices, {base['raw_MB']:.1f} MB raw), model `{a.model}` "
        f"({weights.stat().st_size / 1e6:.1f} MB of weights), quality {a.quality}, with `--verify` "
        "(each output decoded again for PSNR / max error: about half of the work). One worker "
        "process per core, one thread each.",
        "",
        "**Other load on the machine** (this is a shared 2-core machine): "
        + ("; ".join(others) if others else "none above 20 % CPU") + " before; "
        + ("; ".join(others_after) if others_after else "none above 20 % CPU") + " after. "
        "Load average before/after each run is in the table.",
        "",
        "| workers | cluster start s | model load s | encode wall s | slices/s | MB/s raw | task wall ms/slice | task CPU ms/slice | CPU share per worker | median task s | worker RSS MB (loaded / after) | model loads per worker | load avg before → after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workers']} | {r['cluster_start_s']:.1f} | {r['model_load_s']:.1f} | "
            f"{r['encode_wall_s']:.1f} | {r['slices_per_s']:.2f} | {r['MB_per_s']:.3f} | "
            f"{r['busy_per_slice_ms']:.0f} | {r['cpu_per_slice_ms']:.0f} | {r['cpu_share']:.2f} | "
            f"{r['task_s_median']:.1f} | "
            f"{r['rss_loaded_MB']:.0f} / {r['rss_after_MB']:.0f} | {r['model_loads']} | "
            f"{r['loadavg_before']:.1f} → {r['loadavg_after']:.1f} |")
    lines += ["", "*Task wall* is the time a task took; *task CPU* the CPU time its worker "
              "process used meanwhile; *CPU share* = CPU time / (workers × encode wall): the "
              "fraction of a core each worker actually got. Slices/s and MB/s count the whole "
              "encode wall time (discovery, scheduling, manifest included; cluster start and "
              "model load excluded, they are in their own columns)."]
    if len(rows) > 1:
        sp = rows[-1]["slices_per_s"] / base["slices_per_s"]
        lines += ["", f"Speed-up {rows[-1]['workers']} workers vs {base['workers']}: **{sp:.2f}×** "
                      f"(ideal {rows[-1]['workers'] / base['workers']:.0f}×)."]
    lines += ["", *_projection(rows, weights.stat().st_size / 1e6)]
    (out / "batch.md").write_text("\n".join(lines) + "\n")
    print(f"{out / 'batch.md'} written")


if __name__ == "__main__":
    main()
