"""The synthesis transform in fixed point: the same decoded array on every machine.

A float32 convolution sums its products in an order that depends on the thread count, the BLAS,
the CPU's vector width and the GPU's algorithm choice, so two machines can decode the same stream
to arrays that differ by one stored unit here and there. :class:`FixedPointSynthesis` replays a
trained synthesis transform (``nn.Sequential`` of ``Conv2d``, ``ConvTranspose2d``, ``ReLU`` and
inverse GDN, nested ``Sequential`` allowed) on integers:

* activations are integers in units of ``2**-A`` (``A`` = :data:`ACT_BITS`), weights integers in
  units of ``2**-F`` (``F`` = :data:`WEIGHT_BITS`), biases in units of ``2**-(A+F)``;
* a convolution is computed in float64 on those integers. Every partial sum is an integer, and
  the layer's bound ``max|a| · max_o Σ|W_o|`` (checked on every call) keeps it below ``2**52``, so
  float64 represents every partial sum exactly and the result is the same in any summation order.
  When the bound would be exceeded, the input channels are split into groups that each respect it
  and the group results are added in int64 — still exact;
* rescaling after a layer is ``floor((s + 2**(F-1)) / 2**F)`` on exact integers; ReLU is
  ``max(a, 0)``;
* inverse GDN, ``x · sqrt(β + Σ γ x²)``, is an exact integer norm (as above, with ``a²``), then one
  IEEE-754 float64 square root and one multiplication, both correctly rounded by the standard on
  every conforming CPU and GPU, then a floor. No fused or reordered floating-point arithmetic
  touches a value whose rounding could differ.

The last layer's output is returned as float64 ``s · 2**-(A+F)`` — exact. Together with the
integer-exact entropy decoding (:mod:`bmz.codec.entropy`), a ``.bmz`` file therefore decodes to the
identical array on any thread count, batch, slice order, machine or device.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import GDN

#: fractional bits of the activations (resolution 2**-14 of a latent unit)
ACT_BITS = 14
#: fractional bits of weights and GDN parameters (even: the GDN square root halves it); weights
#: need this many for the fixed-point synthesis to match the float one at the top qualities
#: (benchmarks/fixedpoint.py; benchmarks/results/fixedpoint.md)
WEIGHT_BITS = 20
#: fractional bits of the activations entering a GDN norm (Σ γ x² needs far less resolution
#: than x itself, and its squares must stay small enough to be summed exactly)
GDN_ACT_BITS = 8
#: float64 represents every integer of magnitude below 2**53; keep a bit of margin
EXACT_LIMIT = 2.0**52


class FixedPointError(ValueError):
    """Activations left the range where fixed-point arithmetic is exact (a damaged or forged
    stream: a trained model never gets there)."""


def _flatten(net: nn.Module) -> list[nn.Module]:
    ops: list[nn.Module] = []
    for m in net.children() if isinstance(net, nn.Sequential) else [net]:
        if isinstance(m, nn.Sequential):
            ops += _flatten(m)
        elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.ReLU)):
            ops.append(m)
        elif isinstance(m, GDN):
            if not m.inverse:
                raise TypeError("fixed-point synthesis supports inverse GDN only")
            ops.append(m)
        else:
            raise TypeError(f"fixed-point synthesis does not support {type(m).__name__}")
    return ops


#: input values per strip of the matrix-product convolution (bounds its scratch memory)
GEMM_STRIP_VALUES = 1 << 22


def _geometry(m: nn.Module) -> tuple[int, int, int, int] | None:
    """``(stride, kernel, padding, output padding)`` of a square, ungrouped, undilated layer."""
    if getattr(m, "groups", 1) != 1 or tuple(getattr(m, "dilation", (1, 1))) != (1, 1):
        return None
    k, s, p = m.kernel_size, m.stride, m.padding
    op = getattr(m, "output_padding", (0, 0))
    if k[0] != k[1] or s[0] != s[1] or p[0] != p[1] or op[0] != op[1] or isinstance(p, str):
        return None
    return s[0], k[0], p[0], op[0]


def _taps(s: int, k: int, p: int) -> list[list[tuple[int, int]]]:
    """Per output phase ``r`` (0 ≤ r < s) of a transposed convolution, the ``(d, i)`` pairs: output
    row ``s·t + r`` takes input row ``t + d`` through kernel row ``i`` (``s·(t + d) − p + i =
    s·t + r``)."""
    return [[(d, r + p - s * d) for d in range(-k, k + 1) if 0 <= r + p - s * d < k]
            for r in range(s)]


def _gemm_conv(m: nn.Module, a: torch.Tensor, w: torch.Tensor) -> torch.Tensor | None:
    """A transposed convolution of float64 integers as one matrix product (BLAS), or ``None``
    where this does not pay or does not apply. The output of a transposed convolution of stride
    ``s`` whose output is exactly ``s`` × its input splits into ``s²`` phases, each an ordinary
    convolution of the input over the few input positions that reach it (the sub-pixel view of
    Shi et al., CVPR 2016); one product computes every phase and channel from the unfolded input.
    Every product and partial sum is an integer the caller keeps below 2**52
    (:func:`exact_conv`), so the result is exactly the direct convolution's whatever the order
    of the sums. It pays where the product has many rows (``s²`` × output channels ≥ 64:
    benchmarks/results/speed.md); a layer to one channel stays with PyTorch. Rows are done in
    strips to bound the scratch memory."""
    g = _geometry(m) if isinstance(m, nn.ConvTranspose2d) else None
    if g is None or a.dim() != 4:
        return None
    s, k, p, op = g
    B, C, H, W = a.shape
    Co = w.shape[1]
    if s * s * Co < 64 or (H - 1) * s - 2 * p + k + op != s * H or \
            (W - 1) * s - 2 * p + k + op != s * W:
        return None
    taps = _taps(s, k, p)
    # the size condition makes 2p = k + op − s < k, so d = 0 is a tap of phase 0: lo ≤ 0 ≤ hi
    ds = sorted({d for ph in taps for d, _ in ph})
    lo, hi = ds[0], ds[-1]
    K = hi - lo + 1  # the input window of one position of the phase grid
    Wp = torch.zeros((s, s, Co, C, K, K), dtype=w.dtype, device=w.device)
    for ry, ph_y in enumerate(taps):
        for rx, ph_x in enumerate(taps):
            for dy, i in ph_y:
                for dx, j in ph_x:
                    Wp[ry, rx, :, :, dy - lo, dx - lo] = w[:, :, i, j].t()
    Wm = Wp.reshape(s * s * Co, C * K * K)
    x = F.pad(a, (-lo, hi, -lo, hi)) if K > 1 else a
    rows = max(1, GEMM_STRIP_VALUES // max(1, C * K * K * W))
    y = torch.empty((B, s * s * Co, H, W), dtype=a.dtype)
    for b in range(B):
        for r0 in range(0, H, rows):
            r1 = min(H, r0 + rows)
            xs = x[b:b + 1, :, r0:r1 + K - 1]
            cols = xs.reshape(C, (r1 - r0) * W) if K == 1 else F.unfold(xs, K)[0]
            y[b, :, r0:r1] = (Wm @ cols).reshape(-1, r1 - r0, W)
    return y.reshape(B, s, s, Co, H, W).permute(0, 3, 4, 1, 5, 2).reshape(B, Co, s * H, s * W)


def conv_like(m: nn.Module, a: torch.Tensor, w: torch.Tensor,
              b: torch.Tensor | None = None) -> torch.Tensor:
    """``m``'s convolution (plain or transposed, same geometry) with weights ``w`` and bias ``b``;
    for a GDN layer the 1×1 convolution over channels of its norm. Float64 transposed convolutions
    on the CPU go through :func:`_gemm_conv` where that pays (PyTorch's float64 transposed
    convolution reaches a fraction of the BLAS's speed)."""
    if a.dtype == torch.float64 and a.device.type == "cpu" and b is None:
        y = _gemm_conv(m, a, w)
        if y is not None:
            return y
    if isinstance(m, nn.ConvTranspose2d):
        return F.conv_transpose2d(a, w, b, stride=m.stride, padding=m.padding,
                                  output_padding=m.output_padding, groups=m.groups)
    if isinstance(m, nn.Conv2d):
        return F.conv2d(a, w, b, stride=m.stride, padding=m.padding, groups=m.groups)
    return F.conv2d(a, w, b)


def _in_dim(m: nn.Module) -> int:
    return 0 if isinstance(m, nn.ConvTranspose2d) else 1


def _absmax(a: torch.Tensor) -> float:
    if not a.numel():
        return 0.0
    lo, hi = torch.aminmax(a)
    return max(-float(lo), float(hi))


def weight_bound(m: nn.Module, w: torch.Tensor) -> float:
    """``max_o Σ|W_o|``: with ``max|a|`` it bounds every partial sum of the convolution."""
    dout = 0 if _in_dim(m) == 1 else 1
    return float(w.abs().sum(dim=tuple(d for d in range(4) if d != dout)).max())


def exact_conv(m: nn.Module, a: torch.Tensor, w: torch.Tensor,
               wbound: float | None = None) -> torch.Tensor:
    """The convolution of integer-valued float64 ``a`` with integer weights ``w``, with every
    partial sum exact (float64 result; integer-valued)."""
    amax = _absmax(a)
    din = _in_dim(m)
    bound = amax * (weight_bound(m, w) if wbound is None else wbound)
    if bound < EXACT_LIMIT:
        return conv_like(m, a, w)
    if getattr(m, "groups", 1) != 1:
        raise FixedPointError("fixed-point synthesis left the exact range (grouped convolution)")
    # split the input channels into groups that each keep every partial sum exact, add the
    # group results in int64 (exact), and round the total to float64 once (deterministic)
    per_in = w.abs().sum(dim=tuple(d for d in range(4) if d != din)) * amax  # bound per channel
    if float(per_in.max()) >= EXACT_LIMIT:
        raise FixedPointError("fixed-point synthesis left the exact range "
                              f"(activation magnitude {amax:.3g})")
    total, start, acc = 0.0, 0, None
    n = a.shape[1]
    for i in range(n + 1):
        if i == n or total + float(per_in[i]) >= EXACT_LIMIT:
            sl = slice(start, i)
            wi = w[:, sl] if din == 1 else w[sl]
            part = conv_like(m, a[:, sl], wi).to(torch.int64)
            acc = part if acc is None else acc + part
            start, total = i, 0.0
        if i < n:
            total += float(per_in[i])
    return acc.to(torch.float64)


@torch.no_grad()
def activation_scales(net: nn.Module, inputs: list[torch.Tensor], top_bits: int = 4) -> dict[int, int]:
    """Powers of two that bring a synthesis' activations back to a few units, for
    :meth:`FixedPointSynthesis.build`: for each convolution but the last whose float output on
    ``inputs`` (typical latents) reaches ``2**top_bits`` or more, ``e < 0`` with its largest
    magnitude times ``2**e`` below ``2**top_bits``. Nothing else is rescaled. A transform
    trained without anything pinning its internal scale (a latent that drifted, an inverse GDN
    with a vanishing ``γ``) can reach magnitudes where the exact integer sums, and the
    resolution of ``γ``, run out; rescaled, it decodes exactly what it computes in float."""
    ops = _flatten(net)
    peak: dict[int, float] = {}
    for x in inputs:
        a = x.to(torch.float32)
        for i, m in enumerate(ops):
            a = m(a)
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                peak[i] = max(peak.get(i, 0.0), _absmax(a))
    last = len(ops) - 1
    out = {}
    for i, v in peak.items():
        if i != last and v >= 2.0**top_bits:
            out[i] = top_bits - 1 - math.floor(math.log2(v))
    return out


class FixedPointSynthesis(nn.Module):
    """Fixed-point twin of a synthesis ``net`` (see the module docstring). ``build()`` quantises the
    float weights once, after training; the integers live in buffers and ship with the weights."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self._ops = _flatten(net)  # the float layers, referenced (not registered a second time)
        for i, m in enumerate(self._ops):
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                self.register_buffer(f"w{i}", torch.zeros(m.weight.shape, dtype=torch.float64))
                self.register_buffer(f"b{i}", torch.zeros(m.weight.shape[1 - _in_dim(m)] * (
                    m.groups if isinstance(m, nn.ConvTranspose2d) else 1), dtype=torch.int64))
            elif isinstance(m, GDN):
                C = m.beta.shape[0]
                self.register_buffer(f"w{i}", torch.zeros((C, C, 1, 1), dtype=torch.float64))
                self.register_buffer(f"b{i}", torch.zeros(C, dtype=torch.int64))
        # max_o Σ|W_o| per layer (see exact_conv), set by build()
        self.register_buffer("wbounds", torch.zeros(len(self._ops), dtype=torch.float64))
        self.register_buffer("built", torch.zeros((), dtype=torch.int64))

    @torch.no_grad()
    def build(self, log2_scales: dict[int, int] | None = None) -> None:
        """Quantise the float layers. ``log2_scales`` (layer index → ``e``) makes convolution
        ``i`` compute its output times ``2**e`` (:func:`activation_scales`): the next layer is
        adjusted so that the function is unchanged — a convolution's weights are divided by
        the scale of its input, an inverse GDN's ``γ`` by its square (``x·sqrt(β + γx²)`` scales
        with ``x`` when ``γ`` absorbs ``1/c²``), a ReLU passes the scale on. The last layer keeps
        scale 1. Nothing of this reaches the decoder but the integers."""
        A, Fb = ACT_BITS, WEIGHT_BITS
        log2_scales = log2_scales or {}
        cin = 0  # log2 of the scale of the current layer's input
        for i, m in enumerate(self._ops):
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                cout = 0 if i == len(self._ops) - 1 else int(log2_scales.get(i, 0))
                w = m.weight.detach().double() * 2.0 ** (cout - cin)
                getattr(self, f"w{i}").copy_(torch.round(w * 2.0**Fb))
                b = m.bias.detach().double() if m.bias is not None else torch.zeros(
                    getattr(self, f"b{i}").shape, dtype=torch.float64)
                getattr(self, f"b{i}").copy_(torch.round(b * 2.0 ** (A + Fb + cout)).long())
                cin = cout
            elif isinstance(m, GDN):
                C = m.beta.shape[0]
                gamma = m.gamma_reparam(m.gamma).detach().double().reshape(C, C, 1, 1) * 2.0 ** (-2 * cin)
                beta = m.beta_reparam(m.beta).detach().double()
                getattr(self, f"w{i}").copy_(torch.round(gamma * 2.0**Fb))
                getattr(self, f"b{i}").copy_(torch.round(beta * 2.0 ** (2 * GDN_ACT_BITS + Fb)).long())
            if not isinstance(m, nn.ReLU):
                self.wbounds[i] = weight_bound(m, getattr(self, f"w{i}"))
        self.built.fill_(1)

    def _conv(self, i: int, m: nn.Module, a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return exact_conv(m, a, w, float(self.wbounds[i]))

    @torch.no_grad()
    def forward(self, a: torch.Tensor) -> torch.Tensor:
        """Integer input activations ``a`` (units ``2**-ACT_BITS``) → float64 output.

        Values are held in float64 throughout: every one is an integer below 2**53 (so exact)
        until the last layer, and every operation is either exact or a single IEEE-754 operation
        (sqrt, multiply), hence identical on every conforming machine."""
        if int(self.built) != 1:
            raise RuntimeError("fixed-point synthesis not built: call model.freeze() first")
        A, Fb, G = ACT_BITS, WEIGHT_BITS, GDN_ACT_BITS
        half, inv = 2.0 ** (Fb - 1), 2.0**-Fb
        last = len(self._ops) - 1
        a = a.to(torch.float64)
        for i, m in enumerate(self._ops):
            if isinstance(m, nn.ReLU):
                a = torch.clamp_min(a, 0.0)
                continue
            w, b = getattr(self, f"w{i}"), getattr(self, f"b{i}").to(torch.float64)
            if isinstance(m, GDN):
                g = torch.floor((a + 2.0 ** (A - G - 1)).mul_(2.0 ** -(A - G)))  # units 2**-G
                if _absmax(g) >= 2.0**26:  # g² must be exact
                    raise FixedPointError("fixed-point synthesis left the exact range (GDN input)")
                norm = self._conv(i, m, g.mul_(g), w).add_(b[None, :, None, None])  # 2**-(2G+F)
                if norm.numel() and float(norm.min()) < 0:
                    raise FixedPointError("negative GDN norm")
                a = norm.sqrt_().mul_(a).mul_(2.0 ** -(G + Fb // 2)).add_(0.5).floor_()
                continue
            s = self._conv(i, m, a, w).add_(b[None, :, None, None])  # units 2**-(A+F)
            if i == last:  # the output layer: its exact sum, unrounded
                return s.mul_(2.0 ** -(A + Fb))
            a = s.add_(half).mul_(inv).floor_()
        return a * 2.0**-A
