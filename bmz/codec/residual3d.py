"""The residual coder of chunk format 6: near-lossless and lossless coding of a slice with the
previous decoded slice of its group as context (docs/FORMAT.md §10.4).

It is the coder of :mod:`bmz.codec.residual` (raster order, a self-correcting blend of
sub-predictors with bias correction, an Elias-gamma binarisation of the quantised error, logistic
mixing of adaptive context models, LZMA's binary range coder; integer arithmetic only) with a
*reference* slice every voxel can see at any position:

* **no reference** (a slice coded alone, kind ``0x02`` without base layer);
* **the learned base layer** (kind ``0x02`` with base), as in format 3;
* **the previous slice** of the same volume, decoded (kind ``0x05``): its co-located voxel and
  its neighbours give six more sub-predictors (``P``, ``P`` + the W, N, mean, planar and W/NE
  inter-slice differences) and six more taps of the NLMS predictor (``P`` at the voxel and its four
  neighbours, and the previous slice's own prediction there); its *prediction error map* (the
  signed error, 1/8 units, the previous slice's coder made at every voxel) and the local match of
  the two slices (|W − P_W| + |N − P_N| + …) select the contexts of two more models and the bias
  correction. Inter slices have their own context tables, mixer weights and initial state.

Encoding or decoding a slice returns its reconstruction and its error map, which is what the next
slice of the group needs. The arithmetic is exact on every machine and thread count.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._residual_common import (
    D_SIGN, E_TAB, E_THRESH, LEV_TH, LMS_DX, LMS_DY, LMS_SHIFT, MAX_RANGE, N_DEC, N_K, N_LMS,
    N_PRED, N_PRED_PLAIN, RATES, STRETCH, _SQ_T, _base_predictions, _bk, _blend, _clamp12,
    _corrected, _energy, _features, _finish, _iabs, _plain_code, _rc_start, _refine_code_learn,
    _sgn3, _sign_contexts, _spatial, _squash, _squash_py, _texture, digest, encode_growing,
    load_tables, njit, stream_buffer, voxel_coder)

__all__ = ["encode", "decode", "CODER_ID", "MAX_RANGE"]

#: the reference a slice is coded with
REF_NONE, REF_BASE, REF_PREV = 0, 1, 2
#: context models mixed for every decision, and each one's context count per decision
N_MODELS = 5
CS = (192, 256, 80, 256, 256)
N_IN = N_MODELS + 1
#: two sets of everything: slices coded alone or on a base layer (0), slices with the previous
#: slice as reference (1)
N_SET = 2
N_MROW = N_SET * N_DEC * 16
N_MANT = N_K * N_K
_SET_SIZE = int(sum(N_DEC * c for c in CS)) + N_MANT
N_CNT = N_SET * _SET_SIZE
OFFS = np.array(list(np.cumsum((0,) + tuple(N_DEC * c for c in CS))[:N_MODELS])
                + [int(sum(N_DEC * c for c in CS))], dtype=np.int64)
CSA = np.array(CS, dtype=np.int64)
N_BIAS = 128 * 4
#: extra NLMS taps on the previous slice: P at (0,0), W, N, E, S, and its prediction there
N_LMS_P = 6
P_DY = np.array([0, 0, -1, 0, 1], dtype=np.int64)
P_DX = np.array([0, -1, 0, 1, 0], dtype=np.int64)
N_LMS_ALL = N_LMS + N_LMS_P


@njit(cache=True, inline="always")
def _mix_bit(mode, st, buf, C, M, ctx, row, bit, ST, SQ, xin, lr, A, arow):
    """Code one decision with the mix of the models' contexts ``ctx`` (mixer row ``row``,
    secondary-estimation row ``arow``)."""
    dot = 0
    for j in range(N_MODELS):
        a = ST[_clamp12(C[ctx[j], 0])]
        xin[j] = a
        dot += M[row, j] * a
    xin[N_MODELS] = 256
    dot += M[row, N_MODELS] * 256
    p12 = _squash(dot >> 16, SQ)
    # secondary estimation: P(1) as a function of the mixed p12, per decision and level
    bit = _refine_code_learn(mode, st, buf, p12, bit, ST, A, arow, M, row, xin, N_IN, lr)
    t = bit << 16
    for j in range(N_MODELS):
        c = ctx[j]
        n = C[c, 1]
        C[c, 0] += ((t - C[c, 0]) * RATES[1, n]) >> 16
        if n < 255:
            C[c, 1] = n + 1
    return bit


@njit(cache=True, inline="always")
def _plain_bit(mode, st, buf, C, c, bit):
    p = C[c, 0]
    bit = _plain_code(mode, st, buf, p, bit)
    n = C[c, 1]
    C[c, 0] += (((bit << 16) - C[c, 0]) * RATES[1, n]) >> 16
    if n < 255:
        C[c, 1] = n + 1
    return bit


#: a voxel's coding once its prediction and contexts are known, with this coder's mixer
_code_voxel = voxel_coder(_mix_bit, _plain_bit, N_MODELS)


@njit(cache=True, inline="always")
def _cl(v, n):
    return 0 if v < 0 else (n - 1 if v >= n else v)


@njit(cache=True, nogil=True, _nrt=False)
def _voxels(mode, x, ref, rkind, perr, eout, maxv, delta, buf, st, R, state, scratch, tabs, moff,
            stats):
    """The voxels of a slice, in raster order (see :func:`_code_slice`) → (bytes, status),
    status −1 when every voxel is coded. Allocates nothing, so it is compiled without numba's
    reference counting (``_nrt=False``): counting the arrays that the inlined steps hand each
    other took about 40 % of the coder's time."""
    C, M, A, lw, bsum, bcnt = state
    Q, E, F, pv, sc, ctx, cts, csg, xin, lu = scratch
    e_th, ST, SQ, lr = tabs
    H, W = x.shape
    s = 2 * delta + 1
    has_ref = rkind != 0
    inter = rkind == 2
    iset = 1 if inter else 0
    npred = E.shape[2]
    nl = N_LMS_ALL if inter else N_LMS
    collect = stats.shape[0] == N_CNT
    corner = ref[0, 0] if has_ref else (maxv + 1) // 2  # the first voxel's neighbours
    omant = iset * _SET_SIZE + OFFS[N_MODELS]
    row0 = iset * N_DEC * 16              # mixer and secondary-estimation rows of the set
    for y in range(H):
        for xx in range(W):
            # ---- causal neighbours (reconstructed), sub-predictions (1/8 units), NLMS
            Wv, Nv, NWv, NEv, WWv, NNv, c0, lnorm, lacc = _spatial(pv, R, y, xx, W, corner, lw,
                                                                   lu, s)
            b = 0
            pe = 0
            dm = 0
            if has_ref:
                b, rW, rN, rNW, rNE = _base_predictions(pv, ref, y, xx, W, Wv, Nv, NWv, NEv)
                if inter:
                    # previous slice: NLMS taps (clamped to the slice), error map, local match
                    for i in range(5):
                        u = 8 * ref[_cl(y + P_DY[i], H), _cl(xx + P_DX[i], W)] - c0
                        lu[N_LMS + i] = u
                        lnorm += u * u
                        lacc += lw[N_LMS + i] * u
                    e0 = perr[y, xx]
                    u = 8 * b - e0 - c0
                    lu[N_LMS + 5] = u
                    lnorm += u * u
                    lacc += lw[N_LMS + 5] * u
                    pe = (2 * _iabs(e0) + _iabs(perr[_cl(y - 1, H), xx])
                          + _iabs(perr[_cl(y + 1, H), xx]) + _iabs(perr[y, _cl(xx - 1, W)])
                          + _iabs(perr[y, _cl(xx + 1, W)]))
                    dm = _iabs(rW) + _iabs(rN) + _iabs(rNW) + _iabs(rNE)
            pv[8] = c0 + (lacc >> 12)
            # ---- the blend of the sub-predictions (weights ∝ 1 / error³)
            pb, smin = _blend(pv, sc, E, npred, y, xx, W, True)
            # ---- error energy, texture, bias correction
            en = _energy(F, y, xx, W)
            ke = _bk(en // s, e_th)
            pint = pb >> 3
            tex = _texture(pint, Nv, Wv, NWv, NEv, NNv, WWv)
            if inter and b > pint:
                tex |= 64
            kb = tex * 4 + (ke >> 2)
            corr, p8, pred = _corrected(pb, bsum, bcnt, kb, maxv)
            # ---- context features
            ka, lev, qW, qN, qNW, qNE = _features(ctx, Q, y, xx, W, pv, s, has_ref, b, p8,
                                                  pred, smin, ke, Nv, Wv, NWv, NEv, WWv, NNv, e_th)
            if inter:
                kp = _bk((5 * pe) // (6 * s), e_th)
                km = _bk(2 * dm // s, e_th)
                ctx[3] = ke * 16 + kp
                ctx[4] = km * 16 + kp
                row = _bk((en + (5 * pe) // 6) // (2 * s), e_th)
            else:
                kp = 0
                ctx[3] = ke * 4 + (lev >> 2)
                ctx[4] = ke * 16 + ka
                row = ke
            # ---- the sign's counters, then the voxel coded (zero flag, sign, magnitude)
            sf = _sgn3(p8 - 8 * pred)
            _sign_contexts(csg, moff, CSA, qW, qN, qNW, qNE, sf, corr, ke, lev)
            if inter:
                csg[4] = moff[4] + D_SIGN * CSA[4] + ((_sgn3(8 * b - p8) * 3
                                                      + _sgn3(perr[y, xx])) * 3 + sf) * 4 + (kp >> 2)
            else:
                csg[4] = moff[4] + D_SIGN * CSA[4] + (_sgn3(corr) * 3 + sf) * 16 + ke
            v, status = _code_voxel(mode, x, y, xx, pred, p8, pb, lnorm, kb, row, lev, delta, maxv,
                                    st, buf, R, state, scratch, tabs, moff, CSA, omant, row0, nl,
                                    collect, stats)
            if status:
                return st[4], status
            eout[y, xx] = 8 * v - p8
    return 0, -1


@njit(cache=True, nogil=True)
def _code_slice(mode, x, rec, ref, rkind, perr, eout, maxv, delta, buf, C, M, A, lw, bsum, bcnt,
                e_th, ST, SQ, lr, stats, mix_acc, apm_acc):
    """Encode (mode 0: ``x`` holds the slice, ``buf`` receives the bytes, ``rec`` the
    reconstruction) or decode (mode 1: ``buf`` holds the bytes, ``x`` receives the slice).
    ``ref``: the reference (``rkind`` 1: base layer, 2: previous slice; else unused), ``perr``:
    the previous slice's error map (``rkind`` 2). ``eout`` receives this slice's error map.
    Returns (bytes written / read, status): 0 ok, 1 buffer too small, 2 bound violated, 3 corrupt."""
    H, W = x.shape
    npred = N_PRED if rkind != 0 else N_PRED_PLAIN
    R = np.zeros((H, W), np.int64)
    # rows y − 1 and y (index y & 1) of the quantised errors, |8 R − p_i| and |8 R − prediction|;
    # the voxel's sub-predictions and blend weights, contexts, mixer inputs, NLMS inputs
    scratch = (np.zeros((2, W), np.int64), np.zeros((2, W, npred), np.int64),
               np.zeros((2, W), np.int64), np.zeros(N_PRED, np.int64), np.zeros(N_PRED, np.int64),
               np.zeros(N_MODELS, np.int64), np.zeros(N_MODELS, np.int64),
               np.zeros(N_MODELS, np.int64),
               np.zeros(N_IN, np.int64), np.zeros(N_LMS_ALL, np.int64))
    moff = OFFS[:N_MODELS] + (_SET_SIZE if rkind == 2 else 0)  # each model's table in the set
    st = _rc_start(mode, buf)
    n, status = _voxels(mode, x, ref, rkind, perr, eout, maxv, delta, buf, st, R,
                        (C, M, A, lw, bsum, bcnt), scratch, (e_th, ST, SQ, lr), moff, stats)
    if status >= 0:
        return n, status
    return _finish(mode, st, buf, rec, R, stats.shape[0] == N_CNT, M, A, mix_acc,
                   apm_acc)


def flat_tables():
    """Uninformed initial state → (PRIOR, PRIOR_MIX, PRIOR_APM, PRIOR_N0)."""
    prior = np.full(N_CNT, 32768, dtype=np.int64)
    mix = np.full((N_MROW, N_IN), 65536 // N_MODELS, dtype=np.int64)
    mix[:, -1] = 0
    apm = np.array([[_squash_py((j - 16) * 128) * 16 for j in range(33)]] * (N_SET * N_DEC * 16),
                   dtype=np.int64)
    return prior, mix, apm, 0


#: the initial state fitted on training MRI (``tools/fit_residual_prior.py --3d``): int64 arrays
#: ``prior``, ``mix``, ``apm`` and ``n0``, shipped as package data
TABLES_FILE = Path(__file__).with_name("residual3d_tables.npz")


def _fitted_tables():
    """The fitted initial state (:data:`TABLES_FILE`; :func:`load_tables`)."""
    return load_tables(TABLES_FILE, (N_CNT,), (N_MROW, N_IN), (N_SET * N_DEC * 16, 33))


PRIOR, PRIOR_MIX, PRIOR_APM, PRIOR_N0 = _fitted_tables()
LR = 2
_NO_STATS = np.zeros((0, 2), np.int64)
_NO_ACC = np.zeros((0, 0), np.int64)
_NONE = np.zeros((1, 1), np.int64)


class Context:
    """What a slice leaves to the next one of its group: its reconstruction ``rec`` (values − the
    volume minimum), its error map ``err`` (signed, 1/8 units) and the coder's adaptive state
    when it ended (counters, mixer, secondary estimation, NLMS weights, bias sums)."""

    __slots__ = ("rec", "err", "state")

    def __init__(self, rec, err, state):
        self.rec, self.err, self.state = rec, err, state


def fresh_state(tables=None) -> tuple:
    """The coder's state at the start of a slice coded alone: from the fitted initial tables,
    or from ``tables`` (``(prior, mix, apm, n0)``, as :func:`flat_tables` returns)."""
    prior, prior_mix, prior_apm, prior_n0 = tables or (PRIOR, PRIOR_MIX, PRIOR_APM, PRIOR_N0)
    C = np.empty((N_CNT, 2), np.int64)
    C[:, 0] = prior
    C[:, 1] = prior_n0
    return (C, np.array(prior_mix, np.int64), np.array(prior_apm, np.int64),
            np.zeros(N_LMS_ALL, np.int64), np.zeros(N_BIAS, np.int64), np.zeros(N_BIAS, np.int64))


def _setup(shape, base, prev, tables=None):
    """(reference, kind, previous error map, state to start from) of a slice."""
    if base is not None and prev is not None:
        raise ValueError("a slice has a base layer or a previous slice as reference, not both")
    if prev is not None:
        if prev.rec.shape != tuple(shape):
            raise ValueError("previous slice of another shape")
        return prev.rec, REF_PREV, prev.err, tuple(a.copy() for a in prev.state)
    if base is not None:
        return np.ascontiguousarray(base, dtype=np.int64), REF_BASE, _NONE, fresh_state(tables)
    return _NONE, REF_NONE, _NONE, fresh_state(tables)


def encode(x: np.ndarray, maxv: int, delta: int, base: np.ndarray | None = None,
           prev: Context | None = None, stats=None, mix_acc=None,
           apm_acc=None, tables=None) -> tuple[bytes, Context]:
    """Code slice ``x`` (integers in ``[0, maxv]``) with max error ``delta``, alone, on a learned
    base reconstruction ``base``, or after the previous slice of its group (``prev``, its
    :class:`Context`) → (bytes, this slice's context; ``.rec`` is the reconstruction).

    ``stats``, ``mix_acc``, ``apm_acc``: accumulators the fit of the initial state fills;
    ``tables``: ``(prior, mix, apm, n0)`` to start a slice coded alone from instead of the
    shipped ones (the fit codes with :func:`flat_tables`; a slice after ``prev`` starts from the
    state ``prev`` hands on)."""
    x = np.ascontiguousarray(x, dtype=np.int64)
    ref, kind, perr, state = _setup(x.shape, base, prev, tables)
    rec = np.zeros(x.shape, np.int64)
    err = np.zeros(x.shape, np.int64)
    acc = (_NO_STATS if stats is None else stats, _NO_ACC if mix_acc is None else mix_acc,
           _NO_ACC if apm_acc is None else apm_acc)
    st = []  # the state the last try ended with (every try starts from a copy of ``state``)

    def run(buf):
        st[:] = [a.copy() for a in state]
        return _code_slice(0, x, rec, ref, kind, perr, err, int(maxv), int(delta), buf, *st,
                           E_TAB, STRETCH, _SQ_T, LR, *acc)

    data = encode_growing(x.size, run)
    return data, Context(rec, err, tuple(st))


def decode(data: bytes, shape: tuple[int, int], maxv: int, delta: int,
           base: np.ndarray | None = None, prev: Context | None = None) -> Context:
    """Bytes of :func:`encode` → the slice's :class:`Context` (``.rec``: the reconstruction).
    ValueError when the stream cannot be decoded (the chunk's CRC catches streams that decode
    to wrong values)."""
    H, W = int(shape[0]), int(shape[1])
    x = np.zeros((H, W), np.int64)
    ref, kind, perr, st = _setup((H, W), base, prev)
    err = np.zeros((H, W), np.int64)
    buf = stream_buffer(data)
    n, status = _code_slice(1, x, x, ref, kind, perr, err, int(maxv), int(delta), buf, *st,
                            E_TAB, STRETCH, _SQ_T, LR, _NO_STATS, _NO_ACC, _NO_ACC)
    if status != 0:
        raise ValueError("residual stream cannot be decoded (corrupt)")
    return Context(x, err, st)


def _digest() -> str:
    """SHA-256 of the tables and constants (see :func:`bmz.codec.residual._digest`)."""
    return digest(PRIOR, PRIOR_MIX, PRIOR_APM, E_THRESH, LEV_TH, LMS_DY, LMS_DX, P_DY, P_DX,
                  RATES, STRETCH, np.array([N_K, N_MODELS, *CS, LR, PRIOR_N0, LMS_SHIFT,
                                            N_PRED_PLAIN, N_PRED, N_BIAS, N_LMS_P],
                                           dtype=np.int64))


#: name and version of this coder with its tables (metadata ``codec.residual`` of format 6)
CODER_ID = "nlmix3d1-" + _digest()[:12]
