#!/usr/bin/env python
"""Would choosing the coding mode per slice (or per slice group) beat choosing it per file?

    python benchmarks/mode_mix.py [--data DIR] [--max-slices 12] [--out benchmarks/results]
                                  [--cache FILE] [--volumes a,b]

bmz codes a volume with its learned model at one of its levels or with the bounded-error coder at
one bound δ (``--target-psnr`` keeps the smaller file that reaches the target: the per-file
envelope of ``native_precision.md``). A file whose slices (or slice groups: the random-access unit,
8 slices) each took their own mode and setting could be smaller at the same volume PSNR. This
script measures how much smaller, before any format is built for it:

1. every val volume (its ``--max-slices`` middle slices, as ``rd_val.py``) is coded with the model
   bmz picks for its bit depth at every level and with the bounded coder at δ = 0, 1, 2, 3, 4, 6,
   8, 12, 16, 24, 32, 48, 64 (δ < peak / 8): real files, decoded, each slice's chunk bytes and
   squared error kept (the cache, ``--cache``, makes reruns free);
2. at every point of the per-file envelope (no other file-level point is both smaller and more
   exact), the fewest bytes a mix reaches at the same volume MSE: an exact knapsack over the
   slices (or groups) and every measured setting (dynamic programming on the error budget,
   4,000 steps). Per group the mix is exact: a group's chunks are coded as in the file they come
   from. Per slice it is an upper bound on the gain (a slice coded after a neighbour of another
   mode loses its inter-slice context, which the measured chunk sizes assume);
3. between envelope points, what ``--target-psnr`` pays for the envelope's coarse steps: for
   targets on a 0.25 dB grid, the next envelope point at or above the target against the best
   mix reaching it.

Writes ``mode_mix.md`` in ``--out`` (the per-slice measurements stay in the cache,
``mode_mix_slices.json`` there by default).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bmz import api, metrics  # noqa: E402
from bmz.bitstream import BmzReader  # noqa: E402
from bmz.codec import pipeline, zoo  # noqa: E402
from bmz.rdcurve import inputs  # noqa: E402

DELTAS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
GROUP = 8
BINS = 4000


def measure(vol: np.ndarray) -> dict:
    """Every setting of ``vol`` → {"total": file bytes, "chunks": per-slice bytes, "sse": per-slice
    squared error}; also the model and peak."""
    vmin, vmax = int(vol.min()), int(vol.max())
    peak = vmax - vmin
    model = zoo.default_model(pipeline.mapping_for_range(vmin, vmax)["bits"])
    n_levels = int(zoo.load_model(model)[0].n_qualities)
    settings = [(f"q{q}", {"quality": q, "model": model}) for q in range(1, n_levels + 1)]
    settings += [(f"d{d}", {"max_error": d}) for d in DELTAS if d < peak / 8]
    out = {"model": model, "peak": peak, "shape": list(vol.shape), "settings": {}}
    for name, opts in settings:
        data = api.compress(vol, **opts)
        back = api.decompress(data).reshape(vol.shape)
        d = vol.astype(np.int64) - back.astype(np.int64)
        out["settings"][name] = {"total": len(data),
                                 "chunks": [int(c) for c in BmzReader(data).chunk_sizes()],
                                 "sse": [int(v) for v in (d * d).reshape(len(vol), -1).sum(1)]}
        print(f"  {name}: {len(data)} bytes", flush=True)
    return out


def min_bytes(units: list[list[int]], settings: dict, budget: float) -> int:
    """The fewest chunk bytes with total squared error ≤ ``budget`` when each unit (a list of
    slices) takes one setting: a knapsack over the error budget in ``BINS`` steps (each unit's
    error rounded up, so the answer never exceeds the budget by more than a step per unit)."""
    if budget <= 0:
        budget = 1e-9
    step = budget / BINS
    cap = BINS + len(units)
    INF = np.iinfo(np.int64).max // 4
    dp = np.full(cap + 1, INF, np.int64)
    dp[0] = 0
    for u in units:
        new = np.full(cap + 1, INF, np.int64)
        for st in settings.values():
            s = int(np.ceil(sum(st["sse"][i] for i in u) / step - 1e-9))
            if s > cap:
                continue
            cand = np.full(cap + 1, INF, np.int64)
            cand[s:] = dp[:cap + 1 - s] + sum(st["chunks"][i] for i in u)
            np.minimum(new, cand, out=new)
        dp = new
    return int(dp.min())


def envelope(settings: dict) -> list[tuple[int, int, str]]:
    """The per-file envelope: (bytes, squared error, setting), by rate, each more exact than the
    smaller ones."""
    pts = sorted((st["total"], sum(st["sse"]), k) for k, st in settings.items())
    env: list[tuple[int, int, str]] = []
    for b, s, k in pts:
        if not env or s < env[-1][1]:
            env.append((b, s, k))
    return env


def analyse(rec: dict) -> dict:
    n, h, w = rec["shape"]
    nvox, peak, st = n * h * w, rec["peak"], rec["settings"]
    groups = [list(range(g, min(g + GROUP, n))) for g in range(0, n, GROUP)]
    slices = [[i] for i in range(n)]
    env = envelope(st)
    points = []
    for b, s, k in env:
        overhead = b - sum(st[k]["chunks"])
        points.append({"setting": k, "bpp": 8 * b / nvox,
                       "psnr": metrics.psnr_from_mse(s / nvox, peak) if s else float("inf"),
                       "group_mix": (min_bytes(groups, st, s) + overhead) / b - 1,
                       "slice_mix": (min_bytes(slices, st, s) + overhead) / b - 1})
    # --target-psnr between envelope points: next envelope point at or above the target vs the mix
    finite = [p for p in points if np.isfinite(p["psnr"])]
    gaps = []
    for t in np.arange(np.ceil(finite[0]["psnr"] * 4) / 4, finite[-1]["psnr"], 0.25):
        nxt = next(e for e, p in zip(env, points) if p["psnr"] >= t)
        budget = nvox * (peak / 10 ** (t / 20)) ** 2
        overhead = nxt[0] - sum(st[nxt[2]]["chunks"])
        gaps.append({"target": float(t), "file": nxt[0],
                     "group_mix": min_bytes(groups, st, budget) + overhead,
                     "slice_mix": min_bytes(slices, st, budget) + overhead})
    return {"points": points, "targets": gaps}


def _pct(x: float) -> str:
    return f"{100 * x:+.1f} %"


def report(results: dict, args) -> str:
    lines = [
        "# Choosing the mode per slice or per group, against per file (`benchmarks/mode_mix.py`)",
        "",
        f"Val volumes, the {args.max_slices} middle slices of each, coded with the model bmz picks "
        "for the bit depth at every level and with the bounded coder at every δ of "
        f"{', '.join(map(str, DELTAS))} below peak/8; the knapsack of the script's docstring over "
        "the measured per-slice bytes and squared errors. A negative number: the mix is that much "
        "smaller than the per-file choice at the same volume PSNR. Per group (8 slices, what a "
        "file could carry without losing inter-slice context) is exact; per slice is an upper "
        "bound on the gain.",
        "",
        "## At the per-file envelope's points",
        "",
        "| volume | model | envelope points | per group: mean / best | per slice: mean / best |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        pts = [p for p in r["points"] if np.isfinite(p["psnr"])]
        g = [p["group_mix"] for p in pts]
        s = [p["slice_mix"] for p in pts]
        lines.append(f"| `{name}` | {r['model']} | {len(pts)} ({', '.join(p['setting'] for p in pts)}) "
                     f"| {_pct(np.mean(g))} / {_pct(min(g))} | {_pct(np.mean(s))} / {_pct(min(s))} |")
    lines += ["", "## `--target-psnr` between envelope points (targets every 0.25 dB)", "",
              "| volume | targets | per group: mean | per slice: mean |", "|---|---|---|---|"]
    for name, r in results.items():
        t = r["targets"]
        lines.append(f"| `{name}` | {len(t)} | {_pct(np.mean([x['group_mix'] / x['file'] - 1 for x in t]))} "
                     f"| {_pct(np.mean([x['slice_mix'] / x['file'] - 1 for x in t]))} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "val"))
    ap.add_argument("--max-slices", type=int, default=12)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--cache", default=None, help="per-slice measurements (JSON), reused")
    ap.add_argument("--volumes", default=None, help="comma list of substrings of volume paths")
    args = ap.parse_args(argv)
    out = Path(args.out)
    cache_path = Path(args.cache) if args.cache else out / "mode_mix_slices.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    wanted = args.volumes.split(",") if args.volumes else None
    results = {}
    for item in inputs.discover([args.data]):
        name = str(Path(item.path).relative_to(Path(args.data).resolve()))
        if wanted and not any(w in name for w in wanted):
            continue
        if name not in cache:
            print(name, flush=True)
            cache[name] = measure(inputs.load_volume(item, args.max_slices))
            cache_path.write_text(json.dumps(cache))
        results[name] = {"model": cache[name]["model"], **analyse(cache[name])}
    (out / "mode_mix.md").write_text(report(results, args))
    print(report(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
