"""Near-lossless and lossless coding of a slice: |decoded − original| ≤ δ on every voxel (δ = 0:
every bit), optionally on top of a learned base layer.

The coder visits the voxels in raster order. For each it forms a prediction from what the
decoder already has — the *reconstructed* causal neighbours (W, N, NW, NE, WW, NN) and, when the
slice has a learned base layer, the base reconstruction ``b`` everywhere in the slice (decoded
first, bit-exactly) — codes the prediction error quantised with step ``2δ + 1`` with an adaptive
binary range coder, and reconstructs the voxel exactly as the decoder will.

* **Prediction** (1/8 units): a blend of sub-predictors (plane, W, N, MED, W+NE−N, …; with a
  base: ``b``, ``b`` plus each causal neighbour's residual, ``b`` plus the planar residual)
  weighted by the inverse square of each one's recent error at the causal neighbours (the
  self-correcting blend of TMW / GLICBAWLS / JPEG XL's weighted predictor), then a bias
  correction per texture context (CALIC).
* **Context modelling**: the quantised error is binarised as a zero flag, a sign and an Elias
  gamma magnitude (unary exponent, mantissa bits). Each decision's probability is a logistic mix
  (PAQ-style, integer) of four adaptive context models — error energy × base disagreement ×
  neighbours' zeros; texture activity × intensity level; best-predictor error × non-zero count;
  energy alone — each an integer estimator pair (fast and slow). Initial states come from
  :data:`PRIOR` / :data:`PRIOR_MIX` (fitted on training MRI; flat when absent).
* **Range coder**: LZMA's binary range coder (32-bit range, carry propagation), 16-bit
  probabilities.

Every step is integer arithmetic on int64 (explicit floors and shifts; the squash / stretch
tables are built from integers), so encoder and decoder compute the identical prediction and
probability for every decision on every machine and thread count. The encoder runs the decoder's
reconstruction, so the bound is checked on exactly the values the decoder will produce.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._residual_common import (  # noqa: F401 (re-exported: the coder's constants and tables)
    E_TAB, E_THRESH, LEV_TH, LMS_DX, LMS_DY, LMS_SHIFT, MAX_RANGE, N_DEC, N_K, N_LMS, N_PRED,
    N_PRED_BASE, N_PRED_PLAIN, RATES, STRETCH, _SQ_T, _base_predictions, _bk, _blend, _clamp12,
    _corrected, _energy, _features, _finish, _plain_code, _rc_start, _refine_code_learn, _sgn3,
    _sign_contexts, _spatial, _squash, _squash_py, _texture, digest, encode_growing, load_tables,
    njit, stream_buffer, voxel_coder)

#: context models mixed for every decision and the size of each one's context
N_MODELS = 4
CS = (192, 256, 80, 64)
N_IN = 2 * N_MODELS + 1       # a fast and a slow estimate per model, and a bias input
N_MROW = N_DEC * 16           # mixer weight sets: decision × energy bucket
N_MANT = N_K * N_K            # plain adaptive contexts of the lower mantissa bits
#: offset of each model's table in the counter array
_OFF = np.cumsum((0,) + tuple(N_DEC * c for c in CS))
N_CNT = int(_OFF[-1]) + N_MANT
N_BIAS = 64 * 4


@njit(cache=True, inline="always")
def _update(C, c, bit):
    n = C[c, 2]
    t = bit << 16
    C[c, 0] += ((t - C[c, 0]) * RATES[0, n]) >> 16
    C[c, 1] += ((t - C[c, 1]) * RATES[1, n]) >> 16
    if n < 255:
        C[c, 2] = n + 1


@njit(cache=True, inline="always")
def _mix_bit(mode, st, buf, C, M, ctx, row, bit, ST, SQ, xin, lr, A, arow):
    """Code one decision with the mix of the four models' contexts ``ctx`` (mixer row ``row``,
    secondary-estimation row ``arow``)."""
    dot = 0
    for j in range(N_MODELS):
        c = ctx[j]
        a = ST[_clamp12(C[c, 0])]
        b = ST[_clamp12(C[c, 1])]
        xin[2 * j] = a
        xin[2 * j + 1] = b
        dot += M[row, 2 * j] * a + M[row, 2 * j + 1] * b
    xin[2 * N_MODELS] = 256
    dot += M[row, 2 * N_MODELS] * 256
    p12 = _squash(dot >> 16, SQ)
    # secondary estimation: P(1) as a function of the mixed p12, per decision and level
    bit = _refine_code_learn(mode, st, buf, p12, bit, ST, A, arow, M, row, xin, N_IN, lr)
    for j in range(N_MODELS):
        _update(C, ctx[j], bit)
    return bit


@njit(cache=True, inline="always")
def _plain_bit(mode, st, buf, C, c, bit):
    p = (C[c, 0] + C[c, 1]) >> 1
    bit = _plain_code(mode, st, buf, p, bit)
    _update(C, c, bit)
    return bit


#: a voxel's coding once its prediction and contexts are known, with this coder's mixer
_code_voxel = voxel_coder(_mix_bit, _plain_bit, N_MODELS)


@njit(cache=True, inline="always")
def _initial_state(prior, prior_mix, prior_apm, n0):
    """The adaptive state a slice starts from: bit counts ``C``, mixer weights ``M``, APM ``A``."""
    C = np.empty((N_CNT, 3), np.int64)
    for c in range(N_CNT):
        C[c, 0] = prior[c]
        C[c, 1] = prior[c]
        C[c, 2] = n0
    M = np.empty((N_MROW, N_IN), np.int64)
    for r in range(N_MROW):
        for i in range(N_IN):
            M[r, i] = prior_mix[r, i]
    A = np.empty((N_DEC * 16, 33), np.int64)
    for r in range(N_DEC * 16):
        for j in range(33):
            A[r, j] = prior_apm[r, j]
    return C, M, A


@njit(cache=True, nogil=True, _nrt=False)
def _voxels(mode, x, base, has_base, maxv, delta, buf, st, R, state, scratch, tabs, stats):
    """The voxels of a slice, in raster order (see :func:`_code_slice`) → (bytes, status),
    status −1 when every voxel is coded. Allocates nothing, so it is compiled without numba's
    reference counting (``_nrt=False``; see :func:`bmz.codec.residual3d._voxels`)."""
    C, M, A, lw, bsum, bcnt = state
    Q, E, F, pv, sc, ctx, cts, csg, xin, lu = scratch
    e_th, ST, SQ, lr = tabs
    H, W = x.shape
    s = 2 * delta + 1
    npred = E.shape[2]
    collect = stats.shape[0] == N_CNT
    corner = base[0, 0] if has_base else (maxv + 1) // 2  # the first voxel's neighbours
    omant = _OFF_NB[N_MODELS]
    for y in range(H):
        for xx in range(W):
            # ---- causal neighbours (reconstructed), sub-predictions (1/8 units), NLMS
            Wv, Nv, NWv, NEv, WWv, NNv, c0, lnorm, lacc = _spatial(pv, R, y, xx, W, corner, lw,
                                                                   lu, s)
            pv[8] = c0 + (lacc >> 12)
            if has_base:
                _base_predictions(pv, base, y, xx, W, Wv, Nv, NWv, NEv)
            # ---- the blend of the sub-predictions; error energy, texture, bias correction
            pb, smin = _blend(pv, sc, E, npred, y, xx, W, False)
            ke = _bk(_energy(F, y, xx, W) // s, e_th)
            kb = _texture(pb >> 3, Nv, Wv, NWv, NEv, NNv, WWv) * 4 + (ke >> 2)
            corr, p8, pred = _corrected(pb, bsum, bcnt, kb, maxv)
            # ---- context features
            b = base[y, xx] if has_base else 0
            ka, lev, qW, qN, qNW, qNE = _features(ctx, Q, y, xx, W, pv, s, has_base, b, p8,
                                                  pred, smin, ke, Nv, Wv, NWv, NEv, WWv, NNv, e_th)
            ctx[3] = ke * 4 + (lev >> 2)
            # ---- the sign's counters, then the voxel coded (zero flag, sign, magnitude)
            _sign_contexts(csg, OFFS, CSA, qW, qN, qNW, qNE, _sgn3(p8 - 8 * pred), corr, ke, lev)
            v, status = _code_voxel(mode, x, y, xx, pred, p8, pb, lnorm, kb, ke, lev, delta, maxv,
                                    st, buf, R, state, scratch, tabs, OFFS, CSA, omant, 0, N_LMS,
                                    collect, stats)
            if status:
                return st[4], status
    return 0, -1


@njit(cache=True, nogil=True)
def _code_slice(mode, x, rec, base, has_base, maxv, delta, buf, prior, prior_mix, prior_apm, e_th, ST,
                SQ, lr, n0, stats, mix_acc, apm_acc):
    """Encode (mode 0: ``x`` holds the slice, ``buf`` receives the bytes) or decode (mode 1:
    ``buf`` holds the bytes, ``x`` receives the slice). Returns (bytes written / read, status):
    0 ok, 1 buffer too small (encode), 2 bound violated (encode; cannot happen), 3 corrupt.

    ``stats`` (N_CNT, 2) int64, when it has rows, accumulates the count of zeros and ones coded in
    every context (to fit :data:`PRIOR`)."""
    H, W = x.shape
    npred = N_PRED if has_base else N_PRED_PLAIN
    R = np.zeros((H, W), np.int64)           # reconstruction
    C, M, A = _initial_state(prior, prior_mix, prior_apm, n0)
    # NLMS weights (2^-12 units), bias sums and counts
    state = (C, M, A, np.zeros(N_LMS, np.int64), np.zeros(N_BIAS, np.int64),
             np.zeros(N_BIAS, np.int64))
    # rows y − 1 and y (index y & 1) of the quantised errors, |8 R − p_i| and |8 R − prediction|;
    # the voxel's sub-predictions and blend weights, contexts, mixer inputs, NLMS inputs
    scratch = (np.zeros((2, W), np.int64), np.zeros((2, W, npred), np.int64),
               np.zeros((2, W), np.int64), np.zeros(N_PRED, np.int64), np.zeros(N_PRED, np.int64),
               np.zeros(N_MODELS, np.int64), np.zeros(N_MODELS, np.int64),
               np.zeros(N_MODELS, np.int64),
               np.zeros(N_IN, np.int64), np.zeros(N_LMS, np.int64))
    st = _rc_start(mode, buf)
    n, status = _voxels(mode, x, base, has_base, maxv, delta, buf, st, R, state, scratch,
                        (e_th, ST, SQ, lr), stats)
    if status >= 0:
        return n, status
    return _finish(mode, st, buf, rec, R, stats.shape[0] == N_CNT, M, A, mix_acc,
                   apm_acc)


_OFF_NB = np.array(list(_OFF[:N_MODELS]) + [int(_OFF[-1])], dtype=np.int64)
OFFS = _OFF_NB
CSA = np.array(CS, dtype=np.int64)

def flat_tables():
    """Uninformed initial state: P(1) = ½ everywhere, equal mixer weights, identity secondary
    estimation, no confidence → (PRIOR, PRIOR_MIX, PRIOR_APM, PRIOR_N0)."""
    prior = np.full(N_CNT, 32768, dtype=np.int64)
    mix = np.full((N_MROW, N_IN), 65536 // (2 * N_MODELS), dtype=np.int64)
    mix[:, -1] = 0
    apm = np.array([[_squash_py((j - 16) * 128) * 16 for j in range(33)]] * (N_DEC * 16),
                   dtype=np.int64)
    return prior, mix, apm, 0


#: the initial state fitted on training MRI (``tools/fit_residual_prior.py``): int64 arrays
#: ``prior``, ``mix``, ``apm`` and ``n0``, shipped as package data
TABLES_FILE = Path(__file__).with_name("residual_tables.npz")


def _fitted_tables():
    """The fitted initial state (:data:`TABLES_FILE`; :func:`load_tables`)."""
    return load_tables(TABLES_FILE, (N_CNT,), (N_MROW, N_IN), (N_DEC * 16, 33))


#: initial P(1) of every context (16-bit), mixer weights (16.16), secondary estimation, and the
#: count the initial probabilities are worth
PRIOR, PRIOR_MIX, PRIOR_APM, PRIOR_N0 = _fitted_tables()
LR = 2
_NO_STATS = np.zeros((0, 2), np.int64)
_NO_ACC = np.zeros((0, 0), np.int64)


def _args(stats=None, mix_acc=None, apm_acc=None, tables=None):
    prior, prior_mix, prior_apm, prior_n0 = tables or (PRIOR, PRIOR_MIX, PRIOR_APM, PRIOR_N0)
    return (prior, prior_mix, prior_apm, E_TAB, STRETCH, _SQ_T, LR, prior_n0,
            _NO_STATS if stats is None else stats, _NO_ACC if mix_acc is None else mix_acc,
            _NO_ACC if apm_acc is None else apm_acc)


def encode(x: np.ndarray, maxv: int, delta: int, base: np.ndarray | None = None,
           stats=None, mix_acc=None, apm_acc=None, tables=None) -> tuple[bytes, np.ndarray]:
    """Code slice ``x`` (integers in ``[0, maxv]``) with max error ``delta`` (optionally on the
    base reconstruction ``base``, same shape) → (bytes, the decoder's reconstruction, int64).
    Raises RuntimeError if the reconstruction breaks the bound (an internal error).

    ``stats``, ``mix_acc``, ``apm_acc``: accumulators the fit of the initial state fills;
    ``tables``: ``(prior, mix, apm, n0)`` to code with instead of the shipped ones (the fit codes
    with :func:`flat_tables`)."""
    x = np.ascontiguousarray(x, dtype=np.int64)
    has_base = base is not None
    b = np.ascontiguousarray(base, dtype=np.int64) if has_base else np.zeros((1, 1), np.int64)
    rec = np.zeros(x.shape, np.int64)
    args = _args(stats, mix_acc, apm_acc, tables)
    data = encode_growing(x.size, lambda buf: _code_slice(0, x, rec, b, has_base, int(maxv),
                                                          int(delta), buf, *args))
    return data, rec


def decode(data: bytes, shape: tuple[int, int], maxv: int, delta: int,
           base: np.ndarray | None = None) -> np.ndarray:
    """Bytes of :func:`encode` → the reconstruction (int64). Raises ValueError when the stream
    cannot be decoded (a damaged or forged stream may also decode to wrong values: the chunk's
    CRC of the reconstruction catches those)."""
    H, W = int(shape[0]), int(shape[1])
    x = np.zeros((H, W), np.int64)
    has_base = base is not None
    b = np.ascontiguousarray(base, dtype=np.int64) if has_base else np.zeros((1, 1), np.int64)
    buf = stream_buffer(data)
    n, status = _code_slice(1, x, x, b, has_base, int(maxv), int(delta), buf, *_args())
    if status != 0:
        raise ValueError("residual stream cannot be decoded (corrupt)")
    return x


def _digest() -> str:
    """SHA-256 of everything that steers the coder's decisions besides its code: the prior
    tables and the constants. Part of :data:`CODER_ID`, so a file coded with other tables is
    refused by name instead of failing its CRC."""
    return digest(PRIOR, PRIOR_MIX, PRIOR_APM, E_THRESH, LEV_TH, LMS_DY, LMS_DX, RATES, STRETCH,
                  np.array([N_K, N_MODELS, *CS, LR, PRIOR_N0, LMS_SHIFT, N_PRED_PLAIN,
                            N_PRED_BASE, N_BIAS], dtype=np.int64))


#: name and version of the residual coder with its tables (metadata ``codec.residual``)
CODER_ID = "nlmix1-" + _digest()[:12]
