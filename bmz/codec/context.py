"""The scale hyperprior with a context model: checkerboard (spatial) and inter-slice context,
decoded in parallel and integer-exact.

::

    x ─g_a─► y ──×gain[q]──► Q ─► ŷ ──×inv_gain[q]──► g_s ─► x̂            (as ``hyperprior``)
             └─|·|─h_a─► z ─► Q ─► ẑ ─h_s─► h  (log2 σ of the ungained latent, as ``hyperprior``)

    entropy parameters of ŷ (mean μ and log2 σ, per element):
        [h, ctx, prev] ─ 1×1 conv ─ ReLU ─ 1×1 conv ─► (Δ, μ);  log2 σ = h + Δ + log2 gain[q]
        ctx  = conv3×3(ŷ of the anchor half, ungained)  — zero for the anchors themselves
        prev = conv1×1([ŷ of the previous slice of the group, ungained; 1])  — [0; 0] when the
               slice starts a group (coded on its own)

The latent is split into a checkerboard: the *anchors* ((i + j) even) are decoded first from the
hyperprior and the previous slice alone; the other half then also sees its four decoded anchor
neighbours (He et al., "Checkerboard context model for efficient learned image compression",
CVPR 2021). No serial autoregression: each half decodes in one parallel pass. The previous slice of
the same group (MRI volumes are stacks of strongly correlated slices) steers both halves.

Exactness: the decoder computes every CDF index and mean from integers it holds exactly — the
integer hyper-synthesis output ``h`` (:class:`bmz.codec.entropy.IntegerHyperSynthesis`), and the
decoded symbols of this slice and of the previous one — through the fixed-point network
:class:`IntegerEntropyParameters` (weights in units of 2**-12, activations 2**-8, every sum exact),
so a stream decodes identically on every machine. The mean is rounded to an integer ``m``; the
coded symbol is ``round(y·gain) − m``, so the decoded latent is the same integer ``round(y·gain)``
as in ``hyperprior`` and the synthesis, interpolation and fixed-point paths are unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import entropy, fixedpoint
from .hyperprior import GainedScaleHyperprior, payload_decoders, register_model

#: fractional bits of the entropy-parameter network's activations and weights (as the integer
#: hyper-synthesis)
ACT_BITS = entropy.ACT_BITS
WEIGHT_BITS = entropy.WEIGHT_BITS


def anchor_mask(shape: tuple[int, int], device=None) -> torch.Tensor:
    """``(1, 1, H, W)`` bool: True on the anchors, the latent positions with ``i + j`` even."""
    H, W = shape
    i = torch.arange(H, device=device)[:, None]
    j = torch.arange(W, device=device)[None, :]
    return ((i + j) % 2 == 0)[None, None]


class IntegerEntropyParameters(nn.Module):
    """Fixed-point twin of the context model's three small networks (``ctx``, ``prev``, ``ep``).

    ``build()`` quantises the trained float layers into buffers (they ship with the weights);
    :meth:`params` maps the integer inputs to table indices and integer means."""

    def __init__(self, model: "ContextHyperprior"):
        super().__init__()
        self.__dict__["_model"] = model
        self._layers = {"ctx": model.ctx, "prev": model.prev, "ep0": model.ep[0], "ep1": model.ep[2]}
        if any(tuple(self._layers[k].kernel_size) != (1, 1) for k in ("prev", "ep0", "ep1")):
            raise ValueError("the entropy-parameter layers prev, ep0, ep1 must be 1x1: params() "
                             "evaluates them position by position")
        for k, m in self._layers.items():
            self.register_buffer(f"{k}_w", torch.zeros(m.weight.shape, dtype=torch.float64))
            self.register_buffer(f"{k}_b", torch.zeros(m.bias.shape, dtype=torch.float64))
            self.register_buffer(f"{k}_wb", torch.zeros((), dtype=torch.float64))
        self.register_buffer("gain_lin", torch.zeros(tuple(model.log2_gain.shape), dtype=torch.int64))
        self.register_buffer("built", torch.zeros((), dtype=torch.int64))

    @torch.no_grad()
    def build(self) -> None:
        for k, m in self._layers.items():
            w = torch.round(m.weight.detach().double().cpu() * 2.0**WEIGHT_BITS)
            getattr(self, f"{k}_w").copy_(w)
            getattr(self, f"{k}_b").copy_(torch.round(m.bias.detach().double().cpu() * 2.0 ** (WEIGHT_BITS + ACT_BITS)))
            getattr(self, f"{k}_wb").fill_(fixedpoint.weight_bound(m, w))
        self.gain_lin.copy_(torch.round(torch.exp2(self._model.log2_gain.detach().double().cpu())
                                        * 2.0**ACT_BITS).long())
        self.built.fill_(1)

    def _conv(self, k: str, a: torch.Tensor) -> torch.Tensor:
        """One layer on integer activations (units 2**-ACT_BITS) → the same units, floored."""
        m = self._layers[k]
        w, b = getattr(self, f"{k}_w"), getattr(self, f"{k}_b")
        s = fixedpoint.exact_conv(m, a, w, float(getattr(self, f"{k}_wb")))
        return torch.floor((s + b[None, :, None, None]) / 2.0**WEIGHT_BITS)

    def _ctx_at(self, a: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """The ``ctx`` layer at the positions ``where`` only, as a ``(B, M, 1, n)`` image — what
        ``self._conv("ctx", a)`` gives there. ``a`` is zero off the anchors; at a position that
        is not an anchor, only the four taps that reach its edge neighbours (anchors all) meet
        anything but zeros, so only they are summed: the same exact integers from 4 of the 9
        taps, at half the positions. Other cases, and layers beyond the exact range of a single
        product (where :func:`~bmz.codec.fixedpoint.exact_conv` splits or refuses), take the
        whole convolution."""
        m = self._layers["ctx"]
        w, b = self.ctx_w, self.ctx_b
        anchors = anchor_mask(a.shape[2:], a.device)[0, 0]
        if fixedpoint._geometry(m) != (1, 3, 1, 0) or bool((where & anchors).any()) or \
                fixedpoint._absmax(a) * float(self.ctx_wb) >= fixedpoint.EXACT_LIMIT or \
                bool(a[:, :, ~anchors].any()):
            return self._conv("ctx", a)[:, :, where][:, :, None, :]
        taps = ((0, 1), (2, 1), (1, 0), (1, 2))  # kernel rows/columns of the edge neighbours
        ap = F.pad(a, (1, 1, 1, 1))
        H, W = a.shape[2:]
        x = torch.cat([ap[:, :, i:i + H, j:j + W][:, :, where] for i, j in taps], 1)  # (B, 4M, n)
        w4 = torch.cat([w[:, :, i, j] for i, j in taps], 1)  # (M, 4M), same tap order
        s = (w4 @ x)[:, :, None, :]
        return torch.floor((s + b[None, :, None, None]) / 2.0**WEIGHT_BITS)

    @torch.no_grad()
    def params(self, h: torch.Tensor, ctx_in: torch.Tensor | None, prev: torch.Tensor | None,
               q: int, gain_int: torch.Tensor, thresholds: torch.Tensor,
               where: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Table indices (int32) and integer means (int64) of the gained latent of quality ``q``.

        ``h``: the integer hyper-synthesis output (int64, units 2**-ACT_BITS); ``ctx_in``: the
        anchors' ungained latent (int64 in the same units, zero elsewhere) or None for the anchor
        pass; ``prev``: the previous slice's ungained latent, or None at a group start.
        ``where``: a boolean ``(H, W)`` mask — only those positions are computed (every layer
        but ``ctx`` is 1×1, so a position's parameters need only its own column), returned as
        ``(B, M, n)`` in the mask's row-major order (what ``t[mask.expand_as(t)]`` lists per
        channel); None: every position, ``(B, M, H, W)``."""
        if int(self.built) != 1:
            raise RuntimeError("integer entropy parameters not built: call model.freeze() first")
        one = 2.0**ACT_BITS
        hf = h.to(torch.float64)
        B, M, H, W = hf.shape
        dev = hf.device

        def at(t: torch.Tensor) -> torch.Tensor:  # the selected columns, as a (B, C, 1, n) image
            return t if where is None else t[:, :, where][:, :, None, :]

        if prev is None:
            p_in = torch.zeros((B, M + 1, H, W), dtype=torch.float64, device=dev)
        else:
            p_in = torch.cat([prev.to(torch.float64),
                              torch.full((B, 1, H, W), one, dtype=torch.float64, device=dev)], 1)
        p = self._conv("prev", at(p_in))
        hs = at(hf)
        if ctx_in is None:
            c = torch.zeros_like(hs)
        elif where is not None:
            c = self._ctx_at(ctx_in.to(torch.float64), where)
        else:
            c = self._conv("ctx", ctx_in.to(torch.float64))
        e = self._conv("ep1", torch.clamp_min(self._conv("ep0", torch.cat([hs, c, p], 1)), 0.0)).long()
        delta, mu = e[:, :M], e[:, M:]
        s = at(h) + delta + gain_int[q][None, :, None, None]
        idx = torch.bucketize(s, thresholds, right=False).to(torch.int32)
        half = 2 ** (2 * ACT_BITS - 1)
        m = torch.div(mu * self.gain_lin[q][None, :, None, None] + half, 2 ** (2 * ACT_BITS),
                      rounding_mode="floor")
        return (idx, m) if where is None else (idx[:, :, 0], m[:, :, 0])


@register_model("hyperprior-ctx")
class ContextHyperprior(GainedScaleHyperprior):
    r"""Scale hyperprior (Ballé et al. 2018, the ``hyperprior`` flagship's transforms) with a
    checkerboard context model (He et al., CVPR 2021) and inter-slice context: the previously
    decoded slice of the same group conditions the entropy model (see the module docstring).

    Warm-starts from ``hyperprior`` weights: the context layers' output starts at zero, so the
    untrained model codes exactly like the hyperprior it started from."""

    #: slices of a group depend on the previous one (see bmz.codec.pipeline / docs/FORMAT.md)
    inter_slice = True

    def __init__(self, N: int = 64, M: int = 128, lambdas: list[float] | None = None,
                 log2_scale_min: float = math.log2(0.11), log2_scale_max: float = 10.0,
                 scale_levels: int = 76, stages: int = 3):
        super().__init__(N, M, lambdas, log2_scale_min, log2_scale_max, scale_levels, stages)
        self.ctx = nn.Conv2d(M, M, 3, padding=1)
        self.prev = nn.Conv2d(M + 1, M, 1)
        self.ep = nn.Sequential(nn.Conv2d(3 * M, M, 1), nn.ReLU(inplace=True), nn.Conv2d(M, 2 * M, 1))
        nn.init.zeros_(self.ep[2].weight)
        nn.init.zeros_(self.ep[2].bias)
        self.int_ep = IntegerEntropyParameters(self)

    # ---- training path -------------------------------------------------------------------
    def _ungained(self, y_g: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return y_g * torch.exp2(self.log2_inv_gain[q])[:, :, None, None]

    def _params(self, h, ctx, prev_a, lg):
        """(μ of the gained latent, log2 σ of the gained latent) from float features."""
        B, M, H, W = h.shape
        if prev_a is None:
            p_in = torch.zeros((B, M + 1, H, W), dtype=h.dtype, device=h.device)
        else:
            p_in = torch.cat([prev_a, torch.ones((B, 1, H, W), dtype=h.dtype, device=h.device)], 1)
        e = self.ep(torch.cat([h, ctx, self.prev(p_in)], 1))
        delta, mu = e[:, :M], e[:, M:]
        log2_sigma = (h + delta + lg).clamp(self.log2_scale_min, self.log2_scale_max)
        return mu * torch.exp2(lg), log2_sigma

    def _forward_slice(self, x: torch.Tensor, q: torch.Tensor, prev_a: torch.Tensor | None) -> dict:
        y = self.g_a(x)
        lg = self.log2_gain[q][:, :, None, None]
        z = self.h_a(torch.abs(y))
        z_hat, z_lik = self.entropy_bottleneck(z)
        h = self.h_s(z_hat)
        y_g = y * torch.exp2(lg)
        y_r = y_g + (torch.round(y_g) - y_g).detach()  # what the decoder holds (straight-through)
        a = self._ungained(y_r, q)
        mask = anchor_mask(y.shape[2:], y.device)
        ctx = self.ctx(a * mask)
        mu0, ls0 = self._params(h, torch.zeros_like(ctx), prev_a, lg)
        mu1, ls1 = self._params(h, ctx, prev_a, lg)
        mu, ls = torch.where(mask, mu0, mu1), torch.where(mask, ls0, ls1)
        mu_r = mu + (torch.round(mu) - mu).detach()  # the decoder's integer mean
        y_hat, y_lik = self.gaussian_conditional(y_g, torch.exp2(ls), means=mu_r)
        x_hat = self.g_s(self._ungained(y_hat, q))
        return {"x_hat": x_hat, "y_lik": y_lik, "z_lik": z_lik, "a": a}

    def forward(self, x: torch.Tensor, q: torch.Tensor) -> dict:
        """``x`` ``(B, S, H, W)``: S consecutive slices of a group (S = 1: independent slices);
        slice 0 is coded on its own, slice s with slice s − 1 as context."""
        outs, prev_a = [], None
        for s in range(x.shape[1]):
            o = self._forward_slice(x[:, s:s + 1], q, prev_a)
            prev_a = o["a"]
            outs.append(o)
        lik = {}
        for s, o in enumerate(outs):
            lik[f"y{s}"], lik[f"z{s}"] = o["y_lik"], o["z_lik"]
        return {"x_hat": torch.cat([o["x_hat"] for o in outs], 1), "likelihoods": lik}

    # ---- shipping ------------------------------------------------------------------------
    def freeze(self) -> None:
        super().freeze()
        self.int_ep.build()

    # ---- bitstream -----------------------------------------------------------------------
    def context_input(self, sym: torch.Tensor, q: int) -> torch.Tensor:
        """Decoded symbols of quality ``q`` → the context networks' input: the ungained latent
        in units of 2**-ACT_BITS (int64), from the synthesis's exact activations."""
        a = self.activations(sym, q)  # units 2**-fixedpoint.ACT_BITS
        return torch.div(a, 2 ** (fixedpoint.ACT_BITS - ACT_BITS), rounding_mode="floor")

    def _int_params(self, h, ctx_in, prev, q, where=None):
        """The integer entropy parameters (:meth:`IntegerEntropyParameters.params`) as the flat
        lists the coder takes, channel by channel: of the positions ``where`` (H, W)."""
        idx, m = self.int_ep.params(h, ctx_in, prev, q, self.int_hs.gain_int,
                                    self.int_hs.thresholds, where)
        return idx.reshape(-1), m.reshape(-1)

    @torch.no_grad()
    def _analysis(self, x: torch.Tensor, q: int) -> dict:
        """The analysis of one slice (everything but the entropy coding): symbols and ``h``."""
        y = self.g_a(x)
        z = self.h_a(torch.abs(y))
        med = self._z_medians()[None, :, None, None]
        z_sym = torch.round(z - med).to(torch.int32)
        h = self.int_hs.log2_scale_fixed(z_sym.to(torch.float32) + med)
        y_sym = torch.round(y * torch.exp2(self.log2_gain[q])[None, :, None, None]).to(torch.int32)
        return {"z": z_sym, "y": y_sym, "h": h}

    def _code(self, an: dict, q: int, single_stream: bool, prev: torch.Tensor | None) -> bytes:
        z_coder, y_coder = self.coders
        z_sym, y_sym, h = an["z"], an["y"], an["h"]
        anchors = anchor_mask(y_sym.shape[2:])
        mask = anchors.expand_as(y_sym)
        idx0, m0 = self._int_params(h, None, prev, q, anchors[0, 0])
        a = self.context_input(y_sym, q) * mask
        idx1, m1 = self._int_params(h, a, prev, q, ~anchors[0, 0])
        z_enc = entropy.stream_encoder()
        y_enc = z_enc if single_stream else entropy.stream_encoder()
        z_coder.encode_into(z_enc, z_sym, entropy.channel_indexes(z_sym.shape))
        ys = y_sym.to(torch.int64)
        y_coder.encode_into(y_enc, (ys[mask] - m0).to(torch.int32), idx0)
        y_coder.encode_into(y_enc, (ys[~mask] - m1).to(torch.int32), idx1)
        if single_stream:
            return entropy.stream_bytes(z_enc)
        z_bytes = entropy.stream_bytes(z_enc)
        return len(z_bytes).to_bytes(4, "little") + z_bytes + entropy.stream_bytes(y_enc)

    @torch.no_grad()
    def analyse(self, x: torch.Tensor, q: int, single_stream: bool = False,
                prev: torch.Tensor | None = None) -> tuple[bytes, torch.Tensor]:
        """Encode one slice → (payload, latent symbols). ``prev``: the previous slice's
        :meth:`context_input` (None at a group start). Payload: one stream holding z, then the
        anchors' symbols, then the others' (``single_stream``), or ``u32 len(z) | z | y``."""
        an = self._analysis(x, q)
        return self._code(an, q, single_stream, prev), an["y"]

    def analysis(self, x: torch.Tensor, q: int) -> dict:
        """What :meth:`analyse` computes from the slice alone, before any entropy coding (its
        symbols ``"y"``, ``"z"`` and the integer hyper-synthesis ``"h"``): slices of a group
        are analysed independently (on as many threads as there are), then coded with their
        predecessor's symbols as context (:meth:`code_best`)."""
        return self._analysis(x, q)

    @torch.no_grad()
    def code_best(self, an: dict, q: int, prev: torch.Tensor | None) -> tuple[bytes, bool]:
        """Code an :meth:`analysis` alone and, when ``prev`` is given, with it as context (single
        stream) → (the smaller payload, whether it is the one coded with ``prev``)."""
        alone = self._code(an, q, True, None)
        if prev is None:
            return alone, False
        ctx = self._code(an, q, True, prev)
        return (ctx, True) if len(ctx) < len(alone) else (alone, False)

    @torch.no_grad()
    def analyse_best(self, x: torch.Tensor, q: int, prev: torch.Tensor
                     ) -> tuple[bytes, torch.Tensor, bool]:
        """Code one slice both alone and with ``prev`` as context (single stream) → (the smaller
        payload, the latent symbols, whether it is the one coded with ``prev``). The latents
        are the same either way; where neighbouring slices differ (thick slices, motion) the
        context can cost more than it saves."""
        an = self._analysis(x, q)
        payload, used = self.code_best(an, q, prev)
        return payload, an["y"], used

    @torch.no_grad()
    def decode_latents(self, data: bytes, shape: tuple[int, int], q: int,
                       single_stream: bool = False, prev: torch.Tensor | None = None
                       ) -> dict[str, torch.Tensor]:
        """Entropy-decode one slice payload (see :meth:`analyse`) → ``{"y", "z"}`` symbols, as
        ``hyperprior``'s; ``prev`` as in :meth:`analyse`."""
        z_coder, y_coder = self.coders
        H, W = shape
        zshape = (1, self.N, H // self.downsampling, W // self.downsampling)
        yshape = (1, self.M, H // 2**self.stages, W // 2**self.stages)
        z_dec, y_dec = payload_decoders(data, single_stream)
        if prev is not None and tuple(prev.shape) != yshape:
            raise ValueError(f"previous slice's latent has shape {tuple(prev.shape)}, not {yshape}")
        z_sym = z_coder.decode_from(z_dec, entropy.channel_indexes(zshape))
        h = self.int_hs.log2_scale_fixed(z_sym.to(torch.float32) + self._z_medians()[None, :, None, None])
        anchors = anchor_mask(yshape[2:])
        mask = anchors.expand(yshape)
        y = torch.zeros(yshape, dtype=torch.int64)
        idx0, m0 = self._int_params(h, None, prev, q, anchors[0, 0])
        y[mask] = y_coder.decode_from(y_dec, idx0).to(torch.int64) + m0
        a = self.context_input(y, q) * mask
        idx1, m1 = self._int_params(h, a, prev, q, ~anchors[0, 0])
        y[~mask] = y_coder.decode_from(y_dec, idx1).to(torch.int64) + m1
        if y.numel() and (int(y.max()) > 2**31 - 1 or int(y.min()) < -2**31):
            raise ValueError("decoded latent out of the int32 range")
        entropy.check_exhausted(z_dec, y_dec)
        return {"y": y.to(torch.int32), "z": z_sym}

    @torch.no_grad()
    def decompress_slice(self, data: bytes, shape: tuple[int, int], q: int,
                         single_stream: bool = False, prev: torch.Tensor | None = None) -> torch.Tensor:
        return self.synthesize(self.decode_latents(data, shape, q, single_stream, prev)["y"], q)
