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
* :class:`TableCoder` — CompressAI's rANS coder over frozen, quantised CDF tables (stored with the
  weights, never recomputed at load), with the tables converted to Python lists once.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

#: fractional bits of activations and of weights in the integer hyper-synthesis
ACT_BITS = 8
WEIGHT_BITS = 12
#: |partial sums| must stay below this for float64 integer arithmetic to be exact
_EXACT_LIMIT = 2.0**52


def _conv(m: nn.Module, a: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``m``'s convolution (plain or transposed, same geometry) with weights ``w`` and bias ``b``."""
    if isinstance(m, nn.ConvTranspose2d):
        return F.conv_transpose2d(a, w, b, stride=m.stride, padding=m.padding,
                                  output_padding=m.output_padding)
    return F.conv2d(a, w, b, stride=m.stride, padding=m.padding)


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
            acc = _conv(m, a, w, b)
            # exactness guard: a bound on every partial sum (|a| * |w| summed), not only the result
            if float(_conv(m, a.abs(), w.abs(), b.abs()).max()) >= _EXACT_LIMIT:
                raise OverflowError("integer hyper-synthesis left the exact float64 range")
            a = torch.floor(acc / 2.0**WEIGHT_BITS)
            if i < n - 1:
                a = torch.clamp_min(a, 0.0)
        return a.long()

    def indexes(self, z_hat: torch.Tensor, q: int) -> torch.Tensor:
        """Gaussian-table index (int32) of each element of the gained latent for quality ``q``."""
        s = self.log2_scale_fixed(z_hat) + self.gain_int[q][None, :, None, None]
        return torch.bucketize(s, self.thresholds, right=False).to(torch.int32)


class TableCoder:
    """rANS coding of int32 symbols with per-element table indices over frozen CDF tables."""

    def __init__(self, cdf: list[list[int]], cdf_length: list[int], offset: list[int]):
        self.cdf, self.cdf_length, self.offset = cdf, cdf_length, offset

    @classmethod
    def from_entropy_model(cls, m) -> "TableCoder":
        if m._quantized_cdf.numel() == 0:
            raise RuntimeError("entropy model has no CDF tables: call model.freeze() first")
        lengths = m._cdf_length.reshape(-1).tolist()
        # rows trimmed to their own length: the C++ coder copies every table on every call
        cdf = [row[:n] for row, n in zip(m._quantized_cdf.tolist(), lengths)]
        return cls(cdf, lengths, m._offset.reshape(-1).tolist())

    def encode(self, symbols: torch.Tensor, indexes: torch.Tensor) -> bytes:
        from compressai.ans import RansEncoder

        return RansEncoder().encode_with_indexes(
            symbols.reshape(-1).int().tolist(), indexes.reshape(-1).int().tolist(),
            self.cdf, self.cdf_length, self.offset)

    def decode(self, data: bytes, indexes: torch.Tensor) -> torch.Tensor:
        from compressai.ans import RansDecoder

        values = RansDecoder().decode_with_indexes(
            bytes(data), indexes.reshape(-1).int().tolist(), self.cdf, self.cdf_length, self.offset)
        return torch.tensor(values, dtype=torch.int32).reshape(indexes.shape)
