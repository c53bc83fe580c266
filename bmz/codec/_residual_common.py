"""Arithmetic the two residual coders share, each piece once: :mod:`bmz.codec.residual` (chunk
format 3, docs/FORMAT.md §10.6) and :mod:`bmz.codec.residual3d` (chunk format 6) — the constants
of the binarisation and of the NLMS predictor, the squash / stretch tables, LZMA's binary range
coder, the causal neighbours and the sub-predictions, the blend, and the steps of coding one
voxel. Integer arithmetic on int64 only; numba-compiled and inlined into each coder's
``_code_slice`` (plain Python where numba is missing).
"""

from __future__ import annotations

import hashlib

from pathlib import Path

import numpy as np

try:
    from numba import njit
except ImportError:  # pragma: no cover - numba is a dependency; fall back to (slow) Python
    def njit(*a, **k):
        if a and callable(a[0]):
            return a[0]
        return lambda f: f

#: largest value range the coder handles (values 0 … 65535)
MAX_RANGE = 65535

N_PRED_PLAIN = 9
N_PRED_BASE = 6
N_LMS = 18                    # causal taps of the NLMS sub-predictor
LMS_DY = np.array([0, -1, -1, -1, 0, -2, -1, -2, -2, -1, -2, -2, 0, -3, -1, -3, -3, -1],
                  dtype=np.int64)
LMS_DX = np.array([-1, 0, -1, 1, -2, 0, -2, -1, 1, 2, -2, 2, -3, 0, -3, -1, 1, 3],
                  dtype=np.int64)
LMS_SHIFT = 9
LMS_WMAX = 1 << 20
N_PRED = N_PRED_PLAIN + N_PRED_BASE

# ---- binary decisions -----------------------------------------------------------------------
N_K = 18                      # Elias-gamma exponents 0..17 (magnitudes up to 2^18 − 1)
D_ZERO = 0
D_SIGN = 1
D_UNARY = 2                   # + k
D_MTOP = D_UNARY + N_K        # + k: first mantissa bit of exponent k
N_DEC = D_MTOP + N_K

#: intensity-level buckets of the prediction (stored units): background noise is coded apart
LEV_TH = np.array([1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 64, 128, 512], dtype=np.int64)
#: energy bucket thresholds (errors summed over 5 neighbour weights, 1/8 units, per step)
E_THRESH = np.array([2, 5, 9, 14, 20, 28, 40, 56, 80, 112, 160, 224, 320, 480, 800],
                    dtype=np.int64)

# ---- logistic mixing tables (PAQ's, built from integers) -------------------------------------
_SQ_T = np.array([1, 2, 3, 6, 10, 16, 27, 45, 73, 120, 194, 310, 488, 747, 1101, 1546, 2047,
                  2549, 2994, 3348, 3607, 3785, 3901, 3975, 4022, 4050, 4068, 4079, 4085, 4089,
                  4092, 4093, 4094], dtype=np.int64)


def _squash_py(d: int) -> int:
    d = max(-2047, min(2047, d))
    w = d & 127
    i = (d >> 7) + 16
    return (int(_SQ_T[i]) * (128 - w) + int(_SQ_T[i + 1]) * w + 64) >> 7


def _stretch_table() -> np.ndarray:
    t = np.zeros(4096, dtype=np.int64)
    pi = 0
    for x in range(-2047, 2048):
        v = _squash_py(x)
        for j in range(pi, v + 1):
            t[j] = x
        pi = v + 1
    t[pi:] = 2047
    return t


STRETCH = _stretch_table()


@njit(cache=True, inline="always")
def _squash(d, T):
    if d > 2047:
        d = 2047
    elif d < -2047:
        d = -2047
    w = d & 127
    i = (d >> 7) + 16
    return (T[i] * (128 - w) + T[i + 1] * w + 64) >> 7


def _bucket_table(th: np.ndarray) -> np.ndarray:
    """v → the number of thresholds ≤ v, for 0 ≤ v ≤ the largest threshold (and the last bucket
    above it): a look-up instead of a search."""
    return np.array([int(np.sum(th <= v)) for v in range(int(th[-1]) + 1)], dtype=np.int64)


#: bucket look-ups of :data:`E_THRESH` and :data:`LEV_TH`
E_TAB = _bucket_table(E_THRESH)
LEV_TAB = _bucket_table(LEV_TH)


@njit(cache=True, inline="always")
def _bk(v, tab):
    """Bucket of ``v`` ≥ 0 by a table of :func:`_bucket_table`."""
    n = tab.shape[0]
    return tab[v] if v < n else tab[n - 1]


# ---- range coder (LZMA's) -------------------------------------------------------------------
# st: 0 low, 1 range, 2 cache, 3 cache size, 4 position, 5 code (decoder), 6 overflow flag

@njit(cache=True, inline="always")
def _put(st, buf, b):
    p = st[4]
    if p < buf.shape[0]:
        buf[p] = b
    else:
        st[6] = 1
    st[4] = p + 1


@njit(cache=True, inline="always")
def _shift_low(st, buf):
    low = st[0]
    if (low & 0xFFFFFFFF) < 0xFF000000 or (low >> 32) != 0:
        carry = low >> 32
        temp = st[2]
        while True:
            _put(st, buf, (temp + carry) & 0xFF)
            temp = 0xFF
            st[3] -= 1
            if st[3] == 0:
                break
        st[2] = (low >> 24) & 0xFF
    st[3] += 1
    st[0] = (low & 0x00FFFFFF) << 8


@njit(cache=True, inline="always")
def _get(st, buf):
    p = st[4]
    st[4] = p + 1
    if p < buf.shape[0]:
        return np.int64(buf[p])
    return np.int64(0)


@njit(cache=True, inline="always")
def _code_bit(mode, st, buf, p1, bit):
    """Encode ``bit`` (mode 0) or decode one (mode 1); P(1) = p1 / 65536."""
    bound = (st[1] >> 16) * (65536 - p1)
    if mode == 0:
        if bit == 0:
            st[1] = bound
        else:
            st[0] += bound
            st[1] -= bound
        while st[1] < 0x1000000:
            st[1] <<= 8
            _shift_low(st, buf)
        return bit
    if st[5] < bound:
        st[1] = bound
        bit = 0
    else:
        st[5] -= bound
        st[1] -= bound
        bit = 1
    while st[1] < 0x1000000:
        st[1] <<= 8
        st[5] = ((st[5] << 8) | _get(st, buf)) & 0xFFFFFFFF
    return bit


# ---- adaptive probabilities and mixing ------------------------------------------------------
# C: (N_CNT, 3) int64: fast and slow estimates of P(1) (16-bit), count

#: adaptation rate after n observations, 16-bit: 1 / (n + 1.5), floored at 1/16 (fast) and at
#: 1/RATE_SLOW (slow)
RATE_FAST = 16
RATE_SLOW = 128
RATES = np.array([[max(65536 * 2 // (2 * n + 3), 65536 // r) for n in range(256)]
                  for r in (RATE_FAST, RATE_SLOW)], dtype=np.int64)

@njit(cache=True, inline="always")
def _clamp12(p):
    p = p >> 4
    if p < 1:
        return 1
    if p > 4094:
        return 4094
    return p


@njit(cache=True, inline="always")
def _refine_code_learn(mode, st, buf, p12, bit, ST, A, arow, M, row, xin, n_in, lr):
    """The rest of a mixed decision, given the mix's 12-bit P(1) ``p12``: P(1) refined by
    secondary estimation (row ``arow`` of ``A``, interpolated on the stretched ``p12``), the
    decision coded with it, the estimation and the mixer's row ``row`` (inputs ``xin[:n_in]``,
    learning rate ``lr``) updated → the bit."""
    sv = ST[p12] + 2047
    lo = sv >> 7
    w = sv & 127
    pa = (A[arow, lo] * (128 - w) + A[arow, lo + 1] * w) >> 7
    p16 = (p12 * 16 + 3 * pa) >> 2
    if p16 < 32:
        p16 = 32
    elif p16 > 65504:
        p16 = 65504
    bit = _code_bit(mode, st, buf, p16, bit)
    ai = lo + (w >> 6)
    A[arow, ai] += ((bit << 16) - A[arow, ai]) >> 6
    err = ((bit << 12) - p12) * lr
    for i in range(n_in):
        M[row, i] += (xin[i] * err) >> 14
    return bit


@njit(cache=True, inline="always")
def _plain_code(mode, st, buf, p, bit):
    """A decision on a plain context: P(1) = ``p`` / 65536 kept within [48, 65488]."""
    if p < 48:
        p = 48
    elif p > 65536 - 48:
        p = 65536 - 48
    return _code_bit(mode, st, buf, p, bit)


@njit(cache=True, inline="always")
def _med(a, b, c):
    mx = a if a > b else b
    mn = a if a < b else b
    if c >= mx:
        return mn
    if c <= mn:
        return mx
    return a + b - c


@njit(cache=True, inline="always")
def _iabs(v):
    return v if v >= 0 else -v


@njit(cache=True, inline="always")
def _sgn3(v):
    return 0 if v == 0 else (1 if v > 0 else 2)


@njit(cache=True, inline="always")
def _causal(R, y, x, W, corner):
    """The reconstructed causal neighbours of voxel (y, x) of ``R`` — W, N, NW, NE, WW, NN —
    with the edge fallbacks of both residual coders (``corner`` at the slice's first voxel)."""
    if y > 0 and x > 0:
        Wv = R[y, x - 1]
        Nv = R[y - 1, x]
        NWv = R[y - 1, x - 1]
    elif y > 0:
        Nv = R[y - 1, x]
        Wv = Nv
        NWv = Nv
    elif x > 0:
        Wv = R[y, x - 1]
        Nv = Wv
        NWv = Wv
    else:
        Wv = corner
        Nv = Wv
        NWv = Wv
    NEv = R[y - 1, x + 1] if (y > 0 and x + 1 < W) else Nv
    WWv = R[y, x - 2] if x > 1 else Wv
    NNv = R[y - 2, x] if y > 1 else Nv
    return Wv, Nv, NWv, NEv, WWv, NNv


@njit(cache=True, inline="always")
def _spatial_predictions(pv, Wv, Nv, NWv, NEv, WWv, NNv):
    """Sub-predictions 0–7 (1/8 units) from the causal neighbours."""
    pv[0] = 8 * (Nv + Wv - NWv)
    pv[1] = 8 * Wv
    pv[2] = 8 * Nv
    pv[3] = 8 * _med(Wv, Nv, NWv)
    pv[4] = 8 * (Wv + NEv - Nv)
    pv[5] = 4 * (Wv + NEv)
    pv[6] = 8 * Nv + 4 * (Nv - NNv)
    pv[7] = 8 * Wv + 4 * (Wv - WWv)


@njit(cache=True, inline="always")
def _nlms_spatial(R, y, x, W, lw, lu, c0, s):
    """The NLMS taps on the 18 causal neighbours (0 outside the slice), centred on ``c0``, into
    ``lu`` → (the taps' norm with its floor ``64 s²``, the weighted sum in 2^-12 units)."""
    lnorm = 64 * s * s
    lacc = 0
    if y >= 3 and x >= 3 and x + 3 < W:  # interior: every tap inside
        for i in range(N_LMS):
            u = 8 * R[y + LMS_DY[i], x + LMS_DX[i]] - c0
            lu[i] = u
            lnorm += u * u
            lacc += lw[i] * u
    else:
        for i in range(N_LMS):
            yy = y + LMS_DY[i]
            xq = x + LMS_DX[i]
            if yy < 0 or xq < 0 or xq >= W:
                u = 0
            else:
                u = 8 * R[yy, xq] - c0
            lu[i] = u
            lnorm += u * u
            lacc += lw[i] * u
    return lnorm, lacc


@njit(cache=True, inline="always")
def _spatial(pv, R, y, x, W, corner, lw, lu, s):
    """Everything voxel (y, x) gets from the reconstructed slice ``R``: sub-predictions 0–7
    into ``pv``, the NLMS taps into ``lu`` → (W, N, NW, NE, WW, NN, the taps' centre ``c0``,
    their norm, their weighted sum)."""
    Wv, Nv, NWv, NEv, WWv, NNv = _causal(R, y, x, W, corner)
    _spatial_predictions(pv, Wv, Nv, NWv, NEv, WWv, NNv)
    c0 = 4 * (Wv + Nv)
    lnorm, lacc = _nlms_spatial(R, y, x, W, lw, lu, c0, s)
    return Wv, Nv, NWv, NEv, WWv, NNv, c0, lnorm, lacc


@njit(cache=True, inline="always")
def _texture(pint, Nv, Wv, NWv, NEv, NNv, WWv):
    """The bias-correction context's texture bits: which causal neighbours lie above the
    (integer) prediction ``pint``."""
    return ((1 if Nv > pint else 0) | (2 if Wv > pint else 0) | (4 if NWv > pint else 0)
            | (8 if NEv > pint else 0) | (16 if NNv > pint else 0) | (32 if WWv > pint else 0))


@njit(cache=True, inline="always")
def _base_predictions(pv, base, y, x, W, Wv, Nv, NWv, NEv):
    """Sub-predictions 9–14 from a reference ``base`` (a learned base layer, or the previous
    slice): its co-located value plus the causal neighbours' differences from it →
    (b, rW, rN, rNW, rNE)."""
    b = base[y, x]
    if y > 0 and x > 0:
        rW = Wv - base[y, x - 1]
        rN = Nv - base[y - 1, x]
        rNW = NWv - base[y - 1, x - 1]
    elif y > 0:
        rN = Nv - base[y - 1, x]
        rW = rN
        rNW = rN
    elif x > 0:
        rW = Wv - base[y, x - 1]
        rN = rW
        rNW = rW
    else:
        rW = 0
        rN = 0
        rNW = 0
    rNE = NEv - base[y - 1, x + 1] if (y > 0 and x + 1 < W) else rN
    pv[9] = 8 * b
    pv[10] = 8 * (b + rW)
    pv[11] = 8 * (b + rN)
    pv[12] = 4 * (2 * b + rW + rN)
    pv[13] = 8 * (b + rN + rW - rNW)
    pv[14] = 4 * (2 * b + rW + rNE)
    return b, rW, rN, rNW, rNE


@njit(cache=True, inline="always")
def _blend(pv, sc, E, npred, y, x, W, cube):
    """Blend of the sub-predictions, weights ∝ 1 / (recent error)² (format 3) or, ``cube``,
    1 / (recent error)³ (format 6), and the smallest recent error (``sc`` receives each one's).
    ``E[y & 1, x, i]``: sub-predictor i's error at (y, x) (rows y − 1 and y)."""
    cy = y & 1          # rows y and y − 1 of the two-row maps
    py = cy ^ 1
    smin = -1
    for i in range(npred):
        t = 0
        if y > 0:
            t += E[py, x, i]
            if x > 0:
                t += E[py, x - 1, i]
            if x + 1 < W:
                t += E[py, x + 1, i]
        if x > 0:
            t += 2 * E[cy, x - 1, i]
            if x > 1:
                t += E[cy, x - 2, i]
        sc[i] = t
        if smin < 0 or t < smin:
            smin = t
    wsum = 0
    psum = 0
    for i in range(npred):
        w1 = ((smin + 32) << 8) // (sc[i] + 32)
        w = w1 * w1
        if cube:
            w = w * w1
        wsum += w
        psum += w * pv[i]
    return (psum + (wsum >> 1)) // wsum, smin


@njit(cache=True, inline="always")
def _energy(F, y, x, W):
    """Recent prediction-error energy around voxel ``(y, x)``."""
    cy = y & 1          # rows y and y − 1 of the two-row maps
    py = cy ^ 1
    en = 0
    if y > 0:
        en += F[py, x]
        if x > 0:
            en += F[py, x - 1]
        if x + 1 < W:
            en += F[py, x + 1]
    if x > 0:
        en += 2 * F[cy, x - 1]
    return en


@njit(cache=True, inline="always")
def _learn(E, F, lw, lu, nl, bsum, bcnt, pv, npred, cy, x, v8, p8, pb, lnorm, kb):
    """After voxel ``x`` of the row took the value ``v8 / 8``: each sub-predictor's error, the
    blend's, the NLMS step on the first ``nl`` taps and the bias correction of context ``kb``."""
    for i in range(npred):
        E[cy, x, i] = _iabs(v8 - pv[i])
    F[cy, x] = _iabs(v8 - p8)
    # NLMS step: w += 2^LMS_SHIFT · err · u / ‖u‖² (one division per voxel)
    g = ((v8 - pv[8]) << (LMS_SHIFT + 16)) // lnorm
    for i in range(nl):
        t = lw[i] + ((g * lu[i]) >> 16)
        # bounded (|w| ≤ 256): no int64 overflow whatever a forged stream decodes to
        lw[i] = t if -LMS_WMAX <= t <= LMS_WMAX else (LMS_WMAX if t > 0 else -LMS_WMAX)
    bsum[kb] += v8 - pb
    bcnt[kb] += 1
    if bcnt[kb] >= 64:
        bsum[kb] = bsum[kb] // 2 if bsum[kb] >= 0 else -((-bsum[kb]) // 2)
        bcnt[kb] = bcnt[kb] // 2


def stream_buffer(data: bytes) -> np.ndarray:
    """A residual stream's bytes as the decoder's buffer; ValueError when its first byte is not
    0 (the range coder's initial cache byte: 0 in every stream an encoder writes, docs/FORMAT.md
    §10.2; an empty stream reads as zeros)."""
    buf = np.frombuffer(bytes(data), dtype=np.uint8).copy()
    if buf.size and buf[0] != 0:
        raise ValueError("residual stream cannot be decoded (corrupt: its first byte is not 0)")
    return buf


def encode_growing(size, run):
    """Run an encoder ``run(buf)`` → (bytes written, status) with a buffer of ``2 size + 1024``
    bytes, 8 times larger while it reports it too small (status 1) → the bytes. RuntimeError on
    any other failing status (the bound broken: an internal error)."""
    cap = size * 2 + 1024
    while True:
        buf = np.zeros(cap, np.uint8)
        n, status = run(buf)
        if status == 1:
            cap *= 8
            continue
        if status != 0:
            raise RuntimeError("residual coder: reconstruction outside the bound "
                               f"(status {status})")
        return buf[:n].tobytes()


def digest(*arrays) -> str:
    """SHA-256 (hex) of ``arrays`` as little-endian int64, one after the other: what steers a
    coder's decisions besides its code (its ``CODER_ID`` holds the first 12 digits)."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype="<i8").tobytes())
    return h.hexdigest()


# ---- the steps of coding one voxel, as both coders take them ---------------------------------

@njit(cache=True, inline="always")
def _rc_start(mode, buf):
    """A range coder's state ``st`` (see :func:`_put`); the decoder (mode 1) reads its first
    five bytes."""
    st = np.zeros(8, np.int64)
    st[1] = 0xFFFFFFFF
    st[3] = 1
    if mode == 1:
        for _ in range(5):
            st[5] = ((st[5] << 8) | _get(st, buf)) & 0xFFFFFFFF
    return st


@njit(cache=True, inline="always")
def _finish(mode, st, buf, rec, R, collect, M, A, mix_acc, apm_acc):
    """The end of a slice → ``_code_slice``'s (bytes written / read, status): the encoder
    flushes the range coder and hands out the reconstruction ``R``; the fit's accumulators
    receive the final mixer and secondary estimation."""
    if collect:
        mix_acc += M
        apm_acc += A
    if mode == 0:
        rec[:, :] = R
        for _ in range(5):
            _shift_low(st, buf)
        return st[4], (1 if st[6] else 0)
    if st[4] > buf.shape[0] + 8:
        return st[4], 3
    return st[4], 0


@njit(cache=True, inline="always")
def _corrected(pb, bsum, bcnt, kb, maxv):
    """The blend ``pb`` with the bias correction of context ``kb``, clamped to the value range
    → (correction, prediction in 1/8 units, integer prediction)."""
    corr = 0
    if bcnt[kb] > 0:
        corr = bsum[kb] // bcnt[kb]
    p8 = pb + corr
    if p8 < 0:
        p8 = 0
    elif p8 > 8 * maxv:
        p8 = 8 * maxv
    return corr, p8, (p8 + 4) >> 3


@njit(cache=True, inline="always")
def _spread(pv, s):
    """How much sub-predictions 0–3 disagree, in steps (the disagreement without reference)."""
    lo = pv[0]
    hi = pv[0]
    for i in range(1, 4):
        if pv[i] < lo:
            lo = pv[i]
        if pv[i] > hi:
            hi = pv[i]
    return (hi - lo) // s


@njit(cache=True, inline="always")
def _kd(dis):
    """The disagreement's bucket."""
    return 0 if dis < 8 else (1 if dis < 24 else (2 if dis < 64 else 3))


@njit(cache=True, inline="always")
def _activity(Nv, Wv, NWv, NEv, WWv, NNv):
    """Texture activity: the causal neighbours' differences."""
    return (_iabs(NEv - Nv) + _iabs(Nv - NWv) + _iabs(NWv - Wv) + _iabs(Wv - WWv)
            + _iabs(Nv - NNv))


@njit(cache=True, inline="always")
def _q_neighbours(Q, y, x, W):
    """The quantised errors at W, N, NW, NE (0 outside the slice) → (them, how many of W and N
    are non-zero, how many of the four)."""
    cy = y & 1          # rows y and y − 1 of the two-row maps
    py = cy ^ 1
    qW = Q[cy, x - 1] if x > 0 else 0
    qN = Q[py, x] if y > 0 else 0
    qNW = Q[py, x - 1] if (y > 0 and x > 0) else 0
    qNE = Q[py, x + 1] if (y > 0 and x + 1 < W) else 0
    nz = (1 if qW != 0 else 0) + (1 if qN != 0 else 0)
    nz4 = nz + (1 if qNW != 0 else 0) + (1 if qNE != 0 else 0)
    return qW, qN, qNW, qNE, nz, nz4


@njit(cache=True, inline="always")
def _features(ctx, Q, y, x, W, pv, s, has_ref, b, p8, pred, smin, ke, Nv, Wv, NWv, NEv,
              WWv, NNv, e_tab):
    """The contexts of the first three models, into ``ctx`` (error energy ``ke`` × disagreement
    with the reference value ``b`` — or the sub-predictions' spread without one — × the
    neighbours' zeros; activity × level; best sub-predictor's error × non-zero count) →
    (activity bucket, level bucket, the quantised errors W, N, NW, NE)."""
    dis = _iabs(8 * b - p8) // s if has_ref else _spread(pv, s)
    ka = _bk(8 * _activity(Nv, Wv, NWv, NEv, WWv, NNv) // s, e_tab)
    lev = _bk(pred, LEV_TAB)
    kbest = _bk(smin // s, e_tab)
    qW, qN, qNW, qNE, nz, nz4 = _q_neighbours(Q, y, x, W)
    ctx[0] = (ke * 4 + _kd(dis)) * 3 + nz
    ctx[1] = ka * 16 + lev
    ctx[2] = kbest * 5 + nz4
    return ka, lev, qW, qN, qNW, qNE


@njit(cache=True, inline="always")
def _quantise(mode, x, y, xx, pred, delta, s):
    """The encoder's quantised error of voxel (y, xx) (the decoder's starts at 0)."""
    q = 0
    if mode == 0:
        e = x[y, xx] - pred
        if e >= 0:
            q = (e + delta) // s
        else:
            q = -((delta - e) // s)
    return q


@njit(cache=True, inline="always")
def _reconstruct(mode, x, y, xx, pred, q, s, delta, maxv):
    """The voxel's value ``pred + q s`` clamped to the range → (it, whether the encoder's
    bound holds); the decoder writes it into ``x``."""
    v = pred + q * s
    if v < 0:
        v = 0
    elif v > maxv:
        v = maxv
    if mode == 0:
        dd = v - x[y, xx]
        if dd > delta or dd < -delta:
            return v, False
    else:
        x[y, xx] = v
    return v, True


@njit(cache=True, inline="always")
def _sign_contexts(cts, moff, CSA, qW, qN, qNW, qNE, sf, corr, ke, lev):
    """The sign decision's contexts of the first four models (``moff``: each model's table)."""
    sW = _sgn3(qW)
    sN = _sgn3(qN)
    cts[0] = moff[0] + D_SIGN * CSA[0] + ((sW * 3 + sN) * 3 + sf) * 4 + (ke >> 2)
    cts[1] = moff[1] + D_SIGN * CSA[1] + ((_sgn3(qNW) * 3 + _sgn3(qNE)) * 3 + sW) * 3 + sf
    cts[2] = moff[2] + D_SIGN * CSA[2] + _sgn3(corr) * 9 + sW * 3 + sN
    cts[3] = moff[3] + D_SIGN * CSA[3] + lev * 3 + sf


def load_tables(path: Path, prior: tuple, mix: tuple, apm: tuple) -> tuple:
    """A residual coder's fitted initial state, shipped as ``path`` (int64 arrays ``prior``,
    ``mix``, ``apm`` of the given shapes and ``n0``) → (prior, mix, apm, n0). Its absence is an
    error: coding from other tables would write files no other bmz decodes."""
    missing_tables(path)
    with np.load(path, allow_pickle=False) as z:
        t = {k: z[k].astype(np.int64) for k in z.files}
    if t["prior"].shape != prior or t["mix"].shape != mix or t["apm"].shape != apm:
        raise RuntimeError(f"{path} does not match the residual coder")
    return t["prior"], t["mix"], t["apm"], int(t["n0"][0])


def missing_tables(path: Path) -> None:
    """FileNotFoundError naming ``path`` when a residual coder's shipped tables are not there (a
    broken install: coding from other tables would write files no other bmz decodes)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"the residual coder's tables {path} are missing: this bmz installation is broken "
            f"(reinstall bmz; bounded-error and lossless files cannot be coded without them)")


# ---- coding a voxel, once its prediction and contexts are known (both coders) ---------------
def voxel_coder(mix_bit, plain_bit, n_models):
    """The coding of one voxel (:func:`code_voxel` below) for a coder whose mixed decisions
    ``mix_bit`` and plain ones ``plain_bit`` code, mixing ``n_models`` context models: the
    quantised error binarised (zero flag, sign, Elias-gamma magnitude; docs/FORMAT.md §10.6), the
    value reconstructed, the predictors' learning step. numba inlines it, and the coder's own
    functions into it, into the coder's voxel loop (the coder's constants stay constants).

    The decisions' arguments: the range coder (``mode``, ``st``, ``buf``), the counters ``C``,
    the mixer ``M`` with inputs ``xin`` and learning rate ``lr``, the secondary estimation ``A``,
    the stretch / squash tables ``ST``, ``SQ``; ``cts`` receives each model's counter index;
    ``ctx`` holds the models' magnitude contexts, ``moff`` each model's table, ``CSA`` each one's
    size per decision; decision ``d`` mixes with row ``row0 + 16 d + row`` of ``M`` and refines
    with row ``row0 + 16 d + lev`` of ``A``; ``stats`` counts every coded bit per counter when
    ``collect``."""

    @njit(inline="always")
    def _mixed(mode, st, buf, C, M, cts, d, row, lev, bit, ST, SQ, xin, lr, A, row0, collect,
               stats):
        """Decision ``d`` on the counters already in ``cts`` → the bit."""
        bit = mix_bit(mode, st, buf, C, M, cts, row0 + d * 16 + row, bit, ST, SQ, xin, lr, A,
                      row0 + d * 16 + lev)
        if collect:
            for j in range(n_models):
                stats[cts[j], bit] += 1
        return bit

    @njit(inline="always")
    def decide(mode, st, buf, C, M, cts, ctx, moff, CSA, d, row, lev, bit, ST, SQ, xin, lr, A,
               row0, collect, stats):
        """Decision ``d`` on the magnitude contexts ``ctx`` → the bit."""
        for j in range(n_models):
            cts[j] = moff[j] + d * CSA[j] + ctx[j]
        return _mixed(mode, st, buf, C, M, cts, d, row, lev, bit, ST, SQ, xin, lr, A, row0,
                      collect, stats)

    @njit(inline="always")
    def sign_magnitude(mode, q, st, buf, C, M, cts, csg, ctx, moff, CSA, omant, row, lev, ST, SQ,
                       xin, lr, A, row0, collect, stats, maxv):
        """The sign of a non-zero quantised error ``q`` (on the counters ``csg``), then
        its magnitude in Elias gamma: the exponent k in unary (decisions ``D_UNARY + i``), the
        top mantissa bit mixed (``D_MTOP + k``), the k − 1 lower ones on plain counters from
        ``omant`` → (q, True), or (0, False) when a decoded magnitude exceeds the value range."""
        neg = _mixed(mode, st, buf, C, M, csg, D_SIGN, row, lev, 1 if q < 0 else 0, ST, SQ, xin,
                     lr, A, row0, collect, stats)
        mv = q if q > 0 else -q
        k = 0
        if mode == 0:
            t = mv
            while t > 1:
                t >>= 1
                k += 1
        kk = 0
        while kk < N_K - 1:
            more = decide(mode, st, buf, C, M, cts, ctx, moff, CSA, D_UNARY + kk, row, lev,
                          1 if kk < k else 0, ST, SQ, xin, lr, A, row0, collect, stats)
            if not more:
                break
            kk += 1
        k = kk
        if mode == 1:
            mv = 1
        for j in range(k - 1, -1, -1):
            bitv = (mv >> j) & 1 if mode == 0 else 0
            if j == k - 1:
                bitv = decide(mode, st, buf, C, M, cts, ctx, moff, CSA, D_MTOP + k, row, lev,
                              bitv, ST, SQ, xin, lr, A, row0, collect, stats)
            else:
                cm = omant + k * N_K + j
                bitv = plain_bit(mode, st, buf, C, cm, bitv)
                if collect:
                    stats[cm, bitv] += 1
            if mode == 1:
                mv = (mv << 1) | bitv
        if mode == 1:
            if mv - 1 > maxv:
                return 0, False
            q = -mv if neg else mv
        return q, True

    @njit(inline="always")
    def code_voxel(mode, x, y, xx, pred, p8, pb, lnorm, kb, row, lev, delta, maxv, st, buf, R,
                   state, scratch, tabs, moff, CSA, omant, row0, nl, collect, stats):
        """Voxel (y, xx), given its prediction (``pred``; ``p8``, ``pb`` in 1/8 units), the
        models' magnitude contexts (``ctx`` of ``scratch``) and sign counters (``csg``): its
        quantised error coded (zero flag, sign, magnitude), its value reconstructed — checked
        against the bound (encoder) or stored (decoder) — and the predictors' learning step (the
        first ``nl`` NLMS taps, bias context ``kb``) → (value, status: 0, or 2 bound violated,
        3 corrupt stream)."""
        C, M, A, lw, bsum, bcnt = state
        Q, E, F, pv, sc, ctx, cts, csg, xin, lu = scratch
        e_th, ST, SQ, lr = tabs
        s = 2 * delta + 1
        cy = y & 1
        q = _quantise(mode, x, y, xx, pred, delta, s)
        nzb = decide(mode, st, buf, C, M, cts, ctx, moff, CSA, D_ZERO, row, lev,
                     1 if q != 0 else 0, ST, SQ, xin, lr, A, row0, collect, stats)
        if nzb:
            q, ok = sign_magnitude(mode, q, st, buf, C, M, cts, csg, ctx, moff, CSA, omant, row,
                                   lev, ST, SQ, xin, lr, A, row0, collect, stats, maxv)
            if not ok:
                return 0, 3
        v, ok = _reconstruct(mode, x, y, xx, pred, q, s, delta, maxv)
        if not ok:
            return v, 2
        R[y, xx] = v
        Q[cy, xx] = q
        _learn(E, F, lw, lu, nl, bsum, bcnt, pv, E.shape[2], cy, xx, 8 * v, p8, pb, lnorm, kb)
        return v, 0

    return code_voxel
