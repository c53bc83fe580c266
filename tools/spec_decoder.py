"""An independent decoder of learned chunks, written from docs/FORMAT.md §10.5 alone.

    python tools/spec_decoder.py FILE.bmz [WEIGHTS.pt]    # decode, print the array's SHA-256

It implements only what the specification says — the range decoder (§10.5.4), the CDF tables
and escapes (§10.5.3), the integer hyper-synthesis and entropy parameters and the fixed-point
synthesis (§10.5.2, layer tables in §10.5.1) — in plain Python integers and numpy int64, with
the weights read by :mod:`ptweights` (no PyTorch, no ``constriction``, nothing of ``bmz.codec``).
``tests/test_spec_decoder.py`` checks that it decodes golden files' latents and arrays exactly as
bmz does. It is a check of the document, not a fast decoder.
"""

from __future__ import annotations

import bisect
import hashlib
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ptweights  # noqa: E402

PREC = 24                  # constriction's model precision (bits)
MASK64 = (1 << 64) - 1
EXACT = 1 << 52            # bound on every partial sum (§10.5.2)


class Damaged(ValueError):
    """The stream is one no encoder writes: the slice is damaged."""


# ---- §10.5.4 the range decoder -----------------------------------------------------------------
class RangeDecoder:
    def __init__(self, data: bytes):
        if len(data) % 4:
            raise Damaged("stream is not a whole number of 32-bit words")
        self.words = [int.from_bytes(data[i:i + 4], "little") for i in range(0, len(data), 4)]
        self.pos = 0
        self.lower, self.range = 0, MASK64
        w = self.words[:2]
        self.point = (w[0] << 32 | w[1]) if len(w) == 2 else (w[0] << 32 if w else 0)
        self.pos = len(w)

    def decode(self, cdf: list[int]) -> int:
        """One symbol of the model with cumulative table ``cdf`` (``cdf[0]`` = 0 …
        ``cdf[n]`` = 2**24, strictly increasing)."""
        scale = self.range >> PREC
        quantile = ((self.point - self.lower) & MASK64) // scale
        if quantile >= 1 << PREC:
            raise Damaged("range decoder: invalid data")
        s = bisect.bisect_right(cdf, quantile) - 1
        self.lower = (self.lower + scale * cdf[s]) & MASK64
        self.range = scale * (cdf[s + 1] - cdf[s])
        if self.range < 1 << 32:
            self.lower = (self.lower << 32) & MASK64
            self.range <<= 32
            nxt = self.words[self.pos] if self.pos < len(self.words) else 0
            self.pos += 1
            self.point = ((self.point << 32) & MASK64) | nxt
        return s

    def exhausted(self) -> bool:
        """After the last symbol: every word read, and the look-ahead holds no more than the
        sealing left (§10.1: two or more words after the stream's end are refused)."""
        return self.pos >= len(self.words) and (
            self.range == MASK64 or ((self.point - self.lower) & MASK64) < (1 << 33) - 1)

    def finish(self) -> None:
        if not self.exhausted():
            raise Damaged("data after the end of the entropy-coded stream")


def categorical_cdf(c16) -> list[int]:
    """constriction's Categorical(perfect=False) table of a stored 16-bit CDF row (§10.5.3)."""
    c16 = [int(v) for v in c16]
    n = len(c16) - 1
    return [(c * ((1 << PREC) - n) >> 16) + i for i, c in enumerate(c16)]


_UNIFORM: dict[int, list[int]] = {}


def uniform_cdf(size: int) -> list[int]:
    if size not in _UNIFORM:
        per = (1 << PREC) // size
        _UNIFORM[size] = [k * per for k in range(size)] + [1 << PREC]
    return _UNIFORM[size]


class Tables:
    """The CDF tables of one entropy model (``<prefix>._quantized_cdf`` etc.)."""

    def __init__(self, sd: dict, prefix: str | None, cdf=None, length=None):
        """The tables ``<prefix>._quantized_cdf`` / ``._cdf_length`` / ``._offset``, or (the
        VQ-VAE's per-stage priors, §10.5.3) the rows ``cdf`` of lengths ``length``, offset 0."""
        q = sd[f"{prefix}._quantized_cdf"] if prefix else cdf
        L = (sd[f"{prefix}._cdf_length"] if prefix else np.asarray(length)).reshape(-1)
        self.offset = ([int(v) for v in sd[f"{prefix}._offset"].reshape(-1)] if prefix
                       else [0] * len(L))
        self.n = [int(v) - 1 for v in L]
        self.cdf = [categorical_cdf(row[:int(length)]) for row, length in zip(q, L)]

    def decode(self, dec: RangeDecoder, idx: np.ndarray) -> np.ndarray:
        """Values of elements with table indices ``idx`` (flat, in the caller's order)."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self.n)):
            raise Damaged("table index out of range")
        order = sorted(range(idx.size), key=lambda k: (int(idx[k]), k))  # by table, then order
        v = np.zeros(idx.size, dtype=np.int64)
        escaped = []
        for k in order:
            t = int(idx[k])
            s = dec.decode(self.cdf[t])
            if s == self.n[t] - 1:
                escaped.append(k)
            v[k] = s + self.offset[t]
        for k in escaped:
            t = int(idx[k])
            b = dec.decode(uniform_cdf(34))
            r = 0
            for sh in range(0, b, 16):
                w = min(16, b - sh)
                r |= dec.decode(uniform_cdf(max(2, 1 << w))) << sh
            lo = -((r + 1) // 2) if r & 1 else r // 2 + self.n[t] - 1
            v[k] = lo + self.offset[t]
        return v


# ---- exact integer convolutions (§10.5.1 geometry) ---------------------------------------------
def conv2d(a: np.ndarray, w: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """``a`` (C, H, W) int64, ``w`` (O, C, k, k) int64 → (O, Ho, Wo): cross-correlation, zero
    padding."""
    C, H, W = a.shape
    O, _, kh, kw = w.shape
    ap = np.pad(a, ((0, 0), (pad, pad), (pad, pad)))
    Ho, Wo = (H + 2 * pad - kh) // stride + 1, (W + 2 * pad - kw) // stride + 1
    out = np.zeros((O, Ho, Wo), dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            patch = ap[:, i:i + stride * (Ho - 1) + 1:stride, j:j + stride * (Wo - 1) + 1:stride]
            out += np.tensordot(w[:, :, i, j], patch, axes=(1, 0))
    return out


def conv_transpose2d(a: np.ndarray, w: np.ndarray, stride: int, pad: int, outpad: int) -> np.ndarray:
    """``a`` (C, H, W), ``w`` (C, O, k, k) → (O, (H−1)s − 2p + k + op, …)."""
    C, H, W = a.shape
    _, O, kh, kw = w.shape
    Ho, Wo = (H - 1) * stride - 2 * pad + kh + outpad, (W - 1) * stride - 2 * pad + kw + outpad
    full = np.zeros((O, (H - 1) * stride + kh + outpad, (W - 1) * stride + kw + outpad), np.int64)
    for i in range(kh):
        for j in range(kw):
            full[:, i:i + stride * (H - 1) + 1:stride, j:j + stride * (W - 1) + 1:stride] += \
                np.tensordot(w[:, :, i, j], a, axes=(0, 0))
    return full[:, pad:pad + Ho, pad:pad + Wo]


def _conv(op, a, w):
    kind, stride, pad, outpad = op
    return conv2d(a, w, stride, pad) if kind == "conv" else conv_transpose2d(a, w, stride, pad, outpad)


def _in_axis(op):
    return 1 if op[0] == "conv" else 0


def check_bound(op, a: np.ndarray, w: np.ndarray) -> None:
    """The range rule of §10.5.2 (b): damaged when both A · max_o Σ|W_o| and
    A · max_c S_c reach 2**52."""
    amax = int(np.abs(a).max()) if a.size else 0
    per_in = np.abs(w).sum(axis=tuple(d for d in range(4) if d != _in_axis(op)))
    per_out = np.abs(w).sum(axis=tuple(d for d in range(4) if d != 1 - _in_axis(op)))
    if amax * int(per_out.max()) >= EXACT and amax * int(per_in.max()) >= EXACT:
        raise Damaged("left the exact range")


def i64(x) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind == "f":
        if not np.all(x == np.round(x)):
            raise ValueError("integer weight tensor holds a non-integer")
    return x.astype(np.int64)


# ---- §10.5.1 the layer tables ------------------------------------------------------------------
T5 = ("deconv", 2, 2, 1)
C3 = ("conv", 1, 1, 0)
C1 = ("conv", 1, 0, 0)


def synthesis_ops(name: str, config: dict) -> list:
    """The synthesis's ops in decode order; index i uses ``fx_s.w{i}`` / ``fx_s.b{i}``."""
    if name in ("hyperprior", "hyperprior-ctx", "factorized"):
        return [T5, "igdn"] * (int(config.get("stages", 3)) - 1) + [T5]
    if name == "hyperprior-fast":  # a 2×2 step up, then two 5×5 ones
        return [("deconv", 2, 0, 0), "igdn", T5, "igdn", T5]
    if name == "vqvae":  # conv3 IGDN conv3 IGDN, then the GDN mirror of the analysis
        return [C3, "igdn", C3, "igdn"] + [T5, "igdn"] * (int(config.get("stages", 2)) - 1) + [T5]
    if name.startswith("cnn-ae-"):
        return [("deconv", 2, 1, 1), "relu", ("deconv", 2, 1, 1), "relu", C3]
    if name.startswith("unet-noskip-"):
        ops: list = [C1, "relu"]
        for _ in range(len(config["widths"]) - 1):
            ops += [("deconv", 2, 0, 0), "relu", C3, "relu", C3, "relu"]
        return ops + [C1]
    raise ValueError(f"no layer table for model {name!r}")


HYPER_OPS = [T5, T5, C3]  # int_hs.w0..w2, ReLU after the first two
HYPER_OPS_FAST = [T5, T5, C1]  # hyperprior-fast: the last layer 1×1


class SpecModel:
    def __init__(self, weights):
        blob = ptweights.read(weights)
        self.name, self.config, sd = blob["model_name"], blob["config"], blob["state_dict"]
        self.sd = sd
        self.hyper = self.name in ("hyperprior", "hyperprior-ctx", "hyperprior-fast")
        self.hyper_ops = HYPER_OPS_FAST if self.name == "hyperprior-fast" else HYPER_OPS
        self.ctx = self.name == "hyperprior-ctx"
        self.ops = synthesis_ops(self.name, self.config)
        if self.hyper:
            self.D = 2 ** (int(self.config.get("stages", 3)) + 2)
            self.z_tables = Tables(sd, "entropy_bottleneck")
            self.y_tables = Tables(sd, "gaussian_conditional")
            self.medians = sd["entropy_bottleneck.quantiles"][:, 0, 1].astype(np.float32)
            self.thresholds = [int(t) for t in sd["int_hs.thresholds"]]
            self.gain_int = i64(sd["int_hs.gain_int"])
        elif self.name == "vqvae":
            self.D = 2 ** int(self.config.get("stages", 2))
            self.codebooks = i64(sd["codebooks_fx"])  # (S, K, Dc), units 2**-14
            self.vq_tables = Tables(sd, None, sd["prior_cdf"], sd["prior_cdf_length"])
        else:
            self.D = self._factorized_D()
            nq = sd["dec_inv_gain_fx"].shape[0]
            self.q_tables = [Tables(sd, f"entropy_bottlenecks.{q}") for q in range(nq)]
        self.inv_gain = i64(sd["dec_inv_gain_fx"])
        self.lat_offset = i64(sd["dec_offset_fx"])

    def _factorized_D(self) -> int:
        if self.name == "factorized":
            return 2 ** int(self.config.get("stages", 3))
        if self.name.startswith("cnn-ae-"):
            return 4
        return 2 ** (len(self.config["widths"]) - 1)

    # ---- entropy decoding ----
    def hyper_synthesis(self, z_sym: np.ndarray) -> np.ndarray:
        zf = (z_sym.astype(np.float32) + self.medians[:, None, None]).astype(np.float32)
        a = np.round(zf.astype(np.float64) * 256.0).astype(np.int64)  # half to even
        for i, op in enumerate(self.hyper_ops):
            w, b = i64(self.sd[f"int_hs.w{i}"]), i64(self.sd[f"int_hs.b{i}"])
            bound = _conv(op, np.abs(a), np.abs(w)) + np.abs(b)[:, None, None]
            if bound.size and int(bound.max()) >= EXACT:
                raise Damaged("integer hyper-synthesis left the exact range")
            s = _conv(op, a, w) + b[:, None, None]
            a = s >> 12  # floor division by 2**12
            if i < len(self.hyper_ops) - 1:
                a = np.maximum(a, 0)
        return a

    def _ep_layer(self, key: str, op, a: np.ndarray) -> np.ndarray:
        w, b = i64(self.sd[f"int_ep.{key}_w"]), i64(self.sd[f"int_ep.{key}_b"])
        check_bound(op, a, w)
        return (_conv(op, a, w) + b[:, None, None]) >> 12

    def entropy_params(self, h, ctx_in, prev, q, where):
        """The parameters of the positions ``where`` (H, W) bool: (M, n) arrays in row-major
        order. prev, ep0 and ep1 run on those positions only (§10.5.2 (f)); ctx on the whole
        grid of anchors."""
        M, H, W = h.shape
        p_in = np.zeros((M + 1, H, W), np.int64) if prev is None else \
            np.concatenate([prev, np.full((1, H, W), 256, np.int64)])
        at = lambda t: t[:, where][:, None, :]  # noqa: E731 - the positions as a 1 × n image
        p = self._ep_layer("prev", C1, at(p_in))
        c = np.zeros_like(at(h)) if ctx_in is None else at(self._ep_layer("ctx", C3, ctx_in))
        e = self._ep_layer("ep1", C1, np.maximum(self._ep_layer("ep0", C1, np.concatenate([at(h), c, p])), 0))
        delta, mu = e[:M, 0], e[M:, 0]
        s = h[:, where] + delta + self.gain_int[q][:, None]
        idx = np.searchsorted(np.asarray(self.thresholds), s, side="left")  # thresholds < s
        lin = i64(self.sd["int_ep.gain_lin"])[q][:, None]
        m = (mu * lin + (1 << 15)) >> 16
        return idx, m

    def activations(self, y: np.ndarray, q: int) -> np.ndarray:
        s = y * (1 << 14) + self.lat_offset[q][:, None, None]
        return (s * self.inv_gain[q][:, None, None] + (1 << 13)) >> 14

    def decode_latents(self, streams: list[bytes], shape, q: int, prev=None) -> dict:
        """``streams``: [one stream] or [z stream, y stream]; ``shape``: the padded slice size."""
        H, W = shape
        dz = RangeDecoder(streams[0])
        dy = dz if len(streams) == 1 else RangeDecoder(streams[1])
        if self.name == "vqvae":  # stage s's indices with table s; the latent sums the codes
            h, w = H // self.D, W // self.D
            idx = self.vq_tables.decode(dz, np.broadcast_to(np.arange(q + 1)[:, None, None], (q + 1, h, w)))
            dz.finish()
            idx = idx.reshape(q + 1, h, w)
            if idx.size and (idx.min() < 0 or idx.max() >= self.codebooks.shape[1]):
                raise Damaged("codebook index out of range")
            y = sum(self.codebooks[st][idx[st]] for st in range(q + 1)).transpose(2, 0, 1)
            if y.size and (y.max() > 2**31 - 1 or y.min() < -2**31):
                raise Damaged("latent sum out of the int32 range")
            return {"y": y, "indices": idx}
        if not self.hyper:
            M = self.lat_offset.shape[1]
            h, w = H // self.D, W // self.D
            idx = np.broadcast_to(np.arange(M)[:, None, None], (M, h, w))
            y = self.q_tables[q].decode(dz, idx).reshape(M, h, w)
            dz.finish()
            return {"y": y}
        N, M = self.medians.shape[0], self.gain_int.shape[1]
        zh, zw = H // self.D, W // self.D
        zidx = np.broadcast_to(np.arange(N)[:, None, None], (N, zh, zw))
        z = self.z_tables.decode(dz, zidx).reshape(N, zh, zw)
        h = self.hyper_synthesis(z)
        if not self.ctx:
            idx = np.searchsorted(np.asarray(self.thresholds), h + self.gain_int[q][:, None, None],
                                  side="left")
            y = self.y_tables.decode(dy, idx).reshape(h.shape)
            dz.finish(), dy.finish()
            return {"z": z, "y": y}
        Mh, Hh, Wh = h.shape
        ii, jj = np.meshgrid(np.arange(Hh), np.arange(Wh), indexing="ij")
        a2 = (ii + jj) % 2 == 0
        anchor = np.broadcast_to(a2[None], h.shape)
        y = np.zeros(h.shape, np.int64)
        idx0, m0 = self.entropy_params(h, None, prev, q, a2)  # (M, n): channel-major, as y[anchor]
        y[anchor] = self.y_tables.decode(dy, idx0.reshape(-1)) + m0.reshape(-1)
        ctx_in = self.context_input(y, q) * anchor
        idx1, m1 = self.entropy_params(h, ctx_in, prev, q, ~a2)
        y[~anchor] = self.y_tables.decode(dy, idx1.reshape(-1)) + m1.reshape(-1)
        dz.finish(), dy.finish()
        return {"z": z, "y": y}

    def context_input(self, y: np.ndarray, q: int) -> np.ndarray:
        return self.activations(y, q) >> 6

    # ---- synthesis ----
    def synthesize(self, y: np.ndarray, q: int) -> np.ndarray:
        """Decoded latent → x̂ (float64, the padded slice)."""
        a = self.activations(y, q)
        last = len(self.ops) - 1
        for i, op in enumerate(self.ops):
            if op == "relu":
                a = np.maximum(a, 0)
                continue
            w, b = i64(self.sd[f"fx_s.w{i}"]), i64(self.sd[f"fx_s.b{i}"])
            if op == "igdn":
                g = (a + (1 << 5)) >> 6
                if g.size and int(np.abs(g).max()) >= 1 << 26:
                    raise Damaged("GDN input out of range")
                g2 = g * g
                check_bound(C1, g2, w)
                n = conv2d(g2, w, 1, 0) + b[:, None, None]
                if n.size and int(n.min()) < 0:
                    raise Damaged("negative GDN norm")
                t = np.sqrt(n.astype(np.float64)) * a.astype(np.float64)
                a = np.floor(t * 2.0**-18 + 0.5).astype(np.int64)
                continue
            check_bound(op, a, w)
            s = _conv(op, a, w) + b[:, None, None]
            if i == last:
                return s.astype(np.float64) * 2.0**-34
            a = (s + (1 << 19)) >> 20
        raise ValueError("synthesis does not end with a convolution")


# ---- chunks (§10.1, §10.3) ---------------------------------------------------------------------
def read_varint(chunk: bytes, pos: int) -> tuple[int, int]:
    v = 0
    for i in range(3):
        b = chunk[pos + i]
        v |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            if b == 0 and i > 0:
                raise Damaged("floor varint not minimal")
            return v, pos + i + 1
    raise Damaged("floor varint too long")


def chunk_streams(model: SpecModel, chunk: bytes) -> tuple[int, list[bytes]]:
    """(floor, streams) of a learned chunk (kinds 0x01, 0x03, 0x04)."""
    kind = chunk[0]
    if kind == 1:
        floor, payload = int.from_bytes(chunk[1:3], "little"), chunk[3:]
        if model.hyper:
            nz = int.from_bytes(payload[:4], "little")
            if len(payload) < 4 or nz > len(payload) - 4:
                raise Damaged("bad z stream length")
            return floor, [payload[4:4 + nz], payload[4 + nz:]]
        return floor, [payload]
    if kind in (3, 4):
        floor, pos = read_varint(chunk, 1)
        return floor, [chunk[pos:]]
    raise Damaged(f"not a learned chunk kind: {kind}")


def decode_volume(meta: dict, chunks: list[bytes], model: SpecModel) -> np.ndarray:
    """The stored-value array of a lossy file (formats 2, 4, 5) from its chunks."""
    shape, dtype = meta["shape"], np.dtype(meta["dtype"])
    it, codec = meta["intensity"], meta["codec"]
    q = int(codec["quality"]) - 1
    H, W = shape[-2:]
    Hp, Wp = H + (-H) % model.D, W + (-W) % model.D
    out = np.empty((len(chunks), H, W), dtype=dtype)
    group = int(codec.get("group", 1))
    prev = None
    for k, ch in enumerate(chunks):
        if ch[0] == 0:
            out[k] = np.int64(int.from_bytes(ch[1:9], "little", signed=True))
            prev = None
            continue
        floor, streams = chunk_streams(model, ch)
        use_prev = None
        if ch[0] == 4:
            if k % group == 0 or prev is None:
                raise Damaged("inter-slice chunk without a previous latent")
            use_prev = prev
        lat = model.decode_latents(streams, (Hp, Wp), q, use_prev)
        if model.ctx:
            prev = model.context_input(lat["y"], q)
        x = model.synthesize(lat["y"], q)[0, :H, :W]
        v = np.clip(np.rint(x * it["scale"]) + it["offset"], it["min"], it["max"]).astype(dtype)
        if floor:
            v[v <= it["min"] + floor] = it["min"]
        out[k] = v
    return out.reshape(shape)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bmz.bitstream import container  # the container (§5) only: not the codec
    from bmz.codec import zoo
    with container.BmzReader(argv[0]) as r:
        meta, chunks = r.meta, [r.chunk(k) for k in range(r.n_slices)]
    weights = argv[1] if len(argv) > 1 else zoo.weights_for(meta["codec"]["model"],
                                                            meta["codec"]["weights_sha256"])
    arr = decode_volume(meta, list(chunks), SpecModel(weights))
    print(hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest())
    return 0


if __name__ == "__main__":
    sys.exit(main())
