#!/usr/bin/env python
"""Peak memory and throughput of ``bmz encode`` / ``bmz decode`` on a 512×512×300 volume, and
concurrent writers to one output.

    python benchmarks/load.py [--slices 300] [--size 512] [--quality 5] [--out DIR]

The volume is real MRI made large: the slices of a validation IXI T1 volume (uint8, 120×120),
resampled to ``size``² (bilinear) and repeated to ``slices`` slices, stored as uint16 NIfTI. Each
CLI run is a fresh process; its peak resident memory is the child's ``ru_maxrss``. Then four
processes encode four different volumes to the *same* output path at once: the result must be
one complete, valid file equal to one of the four (atomic rename), with no temporary file left.
Writes ``load.md`` in ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VAL = REPO.parent / "shared" / "data" / "val" / "ixi_nichart" / "t1" / "IXI067-HH-1356_T1.nii.gz"


def make_volume(path: Path, n: int, size: int) -> tuple:
    import nibabel as nib
    import numpy as np
    import torch
    import torch.nn.functional as F

    src = np.asarray(nib.load(VAL).dataobj)  # (120, 120, k), slices along the last axis
    x = torch.from_numpy(np.moveaxis(src, -1, 0).astype(np.float32))[:, None]
    big = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    big = (big * 16).round().clamp(0, 4095).numpy().astype(np.uint16)  # 12-bit range
    reps = -(-n // big.shape[0])
    vol = np.concatenate([big] * reps)[:n]
    nib.save(nib.Nifti1Image(np.moveaxis(vol, 0, -1), np.eye(4)), path)
    return vol.shape, vol.dtype


_WRAP = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, "
         "text=True); sys.stderr.write(p.stderr); "
         "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def run(cmd: list[str]) -> tuple[float, float, int]:
    """Wall seconds, peak RSS (MB) of that one command (measured by a fresh wrapper), exit status."""
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", _WRAP, *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.stderr.strip():
        print(p.stderr.strip().splitlines()[-1], file=sys.stderr)
    code, kb = p.stdout.split()[-2:]
    return wall, int(kb) / 1024.0, int(code)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--quality", type=int, default=5)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)
    bmz = [sys.executable, "-m", "bmz.cli"]
    with tempfile.TemporaryDirectory() as td:
        d = Path(td)
        src = d / "big.nii.gz"
        shape, dtype = make_volume(src, args.slices, args.size)
        raw_mb = shape[0] * shape[1] * shape[2] * 2 / 1e6
        base = run([sys.executable, "-c", "import bmz.api, bmz.codec.zoo as z; z.load_model(z.DEFAULT_MODEL)"])
        enc = run(bmz + ["encode", str(src), "-o", str(d / "big.bmz"), "-q", str(args.quality), "--quiet"])
        size = (d / "big.bmz").stat().st_size
        dec = run(bmz + ["decode", str(d / "big.bmz"), "-o", str(d / "back.nii.gz"), "--quiet"])
        dec_npy = run(bmz + ["decode", str(d / "big.bmz"), "-o", str(d / "back.npy"), "--quiet"])
        # concurrent writers to one output
        import numpy as np

        srcs = []
        for i in range(4):
            p = d / f"w{i}.npy"
            np.save(p, np.full((3, 64, 64), 10 * i + 5, np.uint16) + np.arange(64, dtype=np.uint16))
            srcs.append(p)
        target = d / "same.bmz"
        procs = [subprocess.Popen(bmz + ["encode", str(s), "-o", str(target), "--force", "--quiet"],
                                  stderr=subprocess.PIPE) for s in srcs]
        codes = [p.wait() for p in procs]
        from bmz import api

        final = api.decompress(target.read_bytes())
        candidates = [api.decompress(api.compress(np.load(s))) for s in srcs]
        matches = [i for i, c in enumerate(candidates) if np.array_equal(c, final)]
        leftovers = [p.name for p in d.iterdir() if p.name.startswith(".same.bmz")]
    cpu = platform.processor() or platform.machine()
    L = ["# Load: a 512×512×300 volume and concurrent writers", "",
         f"`python benchmarks/load.py --slices {args.slices} --size {args.size} --quality {args.quality}`; "
         f"{os.cpu_count()} CPU(s) ({cpu}), torch threads default; each row a fresh `bmz` process. "
         f"Volume: {shape[0]}×{shape[1]}×{shape[2]} {dtype} (IXI T1 slices resampled, 12-bit range), "
         f"{raw_mb:.0f} MB raw.", "",
         "| run | wall s | MB/s of raw | peak RSS MB | exit |", "|---|---|---|---|---|",
         f"| python + bmz + model loaded (baseline) | {base[0]:.1f} | – | {base[1]:.0f} | {base[2]} |",
         f"| `bmz encode big.nii.gz` (q{args.quality}) | {enc[0]:.1f} | {raw_mb / enc[0]:.2f} | {enc[1]:.0f} | {enc[2]} |",
         f"| `bmz decode big.bmz -o back.nii.gz` | {dec[0]:.1f} | {raw_mb / dec[0]:.2f} | {dec[1]:.0f} | {dec[2]} |",
         f"| `bmz decode big.bmz -o back.npy` | {dec_npy[0]:.1f} | {raw_mb / dec_npy[0]:.2f} | {dec_npy[1]:.0f} | {dec_npy[2]} |",
         "", f"Output: {size / 1e6:.2f} MB ({8 * size / (shape[0] * shape[1] * shape[2]):.3f} bpp). "
         "Peak RSS: the command's own maximum resident set (measured by a wrapper process).", "",
         f"Four processes encoding four different volumes to one path at once: exit codes {codes}; "
         f"the final file decodes to volume {matches} of the four "
         f"({'one complete file, as required' if len(matches) == 1 else 'NOT one complete file'}); "
         f"temporary files left: {leftovers or 'none'}.", ""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "load.md").write_text("\n".join(L))
    print("\n".join(L))
    return 0 if len(matches) == 1 and not leftovers else 1


if __name__ == "__main__":
    sys.exit(main())
