"""Fitting the residual coders' initial state on training MRI.

    python tools/fit_residual_prior.py TRAIN_FOLDER          # e.g. ../shared/data/train
    python tools/fit_residual_prior.py --3d TRAIN_FOLDER     # chunk format 6's coder (residual3d)

Every slice is coded independently (random access), so the coder's adaptive probabilities and
mixing weights start from scratch on each slice; starting them from what MRI usually looks like
saves the bits they would otherwise spend learning it. The fit codes slices of the training
folder it is given at several δ without a base layer (coding from flat tables, never from a
previous fit), counts the zeros and ones coded in every context (initial P(1) = (n₁ + ½) / (n + 1),
16-bit) and averages the mixer and secondary estimation weights at the end of each slice. The
result is written, as int64 arrays, to ``bmz/codec/residual_tables.npz`` (package data); the
coder's name (``residual.CODER_ID``) includes their SHA-256, so files coded with other tables are
refused by name.

The training volumes are listed in :data:`TRAIN` (none of them is in ``val/``). ``--3d`` fits
the coder of chunk format 6 (:mod:`bmz.codec.residual3d`, slice groups: :func:`fit3d`, on
:data:`TRAIN3D`) and writes ``bmz/codec/residual3d_tables.npz``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bmz import io as bio  # noqa: E402
from bmz.codec import residual as R  # noqa: E402
from bmz.codec import residual3d as R3  # noqa: E402

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
#: chunk format 6's fit adds native 16-bit 3-D (UIH) and GE cardiac cine series (none in ``val/``)
TRAIN3D = TRAIN + (
    ("dcm_qa_uih/t1_gre_fsp_3d_sag_A", 5),
    ("sunnybrook_cardiac/SCD0000101", 3),
    ("sunnybrook_cardiac/SCD0000301", 3),
)
DELTAS = (0, 0, 1, 3)
OUT = R.TABLES_FILE
OUT3D = R3.TABLES_FILE
#: slices coded after each sampled slice, with it as context, to fit chunk format 6's coder
RUN = 2


def _samples(root: str | Path, train) -> "Iterator[tuple[str, np.ndarray, int, int, int]]":
    """For each training volume of ``train`` and δ of :data:`DELTAS`, each sampled slice →
    (its path, the volume's values − min, their max, δ, the slice index)."""
    for rel, step in train:
        vol = np.asarray(bio.read(Path(root) / rel).data)
        v = vol.astype(np.int64) - int(vol.min())
        for d in DELTAS:
            for k in range(step // 2, v.shape[0], step):
                yield rel, v, int(v.max()), d, k


def _prior(stats: np.ndarray) -> np.ndarray:
    """The initial P(1) of every context from its counts of zeros and ones (16-bit)."""
    tot = stats.sum(1)
    prior = np.where(tot > 0, ((2 * stats[:, 1] + 1) * 65536) // (2 * tot + 2), 32768)
    return np.clip(prior, 1024, 65536 - 1024).astype(np.int64)


def fit(root: str | Path, verbose: bool = True) -> dict:
    flat = R.flat_tables()  # fit from flat tables, never from a previous fit
    stats = np.zeros((R.N_CNT, 2), np.int64)
    mix = np.zeros((R.N_MROW, R.N_IN), np.int64)
    apm = np.zeros((R.N_DEC * 16, 33), np.int64)
    n, last = 0, None
    for rel, v, maxv, d, k in _samples(root, TRAIN):
        if verbose and rel != last:
            print(f"{rel}: {v.shape}, {n} slices so far", file=sys.stderr, flush=True)
            last = rel
        if int(v[k].max()) - int(v[k].min()) <= 2 * d:
            continue
        R.encode(v[k], maxv, d, stats=stats, mix_acc=mix, apm_acc=apm, tables=flat)
        n += 1
    return {"prior": _prior(stats),
            "mix": (mix // max(1, n)).astype(np.int64),
            "apm": np.clip(apm // max(1, n), 64, 65536 - 64).astype(np.int64),
            "n0": np.array([4], np.int64)}


def fit3d(root: str | Path, verbose: bool = True) -> dict:
    """The initial state of chunk format 6's coder (:mod:`bmz.codec.residual3d`): as :func:`fit`,
    but each sampled slice is followed by :data:`RUN` slices coded with their predecessor as
    context (the state carried on), so the inter-slice tables are fitted too. The mixer and
    secondary-estimation weights of each set (alone / inter) are averaged over the slices that
    used that set."""
    flat = R3.flat_tables()  # fit from flat tables, never from a previous fit
    stats = np.zeros((R3.N_CNT, 2), np.int64)
    rows_m, rows_a = R3.N_MROW // R3.N_SET, flat[2].shape[0] // R3.N_SET
    mix = np.zeros((R3.N_MROW, R3.N_IN), np.int64)
    apm = np.zeros(flat[2].shape, np.int64)
    n = np.zeros(R3.N_SET, np.int64)
    last = None
    for rel, v, maxv, d, k in _samples(root, TRAIN3D):
        if verbose and rel != last:
            print(f"{rel}: {v.shape}, {n.tolist()} slices so far", file=sys.stderr, flush=True)
            last = rel
        prev = None
        for j in range(k, min(k + 1 + RUN, v.shape[0])):
            if int(v[j].max()) - int(v[j].min()) <= 2 * d:
                break
            _, ctx = R3.encode(v[j], maxv, d, prev=prev, stats=stats, tables=flat)
            i = 0 if prev is None else 1
            M, A = ctx.state[1], ctx.state[2]
            mix[i * rows_m:(i + 1) * rows_m] += M[i * rows_m:(i + 1) * rows_m]
            apm[i * rows_a:(i + 1) * rows_a] += A[i * rows_a:(i + 1) * rows_a]
            n[i] += 1
            prev = ctx
    for i in range(R3.N_SET):
        mix[i * rows_m:(i + 1) * rows_m] //= max(1, int(n[i]))
        apm[i * rows_a:(i + 1) * rows_a] //= max(1, int(n[i]))
    return {"prior": _prior(stats), "mix": mix,
            "apm": np.clip(apm, 64, 65536 - 64).astype(np.int64), "n0": np.array([4], np.int64)}


def write(tables: dict, path: Path = OUT) -> None:
    np.savez_compressed(path, **{k: np.asarray(v, dtype="<i8") for k, v in tables.items()})


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--3d"]
    if len(args) != 1:
        sys.exit("usage: python tools/fit_residual_prior.py [--3d] TRAIN_FOLDER  "
                 "(e.g. ../shared/data/train)")
    if "--3d" in sys.argv[1:]:
        write(fit3d(args[0]), OUT3D)
        print(f"wrote {OUT3D}", file=sys.stderr)
    else:
        write(fit(args[0]))
        print(f"wrote {OUT}", file=sys.stderr)
