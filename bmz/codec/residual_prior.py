"""Fitting the residual coders' initial state on training MRI (``python -m bmz.codec.residual_prior``
for chunk format 3's coder, ``… --3d`` for chunk format 6's).

Every slice is coded independently (random access), so the coder's adaptive probabilities and
mixing weights start from scratch on each slice; starting them from what MRI usually looks like
saves the bits they would otherwise spend learning it. The fit codes slices of
``../shared/data/train`` at several δ without a base layer, counts the zeros and ones coded in
every context (initial P(1) = (n₁ + ½) / (n + 1), 16-bit) and averages the mixer and secondary
estimation weights at the end of each slice. The result is written, as integers, to
``bmz/codec/_residual_tables.py``; the coder's name (``residual.CODER_ID``) includes their SHA-256,
so files coded with other tables are refused by name.

The training volumes are listed in :data:`TRAIN` (none of them is in ``val/``).
"""

from __future__ import annotations

import base64
import io
import sys
import zlib
from pathlib import Path

import numpy as np

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
OUT = Path(__file__).with_name("_residual_tables.py")


def fit(root: str | Path, verbose: bool = True) -> dict:
    from .. import io as bio
    from . import residual as R

    # fit from flat tables, never from a previous fit
    R.PRIOR, R.PRIOR_MIX, R.PRIOR_APM, R.PRIOR_N0 = R.flat_tables()
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
                R.encode(v[k], maxv, d, stats=stats, mix_acc=mix, apm_acc=apm)
                n += 1
        if verbose:
            print(f"{rel}: {v.shape}, {n} slices so far", file=sys.stderr, flush=True)
    tot = stats.sum(1)
    prior = np.where(tot > 0, ((2 * stats[:, 1] + 1) * 65536) // (2 * tot + 2), 32768)
    return {"prior": np.clip(prior, 1024, 65536 - 1024).astype(np.int64),
            "mix": (mix // max(1, n)).astype(np.int64),
            "apm": np.clip(apm // max(1, n), 64, 65536 - 64).astype(np.int64),
            "n0": np.array([4], np.int64)}


#: slices coded after each sampled slice, with it as context, to fit chunk format 6's coder
RUN = 2
OUT3D = Path(__file__).with_name("_residual3d_tables.py")


def fit3d(root: str | Path, verbose: bool = True) -> dict:
    """The initial state of chunk format 6's coder (:mod:`bmz.codec.residual3d`): as :func:`fit`,
    but each sampled slice is followed by :data:`RUN` slices coded with their predecessor as
    context (the state carried on), so the inter-slice tables are fitted too. The mixer and
    secondary-estimation weights of each set (alone / inter) are averaged over the slices that
    used that set."""
    from .. import io as bio
    from . import residual3d as R

    R.PRIOR, R.PRIOR_MIX, R.PRIOR_APM, R.PRIOR_N0 = R.flat_tables()
    stats = np.zeros((R.N_CNT, 2), np.int64)
    rows_m, rows_a = R.N_MROW // R.N_SET, R.PRIOR_APM.shape[0] // R.N_SET
    mix = np.zeros((R.N_MROW, R.N_IN), np.int64)
    apm = np.zeros(R.PRIOR_APM.shape, np.int64)
    n = np.zeros(R.N_SET, np.int64)
    for rel, step in TRAIN3D:
        vol = np.asarray(bio.read(Path(root) / rel).data)
        v = vol.astype(np.int64) - int(vol.min())
        maxv = int(v.max())
        for d in DELTAS:
            for k in range(step // 2, v.shape[0], step):
                prev = None
                for j in range(k, min(k + 1 + RUN, v.shape[0])):
                    if int(v[j].max()) - int(v[j].min()) <= 2 * d:
                        break
                    _, ctx = R.encode(v[j], maxv, d, prev=prev, stats=stats)
                    i = 0 if prev is None else 1
                    M, A = ctx.state[1], ctx.state[2]
                    mix[i * rows_m:(i + 1) * rows_m] += M[i * rows_m:(i + 1) * rows_m]
                    apm[i * rows_a:(i + 1) * rows_a] += A[i * rows_a:(i + 1) * rows_a]
                    n[i] += 1
                    prev = ctx
        if verbose:
            print(f"{rel}: {v.shape}, {n.tolist()} slices so far", file=sys.stderr, flush=True)
    tot = stats.sum(1)
    prior = np.where(tot > 0, ((2 * stats[:, 1] + 1) * 65536) // (2 * tot + 2), 32768)
    for i in range(R.N_SET):
        mix[i * rows_m:(i + 1) * rows_m] //= max(1, int(n[i]))
        apm[i * rows_a:(i + 1) * rows_a] //= max(1, int(n[i]))
    return {"prior": np.clip(prior, 1024, 65536 - 1024).astype(np.int64), "mix": mix,
            "apm": np.clip(apm, 64, 65536 - 64).astype(np.int64), "n0": np.array([4], np.int64)}


def write(tables: dict, path: Path = OUT) -> None:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v, dtype="<i8") for k, v in tables.items()})
    text = base64.b64encode(zlib.compress(buf.getvalue(), 9)).decode()
    lines = [text[i:i + 96] for i in range(0, len(text), 96)]
    path.write_text('"""Initial state of the residual coder, fitted by ``python -m '
                    'bmz.codec.residual_prior`` (generated; do not edit)."""\n\nDATA = (\n'
                    + "".join(f'    "{ln}"\n' for ln in lines) + ")\n")


def load(data: str) -> dict:
    raw = zlib.decompress(base64.b64decode(data))
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        return {k: z[k].astype(np.int64) for k in z.files}


if __name__ == "__main__":
    # python -m bmz.codec.residual_prior [--3d] [TRAIN_ROOT]: format 3's tables, or format 6's
    args = [a for a in sys.argv[1:] if a != "--3d"]
    root = args[0] if args else str(Path(__file__).resolve().parents[3] / "shared" / "data" / "train")
    if "--3d" in sys.argv[1:]:
        write(fit3d(root), OUT3D)
        print(f"wrote {OUT3D}", file=sys.stderr)
    else:
        write(fit(root))
        print(f"wrote {OUT}", file=sys.stderr)
