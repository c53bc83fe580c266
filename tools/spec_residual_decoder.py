"""An independent decoder of bounded-error residual streams, written from docs/FORMAT.md §10.6
alone (with the chunk layouts of §10.2 and §10.4): plain Python integers, no import from
``bmz.codec.residual*``. Slow (about 10 µs per decision); meant for small slices, to check that
the specification and bmz agree bit for bit (tests/test_spec_residual.py, over every
conformance file of formats 3 and 6).

It covers both coders — nlmix1 (chunk format 3) and nlmix3d1 (chunk format 6, kinds 0x02 and
0x05 with the state a slice hands on) — with no reference, a base layer given as an array (the
learned base layer itself is decoded by §10.1's decoder, not here), or the previous slice.

    python tools/spec_residual_decoder.py FILE.bmz     # decode a format-3/6 file, print SHA-256
"""

from __future__ import annotations

import hashlib
import sys
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]

# ---- §10.6.2 constants ----------------------------------------------------------------------
N_K = 18
D_ZERO, D_SIGN, D_UNARY, D_MTOP, N_DEC = 0, 1, 2, 20, 38
E_TH = [2, 5, 9, 14, 20, 28, 40, 56, 80, 112, 160, 224, 320, 480, 800]
LEV_TH = [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 64, 128, 512]
TAP = [(0, -1), (-1, 0), (-1, -1), (-1, 1), (0, -2), (-2, 0), (-1, -2), (-2, -1), (-2, 1),
       (-1, 2), (-2, -2), (-2, 2), (0, -3), (-3, 0), (-1, -3), (-3, -1), (-3, 1), (-1, 3)]
PTAP = [(0, 0), (0, -1), (-1, 0), (0, 1), (1, 0)]
LMS_WMAX = 1 << 20
SQ_T = [1, 2, 3, 6, 10, 16, 27, 45, 73, 120, 194, 310, 488, 747, 1101, 1546, 2047, 2549, 2994,
        3348, 3607, 3785, 3901, 3975, 4022, 4050, 4068, 4079, 4085, 4089, 4092, 4093, 4094]


def squash(d):
    d = min(max(d, -2047), 2047)
    w = d & 127
    i = (d >> 7) + 16
    return (SQ_T[i] * (128 - w) + SQ_T[i + 1] * w + 64) >> 7


def _stretch():
    sq = [squash(x) for x in range(-2047, 2048)]
    out = []
    for p in range(4096):
        out.append(next((x for x, v in zip(range(-2047, 2048), sq) if v >= p), 2047))
    return out


STRETCH = _stretch()


def ST(p):
    return STRETCH[min(max(p >> 4, 1), 4094)]


RATE_FAST = [max(131072 // (2 * n + 3), 4096) for n in range(256)]
RATE_SLOW = [max(131072 // (2 * n + 3), 512) for n in range(256)]


def bucket(v, T):
    return sum(1 for t in T if t <= v)


def sgn3(v):
    return 0 if v == 0 else (1 if v > 0 else 2)


def med(a, b, c):
    if c >= max(a, b):
        return min(a, b)
    if c <= min(a, b):
        return max(a, b)
    return a + b - c


def near(A, y, x, X):
    """2·W + N + NW + NE of map ``A`` at (y, x); a neighbour outside the slice counts 0."""
    t = 2 * A[y][x - 1] if x > 0 else 0
    if y > 0:
        t += A[y - 1][x]
        if x > 0:
            t += A[y - 1][x - 1]
        if x + 1 < X:
            t += A[y - 1][x + 1]
    return t


class Coder:
    """The per-coder parameters of §10.6.2 and its tables (§10.6.3)."""

    def __init__(self, three_d: bool):
        self.three_d = three_d
        self.NM = 5 if three_d else 4
        self.CS = [192, 256, 80, 256, 256] if three_d else [192, 256, 80, 64]
        self.NI = self.NM + 1 if three_d else 2 * self.NM + 1
        self.NSET = 2 if three_d else 1
        self.NB = 512 if three_d else 256
        self.EXP = 3 if three_d else 2
        self.OFF = [0]
        for c in self.CS:
            self.OFF.append(self.OFF[-1] + N_DEC * c)
        self.OFF_M = self.OFF[self.NM]
        self.SET = self.OFF_M + 324
        name = "residual3d_tables.npz" if three_d else "residual_tables.npz"
        with np.load(HERE / "bmz" / "codec" / name, allow_pickle=False) as z:
            t = {k: z[k] for k in z.files}
        for k in ("prior", "mix", "apm", "n0"):
            assert t[k].dtype.str == "<i8", (name, k, t[k].dtype)
        self.arrays = t
        self.prior = [int(v) for v in t["prior"]]
        self.mix = [[int(v) for v in row] for row in t["mix"]]
        self.apm = [[int(v) for v in row] for row in t["apm"]]
        self.n0 = int(t["n0"][0])
        assert len(self.prior) == self.NSET * self.SET
        assert len(self.mix) == self.NSET * 608 and len(self.mix[0]) == self.NI
        assert len(self.apm) == self.NSET * 608 and len(self.apm[0]) == 33

    def name(self) -> str:
        """``codec.residual`` (§10.6.3)."""
        t = self.arrays
        parts = [t["prior"], t["mix"], t["apm"], E_TH, LEV_TH, [d[0] for d in TAP],
                 [d[1] for d in TAP]]
        if self.three_d:
            parts += [[d[0] for d in PTAP], [d[1] for d in PTAP]]
            consts = [18, 5, 192, 256, 80, 256, 256, 2, self.n0, 9, 9, 15, 512, 6]
        else:
            consts = [18, 4, 192, 256, 80, 64, 2, self.n0, 9, 9, 6, 256]
        parts += [[RATE_FAST, RATE_SLOW], STRETCH, consts]
        h = hashlib.sha256()
        for a in parts:
            h.update(np.ascontiguousarray(np.array(a, dtype=np.int64), dtype="<i8").tobytes())
        return ("nlmix3d1-" if self.three_d else "nlmix1-") + h.hexdigest()[:12]

    def initial_state(self) -> dict:
        """§10.6.5 initial state."""
        n = len(self.prior)
        st = {"n": [self.n0] * n, "MIX": [row[:] for row in self.mix],
              "APM": [row[:] for row in self.apm], "LW": [0] * (24 if self.three_d else 18),
              "BSUM": [0] * self.NB, "BCNT": [0] * self.NB}
        if self.three_d:
            st["p"] = self.prior[:]
        else:
            st["pf"] = self.prior[:]
            st["ps"] = self.prior[:]
        return st


class Invalid(ValueError):
    pass


class RangeDecoder:
    """§10.6.4."""

    def __init__(self, data: bytes):
        if len(data) and data[0] != 0:
            raise Invalid("residual stream: first byte not 0")
        self.B = data
        self.pos = 0
        self.range = 0xFFFFFFFF
        self.code = 0
        for _ in range(5):
            self.code = ((self.code << 8) | self.next()) & 0xFFFFFFFF

    def next(self):
        b = self.B[self.pos] if self.pos < len(self.B) else 0
        self.pos += 1
        return b

    def decode(self, p1):
        bound = (self.range >> 16) * (65536 - p1)
        if self.code < bound:
            self.range = bound
            bit = 0
        else:
            self.code -= bound
            self.range -= bound
            bit = 1
        while self.range < (1 << 24):
            self.range <<= 8
            self.code = ((self.code << 8) | self.next()) & 0xFFFFFFFF
        return bit


class Slice:
    """Decoding one slice (§10.6.5–10.6.7)."""

    def __init__(self, coder: Coder, st: dict, rd: RangeDecoder):
        self.c, self.st, self.rd = coder, st, rd

    def update(self, c, bit):
        st = self.st
        t = bit << 16
        n = st["n"][c]
        if self.c.three_d:
            st["p"][c] += ((t - st["p"][c]) * RATE_SLOW[n]) >> 16
        else:
            st["pf"][c] += ((t - st["pf"][c]) * RATE_FAST[n]) >> 16
            st["ps"][c] += ((t - st["ps"][c]) * RATE_SLOW[n]) >> 16
        if n < 255:
            st["n"][c] = n + 1

    def mixed(self, cts, row, arow):
        st, c = self.st, self.c
        x = []
        for j in range(c.NM):
            if c.three_d:
                x.append(ST(st["p"][cts[j]]))
            else:
                x.append(ST(st["pf"][cts[j]]))
                x.append(ST(st["ps"][cts[j]]))
        x.append(256)
        M = st["MIX"][row]
        dot = sum(M[i] * x[i] for i in range(c.NI))
        p12 = squash(dot >> 16)
        sv = STRETCH[p12] + 2047
        lo = sv >> 7
        w = sv & 127
        A = st["APM"][arow]
        pa = (A[lo] * (128 - w) + A[lo + 1] * w) >> 7
        p16 = min(max((16 * p12 + 3 * pa) >> 2, 32), 65504)
        bit = self.rd.decode(p16)
        a = lo + (w >> 6)
        A[a] += ((bit << 16) - A[a]) >> 6
        err = ((bit << 12) - p12) * 2
        for i in range(c.NI):
            M[i] += (x[i] * err) >> 14
        for j in range(c.NM):
            self.update(cts[j], bit)
        return bit

    def plain(self, ci):
        st = self.st
        if self.c.three_d:
            pr = st["p"][ci]
        else:
            pr = (st["pf"][ci] + st["ps"][ci]) >> 1
        bit = self.rd.decode(min(max(pr, 48), 65488))
        self.update(ci, bit)
        return bit


def _mag(c, G0, M0, ctx, rowb, lev, d):
    """The contexts, mixer row and secondary-estimation row of decision ``d`` with the voxel's
    magnitude contexts (§10.6.7, ``mag(d)``)."""
    cts = [G0 + c.OFF[j] + d * c.CS[j] + ctx[j] for j in range(c.NM)]
    return cts, M0 + 16 * d + rowb, M0 + 16 * d + lev


def decode_slice(data: bytes, H: int, X: int, S: int, delta: int, coder: Coder, *,
                 b=None, prev=None, state=None):
    """Residual stream → (r, e, state): the reconstruction, the error map and the coder's state
    after the slice. ``b``: a base layer (H × X ints); ``prev``: (P, PE) of the previous slice
    (nlmix3d1 only) with ``state`` the state it ended with; else the initial state."""
    c = coder
    inter = prev is not None
    if inter:
        assert c.three_d and b is None and state is not None
        b, PE = prev
    st = state if state is not None else c.initial_state()
    rd = RangeDecoder(data)
    sl = Slice(c, st, rd)
    has_ref = b is not None
    s = 2 * delta + 1
    npred = 15 if has_ref else 9
    sigma = 1 if inter else 0
    M0 = sigma * 608
    G0 = sigma * c.SET
    LW, BSUM, BCNT = st["LW"], st["BSUM"], st["BCNT"]
    r = [[0] * X for _ in range(H)]
    Q = [[0] * X for _ in range(H)]
    E = [[[0] * X for _ in range(H)] for _ in range(npred)]
    F = [[0] * X for _ in range(H)]
    e = [[0] * X for _ in range(H)]
    pv = [0] * 15
    u = [0] * 24
    corner = b[0][0] if has_ref else (S + 1) // 2

    def cl(v, n):
        return min(max(v, 0), n - 1)

    for y in range(H):
        for x in range(X):
            # causal neighbours
            if y > 0 and x > 0:
                vW, vN, vNW = r[y][x - 1], r[y - 1][x], r[y - 1][x - 1]
            elif y > 0:
                vN = r[y - 1][x]
                vW = vNW = vN
            elif x > 0:
                vW = r[y][x - 1]
                vN = vNW = vW
            else:
                vW = vN = vNW = corner
            vNE = r[y - 1][x + 1] if (y > 0 and x + 1 < X) else vN
            vWW = r[y][x - 2] if x > 1 else vW
            vNN = r[y - 2][x] if y > 1 else vN
            # sub-predictions
            pv[0] = 8 * (vN + vW - vNW)
            pv[1] = 8 * vW
            pv[2] = 8 * vN
            pv[3] = 8 * med(vW, vN, vNW)
            pv[4] = 8 * (vW + vNE - vN)
            pv[5] = 4 * (vW + vNE)
            pv[6] = 8 * vN + 4 * (vN - vNN)
            pv[7] = 8 * vW + 4 * (vW - vWW)
            # NLMS
            c0 = 4 * (vW + vN)
            lnorm = 64 * s * s
            lacc = 0
            nl = 18
            for i in range(18):
                yy, xx = y + TAP[i][0], x + TAP[i][1]
                u[i] = 0 if (yy < 0 or xx < 0 or xx >= X) else 8 * r[yy][xx] - c0
                lnorm += u[i] * u[i]
                lacc += LW[i] * u[i]
            bc = 0
            if has_ref:
                bc = b[y][x]
                if y > 0 and x > 0:
                    rW = vW - b[y][x - 1]
                    rN = vN - b[y - 1][x]
                    rNW = vNW - b[y - 1][x - 1]
                elif y > 0:
                    rN = vN - b[y - 1][x]
                    rW = rNW = rN
                elif x > 0:
                    rW = vW - b[y][x - 1]
                    rN = rNW = rW
                else:
                    rW = rN = rNW = 0
                rNE = vNE - b[y - 1][x + 1] if (y > 0 and x + 1 < X) else rN
                pv[9] = 8 * bc
                pv[10] = 8 * (bc + rW)
                pv[11] = 8 * (bc + rN)
                pv[12] = 4 * (2 * bc + rW + rN)
                pv[13] = 8 * (bc + rN + rW - rNW)
                pv[14] = 4 * (2 * bc + rW + rNE)
            if inter:
                for i in range(5):
                    u[18 + i] = 8 * b[cl(y + PTAP[i][0], H)][cl(x + PTAP[i][1], X)] - c0
                    lnorm += u[18 + i] * u[18 + i]
                    lacc += LW[18 + i] * u[18 + i]
                e0 = PE[y][x]
                u[23] = 8 * bc - e0 - c0
                lnorm += u[23] * u[23]
                lacc += LW[23] * u[23]
                pe = (2 * abs(e0) + abs(PE[cl(y - 1, H)][x]) + abs(PE[cl(y + 1, H)][x])
                      + abs(PE[y][cl(x - 1, X)]) + abs(PE[y][cl(x + 1, X)]))
                dm = abs(rW) + abs(rN) + abs(rNW) + abs(rNE)
                nl = 24
            pv[8] = c0 + (lacc >> 12)
            # blend
            sc = []
            for i in range(npred):
                Ei = E[i]
                sc.append(near(Ei, y, x, X) + (Ei[y][x - 2] if x > 1 else 0))
            smin = min(sc)
            wts = []
            for i in range(npred):
                w = ((smin + 32) << 8) // (sc[i] + 32)
                wts.append(w ** c.EXP)
            wsum = sum(wts)
            pb = (sum(wts[i] * pv[i] for i in range(npred)) + (wsum >> 1)) // wsum
            # energy, texture, bias
            en = near(F, y, x, X)
            ke = bucket(en // s, E_TH)
            pint = pb >> 3
            tex = ((vN > pint) * 1 + (vW > pint) * 2 + (vNW > pint) * 4 + (vNE > pint) * 8
                   + (vNN > pint) * 16 + (vWW > pint) * 32)
            if inter and bc > pint:
                tex += 64
            kb = 4 * tex + (ke >> 2)
            corr = BSUM[kb] // BCNT[kb] if BCNT[kb] > 0 else 0
            p8 = min(max(pb + corr, 0), 8 * S)
            pred = (p8 + 4) >> 3
            # context features
            if has_ref:
                dis = abs(8 * bc - p8) // s
            else:
                dis = (max(pv[0:4]) - min(pv[0:4])) // s
            kd = 0 if dis < 8 else 1 if dis < 24 else 2 if dis < 64 else 3
            act = abs(vNE - vN) + abs(vN - vNW) + abs(vNW - vW) + abs(vW - vWW) + abs(vN - vNN)
            ka = bucket(8 * act // s, E_TH)
            lev = bucket(pred, LEV_TH)
            kbest = bucket(smin // s, E_TH)
            qW = Q[y][x - 1] if x > 0 else 0
            qN = Q[y - 1][x] if y > 0 else 0
            qNW = Q[y - 1][x - 1] if (y > 0 and x > 0) else 0
            qNE = Q[y - 1][x + 1] if (y > 0 and x + 1 < X) else 0
            nz = (qW != 0) + (qN != 0)
            nz4 = nz + (qNW != 0) + (qNE != 0)
            ctx = [3 * (4 * ke + kd) + nz, 16 * ka + lev, 5 * kbest + nz4, 0, 0]
            kp = 0
            if inter:
                kp = bucket((5 * pe) // (6 * s), E_TH)
                km = bucket(2 * dm // s, E_TH)
                ctx[3] = 16 * ke + kp
                ctx[4] = 16 * km + kp
                rowb = bucket((en + (5 * pe) // 6) // (2 * s), E_TH)
            else:
                ctx[3] = 4 * ke + (lev >> 2)
                ctx[4] = 16 * ke + ka
                rowb = ke

            # §10.6.7 decisions
            if sl.mixed(*_mag(c, G0, M0, ctx, rowb, lev, D_ZERO)) == 0:
                q = 0
            else:
                sW, sN, sf = sgn3(qW), sgn3(qN), sgn3(p8 - 8 * pred)
                cts = [G0 + c.OFF[0] + c.CS[0] + 4 * (3 * (3 * sW + sN) + sf) + (ke >> 2),
                       G0 + c.OFF[1] + c.CS[1] + 3 * (3 * (3 * sgn3(qNW) + sgn3(qNE)) + sW) + sf,
                       G0 + c.OFF[2] + c.CS[2] + 9 * sgn3(corr) + 3 * sW + sN,
                       G0 + c.OFF[3] + c.CS[3] + 3 * lev + sf]
                if c.three_d:
                    if inter:
                        cts.append(G0 + c.OFF[4] + c.CS[4]
                                   + 4 * (3 * (3 * sgn3(8 * bc - p8) + sgn3(PE[y][x])) + sf)
                                   + (kp >> 2))
                    else:
                        cts.append(G0 + c.OFF[4] + c.CS[4] + 16 * (3 * sgn3(corr) + sf) + ke)
                neg = sl.mixed(cts, M0 + 16 * D_SIGN + rowb, M0 + 16 * D_SIGN + lev)
                k = 0
                while k < 17:
                    if sl.mixed(*_mag(c, G0, M0, ctx, rowb, lev, D_UNARY + k)) == 0:
                        break
                    k += 1
                m = 1
                for j in range(k - 1, -1, -1):
                    if j == k - 1:
                        bit = sl.mixed(*_mag(c, G0, M0, ctx, rowb, lev, D_MTOP + k))
                    else:
                        bit = sl.plain(G0 + c.OFF_M + 18 * k + j)
                    m = 2 * m + bit
                if m - 1 > S:
                    raise Invalid("decoded magnitude out of range")
                q = -m if neg else m
            v = min(max(pred + q * s, 0), S)
            r[y][x] = v
            Q[y][x] = q
            for i in range(npred):
                E[i][y][x] = abs(8 * v - pv[i])
            F[y][x] = abs(8 * v - p8)
            e[y][x] = 8 * v - p8
            g = ((8 * v - pv[8]) << 25) // lnorm
            for i in range(nl):
                LW[i] = min(max(LW[i] + ((g * u[i]) >> 16), -LMS_WMAX), LMS_WMAX)
            BSUM[kb] += 8 * v - pb
            BCNT[kb] += 1
            if BCNT[kb] >= 64:
                BSUM[kb] = BSUM[kb] // 2 if BSUM[kb] >= 0 else -((-BSUM[kb]) // 2)
                BCNT[kb] = BCNT[kb] // 2
    if rd.pos > len(data) + 8:
        raise Invalid("stream read more than 8 bytes past its end")
    return r, e, st


# ---- chunks (§10.2, §10.4, §10.6.8–10.6.10) ---------------------------------------------------

def crc_of(r) -> int:
    return zlib.crc32(np.array(r, dtype="<u2").tobytes()) & 0xFFFFFFFF


def _bounded_header(chunk: bytes):
    """A 0x02 chunk → (qb, crc, base-layer bytes or None, residual offset)."""
    if len(chunk) < 6 or chunk[0] != 2:
        raise Invalid("not a bounded chunk")
    qb, crc, pos, layer = chunk[1], int.from_bytes(chunk[2:6], "little"), 6, None
    if qb:
        L = int.from_bytes(chunk[6:10], "little")
        if len(chunk) < 10 or L < 2 or 10 + L > len(chunk):
            raise Invalid("base layer does not fit")
        layer, pos = chunk[10:10 + L], 10 + L
    return qb, crc, layer, pos


def decode_chunk3(chunk: bytes, shape, S: int, delta: int, coder: Coder, base=None):
    """A format-3 bounded chunk → r (values − min, lists). ``base``: the decoded base layer
    (values − min) when the chunk has one (decoded by §10.1's learned decoder)."""
    H, X = shape
    qb, crc, _layer, pos = _bounded_header(chunk)
    if qb and base is None:
        raise ValueError("chunk has a base layer: pass its decoded values")
    r, _, _ = decode_slice(chunk[pos:], H, X, S, delta, coder, b=base if qb else None)
    if crc_of(r) != crc:
        raise Invalid("CRC-32 of the reconstruction differs")
    return r


def decode_group6(chunks, shape, S: int, delta: int, coder: Coder, vmin: int = 0, bases=None):
    """The chunks of one format-6 group, in order → the reconstructions (values − min). Constant
    chunks (kind 0x00) hand on their value, a zero error map and the initial state (§10.6.9)."""
    H, X = shape
    out, carried = [], None
    for k, chunk in enumerate(chunks):
        kind = chunk[0]
        if kind == 0:
            v = int.from_bytes(chunk[1:9], "little", signed=True) - vmin
            r = [[v] * X for _ in range(H)]
            carried = (r, [[0] * X for _ in range(H)], coder.initial_state())
        elif kind == 2:
            qb, crc, _layer, pos = _bounded_header(chunk)
            base = bases[k] if qb else None
            r, e, st = decode_slice(chunk[pos:], H, X, S, delta, coder, b=base)
            if crc_of(r) != crc:
                raise Invalid("CRC-32 of the reconstruction differs")
            carried = (r, e, st)
        elif kind == 5:
            if carried is None:
                raise Invalid("0x05 chunk at a group start")
            crc = int.from_bytes(chunk[1:5], "little")
            P, PE, st = carried
            r, e, st = decode_slice(chunk[5:], H, X, S, delta, coder, prev=(P, PE), state=st)
            if crc_of(r) != crc:
                raise Invalid("CRC-32 of the reconstruction differs")
            carried = (r, e, st)
        else:
            raise Invalid(f"chunk kind {kind} in a bounded-error file")
        out.append(carried[0])
    return out


def main(argv):  # pragma: no cover - a command-line convenience (needs bmz's container reader)
    from bmz.bitstream import BmzReader

    with BmzReader(Path(argv[0]).read_bytes()) as rd:
        meta = rd.meta
        codec, inten = meta["codec"], meta["intensity"]
        fmt, delta, S, vmin = codec["chunk_format"], codec["max_error"], inten["scale"], inten["min"]
        coder = Coder(three_d=(fmt == 6))
        if codec["residual"] != coder.name():
            raise SystemExit(f"residual coder {codec['residual']} is not {coder.name()}")
        if codec.get("quality"):
            raise SystemExit("files with a learned base layer need §10.1's decoder; not here")
        shape = tuple(meta["shape"][-2:])
        chunks = [rd.chunk(k) for k in range(rd.n_slices)]
    if fmt == 3:
        sl = [decode_chunk3(c, shape, S, delta, coder) if c[0] == 2 else
              [[int.from_bytes(c[1:9], "little", signed=True) - vmin] * shape[1]] * shape[0]
              for c in chunks]
    else:
        G = codec["group"]
        sl = []
        for a in range(0, len(chunks), G):
            sl += decode_group6(chunks[a:a + G], shape, S, delta, coder, vmin)
    arr = np.ascontiguousarray((np.array(sl, dtype=np.int64) + vmin).astype(np.dtype(meta["dtype"])))
    print(arr.shape, hashlib.sha256(arr.tobytes()).hexdigest())


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
