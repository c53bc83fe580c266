"""Entropy coding that decodes the same on every machine.

Two pieces:

* :class:`IntegerHyperSynthesis` — the hyper-synthesis ``h_s`` evaluated in fixed point. Its input
  (the decoded hyper-latent ẑ) and its weights are integers; every convolution is computed in
  float64 on integer values whose partial sums stay far below 2**53, so every sum is *exact* whatever
  the summation order, thread count, batch size, BLAS or CPU. Rescaling is a floor division by a power
  of two, the activation a ReLU, the quality gain an integer addition and the CDF index a comparison
  against integer thresholds. The indices that steer the entropy decoder are therefore a pure integer
  function of the stream (Ballé, Johnston & Minnen, ICLR 2019), which removes the CompressAI trap where
  a float scale on the other side of a table boundary makes the rest of the stream decode to garbage.
* :class:`TableCoder` — range coding (``constriction``, bounds-checked) over CompressAI's frozen,
  quantised CDF tables (stored with the weights, never recomputed at load).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from .fixedpoint import _absmax, conv_like, weight_bound

#: fractional bits of activations and of weights in the integer hyper-synthesis
ACT_BITS = 8
WEIGHT_BITS = 12
#: |partial sums| must stay below this for float64 integer arithmetic to be exact
_EXACT_LIMIT = 2.0**52


def channel_indexes(shape: tuple[int, ...]) -> torch.Tensor:
    """Table index of every element of a ``(B, C, H, W)`` latent coded with one table per channel."""
    return torch.arange(shape[1], dtype=torch.int32)[None, :, None, None].expand(*shape)


class IntegerHyperSynthesis(nn.Module):
    """Fixed-point twin of a ``h_s`` made of Conv2d / ConvTranspose2d layers and ReLUs.

    ``build()`` quantises the float layers (after training); ``indexes(z_hat, q)`` returns the
    Gaussian-table index of every latent element for quality ``q``. All state is held in buffers,
    so it travels with the weights and is never recomputed from floats at load time.
    """

    def __init__(self, h_s: nn.Sequential, log2_gain: nn.Parameter, log2_min: float,
                 log2_max: float, levels: int):
        super().__init__()
        # keep references without registering h_s twice as a submodule
        self.__dict__["_h_s"] = h_s
        self.__dict__["_log2_gain"] = log2_gain
        self._layers = [m for m in h_s if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        for i, m in enumerate(self._layers):
            self.register_buffer(f"w{i}", torch.zeros(m.weight.shape, dtype=torch.float64))
            self.register_buffer(f"b{i}", torch.zeros(m.bias.shape, dtype=torch.float64))
        self.register_buffer("gain_int", torch.zeros(tuple(log2_gain.shape), dtype=torch.int64))
        self.register_buffer("thresholds", torch.zeros(levels - 1, dtype=torch.int64))
        self.register_buffer("built", torch.zeros((), dtype=torch.int64))
        self._log2_min, self._log2_max, self._levels = log2_min, log2_max, levels

    @torch.no_grad()
    def build(self) -> None:
        for i, m in enumerate(self._layers):
            getattr(self, f"w{i}").copy_(torch.round(m.weight.detach().double() * 2.0**WEIGHT_BITS))
            getattr(self, f"b{i}").copy_(
                torch.round(m.bias.detach().double() * 2.0 ** (WEIGHT_BITS + ACT_BITS)))
        self.gain_int.copy_(torch.round(self._log2_gain.detach().double() * 2.0**ACT_BITS).long())
        t = np.linspace(self._log2_min, self._log2_max, self._levels)[:-1]
        self.thresholds.copy_(torch.from_numpy(np.floor(t * 2.0**ACT_BITS).astype(np.int64)))
        self.built.fill_(1)

    @torch.no_grad()
    def log2_scale_fixed(self, z_hat: torch.Tensor) -> torch.Tensor:
        """log2 σ of the ungained latent, as int64 in units of 2**-ACT_BITS."""
        if int(self.built) != 1:
            raise RuntimeError("integer hyper-synthesis not built: call model.freeze() first")
        a = torch.round(z_hat.detach().to("cpu", torch.float64) * 2.0**ACT_BITS)
        n = len(self._layers)
        for i, m in enumerate(self._layers):
            w, b = getattr(self, f"w{i}"), getattr(self, f"b{i}")
            # the range rule (docs/FORMAT.md 10.5.2 (e)): damaged where the layer applied to
            # |a|, |W|, |B| reaches 2**52 — checked by that second convolution only when the
            # cheap bound max|a| · max_o Σ|W_o| + max|B| (never below it) does not exclude it
            if _absmax(a) * weight_bound(m, w) + _absmax(b) >= _EXACT_LIMIT and \
                    float(conv_like(m, a.abs(), w.abs(), b.abs()).max()) >= _EXACT_LIMIT:
                raise OverflowError("integer hyper-synthesis left the exact float64 range")
            acc = conv_like(m, a, w) + b[None, :, None, None]
            a = torch.floor(acc / 2.0**WEIGHT_BITS)
            if i < n - 1:
                a = torch.clamp_min(a, 0.0)
        return a.long()

    def indexes(self, z_hat: torch.Tensor, q: int) -> torch.Tensor:
        """Gaussian-table index (int32) of each element of the gained latent for quality ``q``."""
        s = self.log2_scale_fixed(z_hat) + self.gain_int[q][None, :, None, None]
        return torch.bucketize(s, self.thresholds, right=False).to(torch.int32)


def _cs():
    """``constriction.stream`` (a Rust extension: its submodules are attributes, not packages)."""
    import constriction

    return constriction.stream


def _table_order(idx: np.ndarray) -> np.ndarray:
    """The stable order that groups elements by table index (ascending, raster order within a
    table). Indices are sorted as 16-bit integers where they fit (NumPy's stable sort of a 16-bit
    type is a radix sort, several times faster; the order is the same, being stable)."""
    if idx.size and 0 <= idx.min() and idx.max() < 1 << 16:
        return np.argsort(idx.astype(np.uint16), kind="stable")
    return np.argsort(idx, kind="stable")


def _runs(sorted_idx: np.ndarray):
    """``(start, end)`` of each run of equal table indices in a sorted index array."""
    bounds = np.flatnonzero(np.diff(sorted_idx)) + 1
    return [(int(a), int(b)) for a, b in zip(np.r_[0, bounds], np.r_[bounds, len(sorted_idx)]) if b > a]


#: bit length limit of an escaped value (any int32 value codes; trained latents are a few hundred)
_ESCAPE_BITS = 33


class TableCoder:
    """Range coding of int32 symbols with per-element table indices over frozen CDF tables.

    The tables are CompressAI's quantised CDFs (16-bit precision, shipped in the weights file);
    coding is ``constriction``'s range coder (Rust, bounds-checked: a forged or damaged stream can
    only decode to some values or raise an error — never read outside its buffer, never crash
    the process, as CompressAI's C++ rANS decoder does on forged input).

    Stream layout (chunk format 2, see docs/FORMAT.md §10.1): the elements are coded grouped by
    table index (ascending; in raster order within a table), which the decoder knows before
    decoding; element value ``v`` of table ``t`` is symbol ``v − offset[t]`` when that lies in
    ``[0, n_t − 1)`` and otherwise the escape symbol ``n_t − 1``; after all groups, each escaped
    value (in the same order) follows as ``nb`` = bit length of ``r`` (uniform over 0…33) and the
    ``nb`` bits of ``r`` (uniform, 16 bits at a time, least significant first), where ``r`` is
    ``2(v − offset − n_t + 1)`` above the table and ``−2(v − offset) − 1`` below it.
    """

    def __init__(self, cdf: list[list[int]], cdf_length: list[int], offset: list[int]):
        self.cdf, self.cdf_length, self.offset = cdf, cdf_length, offset
        self._offset = np.asarray(offset, dtype=np.int64)
        self._n = np.asarray(cdf_length, dtype=np.int64) - 1  # symbols per table, escape included
        self._models: dict[int, object] = {}

    @classmethod
    def from_entropy_model(cls, m) -> "TableCoder":
        if m._quantized_cdf.numel() == 0:
            raise RuntimeError("entropy model has no CDF tables: call model.freeze() first")
        lengths = m._cdf_length.reshape(-1).tolist()
        cdf = [row[:n] for row, n in zip(m._quantized_cdf.tolist(), lengths)]
        return cls(cdf, lengths, m._offset.reshape(-1).tolist())

    @classmethod
    def from_tables(cls, quantized_cdf: torch.Tensor, cdf_length: torch.Tensor,
                    offset: torch.Tensor) -> "TableCoder":
        """A coder over frozen tables held as tensors (rows of ``quantized_cdf`` padded; each row's
        first ``cdf_length`` entries are its table), e.g. those of :func:`quantized_cdf_tables`."""
        lengths = [int(n) for n in cdf_length.reshape(-1).tolist()]
        if not lengths or min(lengths) < 3:
            raise RuntimeError("no CDF tables: call model.freeze() first")
        cdf = [row[:n] for row, n in zip(quantized_cdf.tolist(), lengths)]
        return cls(cdf, lengths, [int(v) for v in offset.reshape(-1).tolist()])

    def _model(self, t: int):
        mdl = self._models.get(t)
        if mdl is None:
            pmf = np.diff(np.asarray(self.cdf[t], dtype=np.float64)) / 65536.0
            mdl = self._models[t] = _cs().model.Categorical(pmf, perfect=False)
        return mdl

    def encode(self, symbols: torch.Tensor, indexes: torch.Tensor) -> bytes:
        """One stream holding ``symbols`` coded with the tables ``indexes`` (see the class doc)."""
        enc = _cs().queue.RangeEncoder()
        self.encode_into(enc, symbols, indexes)
        return stream_bytes(enc)

    def encode_into(self, enc, symbols: torch.Tensor, indexes: torch.Tensor) -> None:
        """Append ``symbols`` to an open range encoder (several coders may share one stream; the
        decoder reads them back in the same order with :meth:`decode_from`)."""
        Uniform = _cs().model.Uniform
        v = symbols.reshape(-1).numpy().astype(np.int64)
        idx = indexes.reshape(-1).numpy().astype(np.int64)
        order = _table_order(idx)
        v, idx = v[order], idx[order]
        s = v - self._offset[idx]
        n = self._n[idx]
        esc = (s < 0) | (s >= n - 1)
        s = np.where(esc, n - 1, s).astype(np.int32)
        for a, b in _runs(idx):
            enc.encode(s[a:b], self._model(int(idx[a])))
        for k in np.flatnonzero(esc):
            lo = int(v[k] - self._offset[idx[k]])
            r = -2 * lo - 1 if lo < 0 else 2 * (lo - int(n[k]) + 1)
            nb = r.bit_length()
            if nb > _ESCAPE_BITS:
                raise ValueError(f"latent value {int(v[k])} out of the codable range")
            enc.encode(nb, Uniform(_ESCAPE_BITS + 1))
            for sh in range(0, nb, 16):
                w = min(16, nb - sh)
                enc.encode((r >> sh) & ((1 << w) - 1), Uniform(max(2, 1 << w)))

    def decode(self, data: bytes, indexes: torch.Tensor) -> torch.Tensor:
        """Decode values for ``indexes``; raises ValueError on a stream that cannot be decoded
        or that holds data after its last value (:func:`check_exhausted`)."""
        dec = stream_decoder(data)
        out = self.decode_from(dec, indexes)
        check_exhausted(dec)
        return out

    def decode_from(self, dec, indexes: torch.Tensor) -> torch.Tensor:
        """Read values for ``indexes`` from an open range decoder (:func:`stream_decoder`);
        raises ValueError on a stream that cannot be decoded."""
        Uniform = _cs().model.Uniform
        idx = indexes.reshape(-1).numpy().astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self._n)):
            raise ValueError("table index out of range")
        order = _table_order(idx)
        sidx = idx[order]
        s = np.empty(len(sidx), dtype=np.int64)
        try:
            for a, b in _runs(sidx):
                s[a:b] = dec.decode(self._model(int(sidx[a])), int(b - a))
            n = self._n[sidx]
            v = s + self._offset[sidx]
            for k in np.flatnonzero(s == n - 1):
                nb = int(dec.decode(Uniform(_ESCAPE_BITS + 1)))
                r = 0
                for sh in range(0, nb, 16):
                    w = min(16, nb - sh)
                    r |= int(dec.decode(Uniform(max(2, 1 << w)))) << sh
                lo = -((r + 1) // 2) if r & 1 else r // 2 + int(n[k]) - 1
                v[k] = lo + self._offset[sidx[k]]
        except (RuntimeError, ValueError, OverflowError, AssertionError) as e:  # constriction's
            raise ValueError(f"entropy-coded stream cannot be decoded ({e})") from None
        out = np.empty_like(v)
        out[order] = v
        return torch.from_numpy(out.astype(np.int32)).reshape(indexes.shape)


def quantized_cdf_tables(pmf: np.ndarray, precision: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen coding tables of categorical distributions: ``pmf`` ``(T, n)`` (rows of
    non-negative weights over the symbols ``0 … n − 1``) → ``(quantized_cdf (T, n + 2) int32,
    cdf_length (T,) int32)`` for :meth:`TableCoder.from_tables` (offset 0).

    The same quantisation as CompressAI's entropy models (``pmf_to_quantized_cdf`` at 16-bit
    precision, each row followed by an escape symbol of zero mass): every symbol, the escape
    included, gets a frequency of at least 1/2**16, so every symbol is codable whatever the
    weights. Computed once, by ``freeze()``; the tables ship in the weights and are never
    recomputed, so every machine codes with the very same integers."""
    from compressai._CXX import pmf_to_quantized_cdf

    pmf = np.asarray(pmf, dtype=np.float64)
    if pmf.ndim != 2 or pmf.shape[1] < 1 or not np.all(np.isfinite(pmf)) or np.any(pmf < 0):
        raise ValueError("pmf must be a finite, non-negative (T, n) array")
    tot = pmf.sum(axis=1, keepdims=True)
    pmf = np.where(tot > 0, pmf / np.where(tot > 0, tot, 1.0), 1.0 / pmf.shape[1])
    T, n = pmf.shape
    cdf = torch.zeros((T, n + 2), dtype=torch.int32)
    for t in range(T):
        row = pmf_to_quantized_cdf(pmf[t].tolist() + [0.0], precision)
        cdf[t, :len(row)] = torch.tensor(row, dtype=torch.int32)
    return cdf, torch.full((T,), n + 2, dtype=torch.int32)


def stream_encoder():
    """An empty range encoder (``constriction.stream.queue.RangeEncoder``) for
    :meth:`TableCoder.encode_into`; :func:`stream_bytes` seals it."""
    return _cs().queue.RangeEncoder()


def stream_bytes(enc) -> bytes:
    """The sealed stream of a range encoder: its 32-bit words, little-endian."""
    return enc.get_compressed().astype("<u4").tobytes()


def check_exhausted(*decoders) -> None:
    """Refuse words left in a stream after its last symbol was decoded (ValueError). The range
    decoder reads two words ahead, so this detects two or more extra words; a writer's sealed
    stream always passes (docs/FORMAT.md §10.1)."""
    for dec in decoders:
        if not dec.maybe_exhausted():
            raise ValueError("entropy-coded stream holds data after its last symbol")


def stream_decoder(data: bytes):
    """A range decoder over stream bytes (a whole number of 32-bit little-endian words)."""
    if len(data) % 4:
        raise ValueError(f"entropy-coded stream of {len(data)} bytes is not a whole number of words")
    return _cs().queue.RangeDecoder(np.frombuffer(bytes(data), dtype="<u4").astype(np.uint32))
