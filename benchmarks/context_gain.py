#!/usr/bin/env python
"""What each step of the native-precision flagship bought, per val volume: the same slices coded
by each model through its real entropy coder (bytes of the learned chunk: kind, floor, payload),
PSNR from each model's synthesis, BD-rate (PSNR) of each step against the shipped flagship.

    python benchmarks/context_gain.py [--data DIR] [--slices 8] [--out benchmarks/results]

Steps: the shipped ``hyperprior``; the same architecture trained further on native-precision data
with two levels added (the warm start, ``--warm``); ``hyperprior-ctx`` with slices coded alone
(checkerboard context, G = 1) and in groups of G = 2, 4, 8 consecutive slices (inter-slice
context). A slice's inter-slice rate depends only on its predecessor, so each slice is coded twice
(alone and with its predecessor) and any G follows from the two, as the encoder chooses: inside a
group, the smaller of the two. Every chunk is decoded once and
checked against the encoder's latents. Output: ``context_gain.csv`` (every point) and
``context_gain.md`` (BD-rates per volume and group).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bmz import io as bio  # noqa: E402
from bmz import rdcurve  # noqa: E402
from bmz.codec import pipeline, zoo  # noqa: E402
from bmz.codec.chunks import learned_compact  # noqa: E402
from bmz.metrics import bd_rate  # noqa: E402
from bmz.train import frozen_from_checkpoint  # noqa: E402

GROUPS = (1, 2, 4, 8)


@torch.no_grad()
def measure(model, vol: np.ndarray, mapping: dict, q: int, inter: bool) -> dict:
    """Bytes per slice (alone, and with the predecessor as context when ``inter``) and the
    volume's squared error (float synthesis, floor applied as the encoder chooses it)."""
    alone, ctx, sse = [], [], 0.0
    prev = None
    for k, s in enumerate(vol):
        x = torch.from_numpy(pipeline.pad_to_multiple(pipeline.to_unit(s, mapping), model.downsampling))[None, None]
        payload, sym = model.analyse(x, q, single_stream=True)
        H, W = s.shape
        rec = pipeline.from_unit(model.synthesize_float(sym, q)[0, 0, :H, :W].numpy(), mapping, np.int64)
        floor = pipeline.choose_floor(s, rec, mapping)
        if floor:
            rec[rec <= mapping["min"] + floor] = mapping["min"]
        sse += float(((rec - s.astype(np.int64)) ** 2).sum())
        hdr = 1 + len(learned_compact.write_floor(floor))
        alone.append(hdr + len(payload))
        if inter:
            if prev is not None:
                p2, _ = model.analyse(x, q, single_stream=True, prev=prev)
                lat = model.decode_latents(p2, tuple(x.shape[2:]), q, single_stream=True, prev=prev)
                if not torch.equal(lat["y"], sym):
                    raise AssertionError("inter-slice chunk does not decode to the encoder's latents")
                ctx.append(hdr + len(p2))
            else:
                ctx.append(alone[-1])
            prev = model.context_input(sym, q)
    return {"alone": alone, "ctx": ctx, "sse": sse}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "val"))
    ap.add_argument("--slices", type=int, default=8, help="consecutive middle slices per volume")
    ap.add_argument("--warm", default=str(REPO.parent / "shared" / "checkpoints" / "hyperprior-native-85215.ckpt"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--qualities", default=None, help="comma list (1-based) per model; default all")
    a = ap.parse_args()
    torch.set_num_threads(1)
    models = {"hyperprior": zoo.load_model("hyperprior")[0]}
    if Path(a.warm).exists():
        models["native-warm"] = frozen_from_checkpoint(a.warm)
    models["hyperprior-ctx"] = zoo.load_model("hyperprior-ctx")[0]
    rows = []
    for item in rdcurve.discover([a.data]):
        vol_full = bio.read(item.path, series=item.series).data
        vol_full = vol_full if vol_full.ndim == 3 else vol_full[None]
        mapping = pipeline.intensity_mapping(vol_full)
        sl = rdcurve.middle_slices(vol_full.shape[0], a.slices)
        vol = vol_full[sl]
        group = rdcurve.depth_class(mapping["bits"])
        for name, m in models.items():
            qs = range(m.n_qualities) if not a.qualities else [int(v) - 1 for v in a.qualities.split(",")]
            for q in qs:
                t = time.time()
                r = measure(m, vol, mapping, q, inter=name == "hyperprior-ctx")
                mse = r["sse"] / vol.size
                psnr = 10 * math.log10(mapping["scale"] ** 2 / max(mse, 1e-12))
                # what the encoder writes: a slice inside a group is coded with its predecessor
                # as context, or alone where that is smaller (bmz.codec.chunks.learned_inter)
                variants = {"": r["alone"]} if not r["ctx"] else {
                    f" G={g}": [r["alone"][k] if k % g == 0 else min(r["alone"][k], r["ctx"][k])
                                for k in range(len(vol))] for g in GROUPS}
                for suffix, sizes in variants.items():
                    rows.append({"volume": item.name, "group": group, "bits": mapping["bits"],
                                 "shape": "x".join(map(str, vol.shape)), "model": name + suffix,
                                 "quality": q + 1, "bytes": sum(sizes),
                                 "bpp": 8 * sum(sizes) / vol.size, "psnr": psnr})
                print(f"{item.name} {name} q{q + 1}: {rows[-1]['bpp']:.3f} bpp {psnr:.2f} dB "
                      f"({time.time() - t:.1f} s)", flush=True)
    out = Path(a.out)
    with open(out / "context_gain.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    report(rows, out / "context_gain.md", a.slices)


def _curve(rows, vol, model):
    pts = sorted((r["bpp"], r["psnr"]) for r in rows if r["volume"] == vol and r["model"] == model)
    return [p[0] for p in pts], [p[1] for p in pts]


def report(rows, path: Path, n_slices: int) -> None:
    models = list(dict.fromkeys(r["model"] for r in rows))
    vols = list(dict.fromkeys(r["volume"] for r in rows))
    base = "hyperprior"
    lines = [f"# What each step bought (val, {n_slices} consecutive middle slices per volume)", "",
             "BD-rate (PSNR) of each step against the shipped flagship `hyperprior` on the same "
             "slices, over the rates both cover (negative = fewer bits for the same PSNR). "
             "Written by `benchmarks/context_gain.py`.", "",
             "| volume | bits | " + " | ".join(m for m in models if m != base) + " |",
             "|---|---|" + "---|" * (len(models) - 1)]
    per_group: dict = {}
    for v in vols:
        bits = next(r["bits"] for r in rows if r["volume"] == v)
        g = next(r["group"] for r in rows if r["volume"] == v)
        cells = []
        for m in models:
            if m == base:
                continue
            try:
                d = bd_rate(*_curve(rows, v, base), *_curve(rows, v, m))
            except Exception:  # noqa: BLE001 - no overlap
                d = float("nan")
            per_group.setdefault((g, m), []).append(d)
            cells.append(f"{d:+.1f} %")
        lines.append(f"| {v} | {bits} | " + " | ".join(cells) + " |")
    lines += ["", "| group (mean of volumes) | " + " | ".join(m for m in models if m != base) + " |",
              "|---|" + "---|" * (len(models) - 1)]
    for g in dict.fromkeys(k[0] for k in per_group):
        lines.append(f"| {g} | " + " | ".join(f"{np.nanmean(per_group[(g, m)]):+.1f} %"
                                             for m in models if m != base) + " |")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
