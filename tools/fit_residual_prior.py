"""Fitting the residual coder's initial state on training MRI.

    python tools/fit_residual_prior.py TRAIN_FOLDER          # e.g. ../shared/data/train

Every slice is coded independently (random access), so the coder's adaptive probabilities and
mixing weights start from scratch on each slice; starting them from what MRI usually looks like
saves the bits they would otherwise spend learning it. The fit codes slices of the training
folder it is given at several δ without a base layer (coding from flat tables, never from a
previous fit), counts the zeros and ones coded in every context (initial P(1) = (n₁ + ½) / (n + 1),
16-bit) and averages the mixer and secondary estimation weights at the end of each slice. The
result is written, as int64 arrays, to ``bmz/codec/residual_tables.npz`` (package data); the
coder's name (``residual.CODER_ID``) includes their SHA-256, so files coded with other tables are
refused by name.

The training volumes are listed in :data:`TRAIN` (none of them is in ``val/``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bmz import io as bio  # noqa: E402
from bmz.codec import residual as R  # noqa: E402

#: (path under the training folder, slice step)
TRAIN = (
    ("ixi_nichart/t1/IXI013-HH-1212_T1.nii.gz", 6),
    ("ixi_nichart/t1/IXI033-HH-1259_T1.nii.gz", 6),
    ("ixi_nichart/t1/IXI039-HH-1261_T1.nii.gz", 6),
    ("niivue_demo_images/chris_t1.nii.gz", 12),
    ("niivue_demo_images/T1_head_ext2.nii.gz", 8),
    ("niivue_demos/FLAIR.nii.gz", 8),
    ("niivue_demo_images/M2208_T2w.nii.gz", 10),
    ("nichart_dicom_trio_b17/t1_MPRAGE", 4),
    ("dcm_qa_xa30/5_anat-T1w_acq-tfl", 1),
)
DELTAS = (0, 0, 1, 3)
OUT = R.TABLES_FILE


def fit(root: str | Path, verbose: bool = True) -> dict:
    flat = R.flat_tables()  # fit from flat tables, never from a previous fit
    stats = np.zeros((R.N_CNT, 2), np.int64)
    mix = np.zeros((R.N_MROW, R.N_IN), np.int64)
    apm = np.zeros((R.N_DEC * 16, 33), np.int64)
    n = 0
    for rel, step in TRAIN:
        vol = np.asarray(bio.read(Path(root) / rel).data)
        v = vol.astype(np.int64) - int(vol.min())
        maxv = int(v.max())
        for d in DELTAS:
            for k in range(step // 2, v.shape[0], step):
                if int(v[k].max()) - int(v[k].min()) <= 2 * d:
                    continue
                R.encode(v[k], maxv, d, stats=stats, mix_acc=mix, apm_acc=apm, tables=flat)
                n += 1
        if verbose:
            print(f"{rel}: {v.shape}, {n} slices so far", file=sys.stderr, flush=True)
    tot = stats.sum(1)
    prior = np.where(tot > 0, ((2 * stats[:, 1] + 1) * 65536) // (2 * tot + 2), 32768)
    return {"prior": np.clip(prior, 1024, 65536 - 1024).astype(np.int64),
            "mix": (mix // max(1, n)).astype(np.int64),
            "apm": np.clip(apm // max(1, n), 64, 65536 - 64).astype(np.int64),
            "n0": np.array([4], np.int64)}


def write(tables: dict, path: Path = OUT) -> None:
    np.savez_compressed(path, **{k: np.asarray(v, dtype="<i8") for k, v in tables.items()})


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tools/fit_residual_prior.py TRAIN_FOLDER  (e.g. ../shared/data/train)")
    write(fit(sys.argv[1]))
    print(f"wrote {OUT}", file=sys.stderr)
