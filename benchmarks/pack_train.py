"""Pack training volumes into one ``.npz`` (stored values − min as uint16, per-volume scale), so a
training run can travel to a machine that cannot see ``../shared/data`` (the GPU lease).

    python benchmarks/pack_train.py OUT.npz FOLDER [FOLDER ...] [--max-slices N]

Each volume keeps its content slices (as ``bmz.train.load_volumes`` selects them) and their
original slice positions, so inter-slice training can pick adjacent pairs. Volumes with more than
``--max-slices`` content slices keep a contiguous run of that many from the middle.
"""

from __future__ import annotations

import argparse
import logging

import numpy as np

from bmz import train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--max-slices", type=int, default=96)
    ap.add_argument("--ixi-max", type=int, default=12, help="IXI volumes kept at most")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    vols = train.load_volumes(a.folders)
    arrays, n_ixi = {}, 0
    for i, v in enumerate(vols):
        if "ixi" in v.name.lower():
            n_ixi += 1
            if n_ixi > a.ixi_max:
                continue
        s, pos = v.slices, v.positions
        if len(s) > a.max_slices:
            k0 = (len(s) - a.max_slices) // 2
            s, pos = s[k0:k0 + a.max_slices], pos[k0:k0 + a.max_slices]
        arrays[f"v{i}_data"] = np.rint(s * v.scale).astype(np.uint16)
        arrays[f"v{i}_meta"] = np.array([v.scale, v.bits], dtype=np.int64)
        arrays[f"v{i}_pos"] = pos.astype(np.int32)
        arrays[f"v{i}_name"] = np.array(v.name)
        print(v.name, s.shape, v.bits, v.scale)
    np.savez_compressed(a.out, **arrays)


if __name__ == "__main__":
    main()
