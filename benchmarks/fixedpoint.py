#!/usr/bin/env python
"""What bit-exact decoding costs: bmz's integer design against the same model in float.

    python benchmarks/fixedpoint.py [--data DIR] [--models a,b] [--every N] [--out DIR]

For every shipped model, quality and validation volume (every N-th slice), the same latent is
decoded two ways:

* **bmz** (what ships): scale indices from the integer hyper-synthesis, synthesis in fixed point
  (``bmz.codec.fixedpoint``) — identical on every machine;
* **float**: CompressAI's way — indices from the float hyper-synthesis (``exp2`` of ``h_s`` plus the
  gain, ``GaussianConditional.build_indexes``), float32 synthesis — which can differ between
  machines, thread counts and devices.

It reports the rate difference (bytes of the y stream coded with the integer vs the float indices:
the integer hyper-synthesis's quantisation of log-scales) and the PSNR difference (fixed-point vs
float32 synthesis on the same symbols), and the synthesis time per slice. Writes
``fixedpoint.md`` and ``fixedpoint.csv`` in ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bmz import rdcurve  # noqa: E402
from bmz.codec import pipeline, priors, zoo  # noqa: E402
from bmz.codec.entropy import channel_indexes  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "val")
    ap.add_argument("--models", default=None, help="comma list (default: every shipped model)")
    ap.add_argument("--every", type=int, default=4, help="use every N-th slice (default 4)")
    ap.add_argument("--max-volumes", type=int, default=None, help="only the first N volumes")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    return ap.parse_args(argv)


def _compressai_conditional(m):
    """CompressAI's GaussianConditional over ``m``'s scale table (lower bound: its first scale),
    as the model was trained with: a model loaded for coding holds only the frozen tables."""
    table = m.gaussian_conditional.scale_table.tolist()
    return priors.compressai_entropy_models().GaussianConditional(table, scale_bound=float(table[0]))


@torch.no_grad()
def measure_slice(m, x: torch.Tensor, q: int) -> dict:
    """Both decodes of one padded slice ``x`` (1, 1, H, W) at quality index ``q``."""
    H, W = x.shape[-2:]
    data = m.compress_slice(x, q)
    hyper = hasattr(m, "int_hs")
    if hyper:
        z_coder, y_coder = m.coders
        nz = int.from_bytes(data[:4], "little")
        zshape = (1, m.N, H // m.downsampling, W // m.downsampling)
        z_hat = z_coder.decode(data[4:4 + nz], channel_indexes(zshape)).float() + m._z_medians()[None, :, None, None]
        y_idx = m.int_hs.indexes(z_hat, q)
        y_sym = y_coder.decode(data[4 + nz:], y_idx)
        # CompressAI's float path: σ = exp2(clamp(h_s(ẑ) + log2 gain)), index by scale table
        lg = m.log2_gain[q][None, :, None, None]
        sig = torch.exp2((m.h_s(z_hat) + lg).clamp(m.log2_scale_min, m.log2_scale_max))
        f_idx = _compressai_conditional(m).build_indexes(sig)
        y_bytes_int, y_bytes_float = len(data) - 4 - nz, len(y_coder.encode(y_sym, f_idx))
        offset = torch.zeros(1, y_sym.shape[1], 1, 1)
    else:
        yshape = (1, m.M, H // m.downsampling, W // m.downsampling)
        y_sym = m.coders[q].decode(data, channel_indexes(yshape))
        y_bytes_int = y_bytes_float = len(data)
        offset = m._medians(q).float()
    t = time.perf_counter()
    x_fx = m.synthesize(y_sym, q)
    t_fx = time.perf_counter() - t
    y_hat = (y_sym.float() + offset) * torch.exp2(m.log2_inv_gain[q]).float()[None, :, None, None]
    t = time.perf_counter()
    x_fl = m.g_s(y_hat)
    t_fl = time.perf_counter() - t
    return {"bytes": len(data), "y_int": y_bytes_int, "y_float": y_bytes_float,
            "x_fx": x_fx, "x_fl": x_fl.double(), "t_fx": t_fx, "t_fl": t_fl}


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    names = [s.strip() for s in args.models.split(",")] if args.models else sorted(zoo.available_models())
    items = [i for i in rdcurve.discover([args.data]) if not i.error][: args.max_volumes]
    rows = []
    for name in names:
        m, sha = zoo.load_model(name)
        for item in items:
            vol = rdcurve.load_volume(item, None)[:: args.every]
            mp = pipeline.intensity_mapping(vol)
            if mp["scale"] == 0:
                continue
            peak = float(mp["scale"])
            for q in range(m.n_qualities):
                acc = {"y_int": 0, "y_float": 0, "bytes": 0, "se_fx": 0.0, "se_fl": 0.0, "diff": 0,
                       "maxdiff": 0, "t_fx": 0.0, "t_fl": 0.0}
                H, W = vol.shape[1:]
                for s in vol:
                    x = pipeline.pad_to_multiple(pipeline.to_unit(s, mp), m.downsampling)
                    r = measure_slice(m, torch.from_numpy(x)[None, None], q)
                    rec_fx = pipeline.from_unit(r["x_fx"][0, 0, :H, :W].numpy(), mp, vol.dtype).astype(np.float64)
                    rec_fl = pipeline.from_unit(r["x_fl"][0, 0, :H, :W].numpy(), mp, vol.dtype).astype(np.float64)
                    ref = s.astype(np.float64)
                    acc["se_fx"] += float(((rec_fx - ref) ** 2).sum())
                    acc["se_fl"] += float(((rec_fl - ref) ** 2).sum())
                    d = np.abs(rec_fx - rec_fl)
                    acc["diff"] += int((d > 0).sum())
                    acc["maxdiff"] = max(acc["maxdiff"], int(d.max()))
                    for k in ("y_int", "y_float", "bytes", "t_fx", "t_fl"):
                        acc[k] += r[k]
                n = vol.size
                psnr = lambda se: math.inf if se == 0 else 10 * math.log10(peak**2 / (se / n))  # noqa: E731
                rows.append({
                    "model": name, "group": f"{item.source}/{rdcurve.depth_class(mp['bits'])}",
                    "volume": item.name, "quality": q + 1, "n_slices": len(vol),
                    "bpp": 8 * acc["bytes"] / n,
                    "rate_cost_pct": 100 * (acc["y_int"] - acc["y_float"]) / max(1, acc["y_float"]),
                    "psnr_fixed": psnr(acc["se_fx"]), "psnr_float": psnr(acc["se_fl"]),
                    "psnr_cost_db": psnr(acc["se_fl"]) - psnr(acc["se_fx"]),
                    "voxels_differing_pct": 100 * acc["diff"] / n, "max_abs_diff": acc["maxdiff"],
                    "synth_ms_fixed": 1e3 * acc["t_fx"] / len(vol), "synth_ms_float": 1e3 * acc["t_fl"] / len(vol),
                })
                print(f"{name} {item.name} q{q + 1}: rate cost {rows[-1]['rate_cost_pct']:+.3f} %, "
                      f"PSNR cost {rows[-1]['psnr_cost_db']:+.4f} dB", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = previous_rows(args.out / "fixedpoint.csv", exclude=set(names)) + rows
    with open(args.out / "fixedpoint.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    write_md(args.out / "fixedpoint.md", rows, args)
    return 0


def previous_rows(path: Path, exclude: set[str]) -> list[dict]:
    """The rows of an earlier run's csv for models not measured now (a ``--models`` run updates
    those models and keeps the others' numbers)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        out = [r for r in csv.DictReader(f) if r["model"] not in exclude]
    for r in out:
        for k, v in r.items():
            if k not in ("model", "group", "volume"):
                r[k] = int(v) if k in ("quality", "n_slices", "max_abs_diff") else float(v)
    return out


def write_md(path: Path, rows: list[dict], args) -> None:
    L = ["# The cost of bit-exact decoding", "",
         f"`python benchmarks/fixedpoint.py --every {args.every}` on `{args.data.name}/` (every "
         f"{args.every}th slice of every volume; one thread). Per model, group and quality, means over "
         "the group's volumes. *Rate cost*: bytes of the latent stream with the integer hyper-synthesis's "
         "indices vs CompressAI's float indices (0 for factorized-prior models, whose indices are "
         "the channel). *PSNR cost*: float32 synthesis minus fixed-point synthesis on the same "
         "decoded symbols (negative = fixed point is better). *Differing voxels*: decoded stored "
         "values that differ between the two; *max diff* in stored units. Synthesis time: ms per "
         "slice, fixed point (float64 on integers) vs float32.", "",
         "| model | group | quality | bpp | rate cost % | PSNR fixed | PSNR float | PSNR cost dB | "
         "differing voxels % | max diff | synth ms fixed / float |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["model"], r["group"], r["quality"]) for r in rows})
    for mdl, g, q in keys:
        rs = [r for r in rows if (r["model"], r["group"], r["quality"]) == (mdl, g, q)]
        mean = lambda k: float(np.mean([r[k] for r in rs]))  # noqa: E731
        L.append(f"| `{mdl}` | {g} | {q} | {mean('bpp'):.3f} | {mean('rate_cost_pct'):+.3f} | "
                 f"{mean('psnr_fixed'):.3f} | {mean('psnr_float'):.3f} | {mean('psnr_cost_db'):+.4f} | "
                 f"{mean('voxels_differing_pct'):.2f} | {max(r['max_abs_diff'] for r in rs)} | "
                 f"{mean('synth_ms_fixed'):.1f} / {mean('synth_ms_float'):.1f} |")
    worst_rate = max(r["rate_cost_pct"] for r in rows)
    worst_db = max(r["psnr_cost_db"] for r in rows)
    L += ["", f"Worst single volume: rate cost {worst_rate:+.3f} %, PSNR cost {worst_db:+.4f} dB.", ""]
    path.write_text("\n".join(L))


if __name__ == "__main__":
    sys.exit(main())
