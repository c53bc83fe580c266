"""A vector-quantised autoencoder: residual VQ of the latent, one quality level per VQ stage.

``vqvae`` — A. van den Oord, O. Vinyals, K. Kavukcuoglu, "Neural discrete representation
learning", NeurIPS 2017 (VQ-VAE: nearest-neighbour codebook, straight-through gradient,
commitment loss, EMA codebook updates in its appendix), with the residual vector quantiser,
quantizer dropout and dead-code restarts of N. Zeghidour, A. Luebs, A. Omran, J. Skoglund,
M. Tagliasacchi, "SoundStream: an end-to-end neural audio codec", IEEE/ACM TASLP 2021, and the
index choice of entropy-constrained VQ: P. A. Chou, T. Lookabaugh, R. M. Gray,
"Entropy-constrained vector quantization", IEEE Trans. ASSP 37(1), 1989.

::

    x ─g_a─► y ─► stage 1: i₁ = argmin_k |y − C₁[k]|² + μ_q · bits₁(k)     r₁ = y − C₁[i₁]
                  stage 2: i₂ = argmin_k |r₁ − C₂[k]|² + μ_q · bits₂(k)    r₂ = r₁ − C₂[i₂]
                  …        (quality level q uses stages 1 … q)
              ŷ = C₁[i₁] + … + C_q[i_q] ─g_s─► x̂

* **Transforms.** ``g_a``: ``stages`` × conv5↓2 with GDN, then conv3 GDN conv3 to the
  ``D``-channel latent (``2**stages``× downsampling, 4× by default); ``g_s``: the mirror
  (conv3 IGDN conv3 IGDN, then ``stages`` × deconv5↑2 with IGDN between) — only layers that the
  fixed-point synthesis replays (:mod:`bmz.codec.fixedpoint`).
* **Quantiser.** ``S`` = ``len(lambdas)`` stages, each a codebook of ``K`` vectors of dimension
  ``D``, searched on the previous stage's residual. Quality level ``q`` (1 … S) sends the indices
  of the first ``q`` stages, so one set of weights spans every rate. Training draws the level per
  sample (the training loop's uniform quality index: SoundStream's quantizer dropout), so every
  prefix of stages is a reconstruction of its own.
* **Entropy-constrained search.** A plain nearest-neighbour search (``rate_weight`` 0) spends
  nearly ``log2 K`` bits on every index: nothing in the loss steers the encoder towards cheap
  codes (the rate has no gradient), and MRI background noise spreads over the whole codebook.
  So each stage picks the code of least ``|r − C[k]|² + μ_q · bits(k)``, with ``bits(k)`` the
  index's cost under the stage's prior (the frozen table when coding) and the price of a bit
  ``μ_q = rate_weight / λ[q] · D · E`` (``E``: the EMA of the latent's mean square, so the
  price follows the latent's scale). Low levels buy rate with latent error where it costs least
  (flat regions fall on the popular codes, whose probability the EMA then raises further); high
  levels search almost by distance alone. An encoder-side choice: the decoder only sums the
  codes it is sent.
* **Codebook learning.** Exponential moving averages of each code's assignment count and of the
  sum of the residuals assigned to it (``decay``), the code being their ratio; stage ``s`` is
  updated from the samples whose level uses it. Codebooks start from residuals of the first
  training batch, and a code whose share of its stage's assignments falls below
  ``dead_frac / K`` is restarted at a residual of the current batch (codebook collapse, the
  classic VQ-VAE failure). :meth:`train_stats` reports each stage's perplexity (``exp`` of the
  entropy of its usage) and the restarts.
* **Losses.** The training loop's ``bpp + λ[q] · 255² · MSE``; the encoder also gets the
  commitment loss ``β · |y − sg(ŷ)|² / sg(|y|²)`` (returned as ``extra_loss``; normalised by the
  latent's energy so that it cannot shrink the latent's scale, which the codebooks would follow
  down to the fixed-point resolution). The gradient reaches ``g_a`` straight through the
  quantiser. The rate does not depend on any differentiable quantity (the indices are
  discrete and the prior is an estimate, see below), so **λ is not the rate–distortion
  trade-off of the loss** as for the other models: it weights each level's MSE (how much the
  shared transforms favour the low or the high levels) and sets the level's price of a bit in
  the search above (a smaller λ, a cheaper and coarser level, as for the other models); the
  rate of a level is chiefly its number of stages, then its λ. The default doubles per level,
  as the MSE roughly halves per stage; ``bmz train --lambdas`` sets both the number of levels
  and their prices.
* **Entropy coding.** Per stage, a factorized categorical prior over the ``K`` indices: the
  normalised EMA assignment counts (the maximum-likelihood estimate that a cross-entropy-trained
  logit vector would approach, without its slow convergence). ``forward`` returns the indices'
  probabilities under it as ``likelihoods``, so the loop's bpp is the estimated rate of the
  levels' stages. ``freeze()`` turns each stage's prior into a 16-bit CDF table
  (:func:`bmz.codec.entropy.quantized_cdf_tables`: every index codable); a slice's payload is one
  range-coded stream of its ``q × h × w`` indices, stage by stage (:class:`~bmz.codec.entropy.
  TableCoder`, one table per stage, exactly as the factorized priors' one table per channel).
  Upper bound of the rate (an index costs at most ``log2 K`` bits under a well-fitted prior):
  about ``q · log2 K`` bits per latent position, i.e. ``q · log2 K / 4**stages`` bits per pixel
  (:func:`rate_bound_bpp`), before the entropy-constrained search lowers it.
* **Bit-exact decoding.** ``freeze()`` also rounds the codebooks to integers in units of
  ``2**-ACT_BITS`` (the fixed-point synthesis's activation unit). The decoded latent is the
  integer sum of the selected integer code vectors: ``decode_latents`` returns it as
  ``{"y": int32 (1, D, h, w)}`` (and the indices as ``"indices"``), and the synthesis runs on it
  with an integer inverse gain of 1 (``log2_inv_gain`` = −ACT_BITS) — the same path as every
  other model, so :mod:`bmz.interpolation` mixes vqvae files unchanged: it mixes sums of code
  vectors (ŷ), not indices, and synthesises the mixture without re-quantising it to the
  codebooks (mixing the pre-quantisation latents instead would need the encoder, which
  interpolation never runs). The encoder searches the same rounded codebooks and table costs,
  so its residuals track exactly what the decoder sums.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from . import entropy, fixedpoint
from .hyperprior import BmzModel, conv, deconv, register_model
from .layers import GDN

#: default nominal λ: eight levels (eight RVQ stages), doubling per level
VQ_LAMBDAS = [0.01 * 2.0**i for i in range(8)]


def vq_transforms(N: int, D: int, stages: int) -> tuple[nn.Sequential, nn.Sequential]:
    """``g_a``: ``stages`` × conv5↓2 + GDN, conv3 GDN conv3 (1→N→…→D); ``g_s``: the mirror with
    IGDN and transposed convolutions."""
    ga: list[nn.Module] = []
    gs: list[nn.Module] = [conv(D, N, 3, 1), GDN(N, inverse=True), conv(N, N, 3, 1), GDN(N, inverse=True)]
    cin = 1
    for i in range(stages):
        ga += [conv(cin, N), GDN(N)]
        cin = N
        gs += [deconv(N, N), GDN(N, inverse=True)] if i < stages - 1 else [deconv(N, 1)]
    ga += [conv(N, N, 3, 1), GDN(N), conv(N, D, 3, 1)]
    return nn.Sequential(*ga), nn.Sequential(*gs)


def _nearest(r: torch.Tensor, C: torch.Tensor, C2: torch.Tensor, penalty=None) -> torch.Tensor:
    """Index of the nearest code (L2) of each row of ``r`` ``(P, D)`` in ``C`` ``(K, D)``
    (``C2``: the codes' squared norms), plus ``penalty`` (``(K,)`` or ``(P, K)``, the
    entropy-constrained choice) when given; the lowest index on a tie."""
    cost = C2[None, :] - 2.0 * (r @ C.T)
    if penalty is not None:
        cost = cost + penalty
    return torch.argmin(cost, dim=1)


@register_model("vqvae")
class ResidualVQVAE(BmzModel):
    """VQ-VAE with a residual vector quantiser (quality level q = the first q of ``len(lambdas)``
    stages of ``K`` codes each), a factorized categorical prior per stage, GDN transforms."""

    #: ``bmz train --resume --lambdas`` cannot add levels: each level is a stage whose codebook
    #: and prior are trained buffers (refused by :func:`bmz.train.extend_qualities`)
    levels_extendable = False

    def __init__(self, N: int = 64, D: int = 32, K: int = 256, stages: int = 2,
                 lambdas: list[float] | None = None, decay: float = 0.99, beta: float = 0.25,
                 dead_frac: float = 1.0 / 32, rate_weight: float = 5e-4):
        super().__init__(lambdas or VQ_LAMBDAS)
        self.N, self.D, self.K, self.stages = int(N), int(D), int(K), int(stages)
        if self.K < 2 or self.D < 1 or self.stages < 1:
            raise ValueError(f"vqvae needs K >= 2, D >= 1, stages >= 1 (got K={K}, D={D}, stages={stages})")
        self.decay, self.beta, self.dead_frac = float(decay), float(beta), float(dead_frac)
        self.rate_weight = float(rate_weight)
        self.downsampling = 2**self.stages
        self.g_a, self.g_s = vq_transforms(self.N, self.D, self.stages)
        S, Kc, Dc = self.n_qualities, self.K, self.D
        g = torch.Generator().manual_seed(0)
        cb = torch.randn(S, Kc, Dc, generator=g) * torch.exp2(-torch.arange(S, dtype=torch.float32))[:, None, None]
        self.register_buffer("codebooks", cb)                       # (S, K, D) float: the codes
        self.register_buffer("ema_count", torch.ones(S, Kc))         # EMA assignment counts
        self.register_buffer("ema_sum", cb.clone())                  # EMA sums of assigned residuals
        self.register_buffer("initialised", torch.zeros((), dtype=torch.int64))
        self.register_buffer("restarts", torch.zeros(S, dtype=torch.int64))  # dead codes restarted
        self.register_buffer("latent_energy", torch.ones(()))  # EMA of the latent's mean square
        # set by freeze(): integer codebooks (units 2**-ACT_BITS) and one CDF table per stage
        self.register_buffer("codebooks_fx", torch.zeros(S, Kc, Dc, dtype=torch.int64))
        self.register_buffer("prior_cdf", torch.zeros(S, Kc + 2, dtype=torch.int32))
        self.register_buffer("prior_cdf_length", torch.zeros(S, dtype=torch.int32))
        self.register_buffer("frozen", torch.zeros((), dtype=torch.int64))
        # the decoded latent is in units of 2**-ACT_BITS: inverse gain 2**-ACT_BITS, so that
        # activations() passes it through unchanged (integer inverse gain 1)
        self.register_buffer("log2_inv_gain", torch.full((S, Dc), -float(fixedpoint.ACT_BITS)))
        self._init_fixed_synthesis(self.D)

    def config(self) -> dict:
        return {"N": self.N, "D": self.D, "K": self.K, "stages": self.stages, "lambdas": self.lambdas,
                "decay": self.decay, "beta": self.beta, "dead_frac": self.dead_frac,
                "rate_weight": self.rate_weight}

    # ---- quantiser -----------------------------------------------------------------------
    def _prior(self) -> torch.Tensor:
        """(S, K) probabilities of the indices: normalised EMA counts (the training-time prior)."""
        c = self.ema_count.clamp_min(0)
        p = c / c.sum(dim=1, keepdim=True).clamp_min(1e-12)
        p = p.clamp_min(1e-9)
        return p / p.sum(dim=1, keepdim=True)

    def _search_codebooks(self) -> torch.Tensor:
        """The codebooks the search uses: the frozen integer ones (as float) once frozen and not
        training — exactly what the bitstream codes — else the float ones."""
        if int(self.frozen) == 1 and not self.training:
            return self.codebooks_fx.to(torch.float32) * 2.0**-fixedpoint.ACT_BITS
        return self.codebooks

    def _code_bits(self) -> torch.Tensor:
        """(S, K) cost in bits of each index: under the frozen tables once frozen and not
        training (what the coder spends), else under the training-time prior."""
        if int(self.frozen) == 1 and not self.training:
            freq = torch.diff(self.prior_cdf.double(), dim=1)[:, :self.K]
            return -torch.log2(freq / 65536.0)
        return -torch.log2(self._prior().double())

    def _mu(self, q) -> torch.Tensor:
        """The entropy-constrained search's price of one bit, in squared latent units, for level
        index ``q`` (an int or a tensor of them): ``rate_weight / λ[q] · D · latent energy``."""
        lam = torch.tensor(self.lambdas, dtype=torch.float64)[torch.as_tensor(q).cpu()]
        return self.rate_weight / lam * self.D * float(self.latent_energy)

    @torch.no_grad()
    def _rvq(self, flat: torch.Tensor, C: torch.Tensor, n: int | None = None, mu=None):
        """Residual VQ of latent vectors ``flat`` ``(P, D)`` over ``n`` stages of codebooks ``C``
        → (indices ``(n, P)``, each stage's input residual ``(n, P, D)``, each stage's code
        vector ``(n, P, D)``). With ``mu`` (a float, or ``(P,)``), each stage picks the code of
        least ``|r − C[k]|² + mu · bits(k)`` (entropy-constrained VQ) instead of the nearest."""
        n = self.n_qualities if n is None else n
        r = flat
        idx, res, codes = [], [], []
        bits = self._code_bits().to(r.device, r.dtype) if mu is not None else None
        if mu is not None and torch.is_tensor(mu):
            mu = mu.to(r.device, r.dtype)[:, None]
        for s in range(n):
            Cs = C[s].to(r.dtype)
            pen = None if mu is None else mu * bits[s][None, :]
            i = _nearest(r, Cs, (Cs * Cs).sum(dim=1), pen)
            c = Cs[i]
            idx.append(i)
            res.append(r)
            codes.append(c)
            r = r - c
        return torch.stack(idx), torch.stack(res), torch.stack(codes)

    @torch.no_grad()
    def _init_codebooks(self, flat: torch.Tensor) -> None:
        """Data-dependent start: each stage's codes are residuals (of the stages before) drawn
        from the first training batch."""
        r = flat
        P = r.shape[0]
        for s in range(self.n_qualities):
            pick = torch.randint(P, (self.K,), device=r.device)
            self.codebooks[s].copy_(r[pick] + 1e-6 * torch.randn_like(r[pick]))
            n0 = P / self.K
            self.ema_count[s].fill_(n0)
            self.ema_sum[s].copy_(self.codebooks[s] * n0)
            Cs = self.codebooks[s]
            r = r - Cs[_nearest(r, Cs, (Cs * Cs).sum(dim=1))]
        self.initialised.fill_(1)

    @torch.no_grad()
    def _ema_update(self, idx: torch.Tensor, res: torch.Tensor, used: torch.Tensor) -> None:
        """EMA codebook update of every stage from the positions whose level uses it, then
        restarts of its dead codes at residuals of this batch."""
        d, K = self.decay, self.K
        for s in range(self.n_qualities):
            sel = used[s]
            if not bool(sel.any()):
                continue
            i, r = idx[s][sel], res[s][sel]
            counts = torch.bincount(i, minlength=K).to(r.dtype)
            sums = torch.zeros(K, r.shape[1], dtype=r.dtype, device=r.device).index_add_(0, i, r)
            self.ema_count[s].mul_(d).add_(counts, alpha=1 - d)
            self.ema_sum[s].mul_(d).add_(sums, alpha=1 - d)
            n = float(self.ema_count[s].sum())
            smoothed = (self.ema_count[s] + 1e-5) / (n + K * 1e-5) * n
            self.codebooks[s].copy_(self.ema_sum[s] / smoothed[:, None])
            dead = self.ema_count[s] < self.dead_frac / K * n
            nd = int(dead.sum())
            if nd:
                new = r[torch.randint(r.shape[0], (nd,), device=r.device)]
                c0 = 2.0 * self.dead_frac / K * n
                self.codebooks[s][dead] = new
                self.ema_count[s][dead] = c0
                self.ema_sum[s][dead] = new * c0
                self.restarts[s] += nd

    # ---- training path -------------------------------------------------------------------
    def forward(self, x: torch.Tensor, q: torch.Tensor) -> dict:
        """``x`` ``(B, 1, H, W)``, ``q`` ``(B,)`` level indices (0-based: stages 1 … q+1) →
        ``{"x_hat", "likelihoods": {"indices": (B, S, h, w), 1 where a stage is unused},
        "extra_loss": (B,) commitment loss}``. In training mode the codebooks are updated."""
        y = self.g_a(x)
        B, D, h, w = y.shape
        S = self.n_qualities
        flat = y.detach().permute(0, 2, 3, 1).reshape(-1, D)
        level = q.to(y.device).repeat_interleave(h * w)  # (P,) each position's level index
        if self.training:
            self.frozen.fill_(0)  # the codebooks move: frozen tables would be stale
            e = (flat.double() ** 2).mean()
            if int(self.initialised) == 0:
                self.latent_energy.fill_(float(e))
                self._init_codebooks(flat)
            else:
                self.latent_energy.mul_(self.decay).add_((1 - self.decay) * e.to(self.latent_energy.dtype))
        mu = self._mu(level) if self.rate_weight > 0 else None
        idx, res, codes = self._rvq(flat, self._search_codebooks(), mu=mu)
        used = torch.arange(S, device=y.device)[:, None] <= level[None, :]  # (S, P)
        y_q = (codes * used[..., None].to(codes.dtype)).sum(dim=0)
        y_q = y_q.reshape(B, h, w, D).permute(0, 3, 1, 2).to(y.dtype)
        with torch.no_grad():
            lik = torch.gather(self._prior(), 1, idx)  # (S, P)
            lik = torch.where(used, lik, torch.ones_like(lik)).reshape(S, B, h, w).permute(1, 0, 2, 3)
        if self.training:
            self._ema_update(idx, res, used)
        energy = (y.detach() ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-12)
        self._latent_rms = float(energy.mean().sqrt())
        commit = ((y - y_q.detach()) ** 2).mean(dim=(1, 2, 3)) / energy
        x_hat = self.g_s(y + (y_q - y).detach())  # straight through the quantiser
        return {"x_hat": x_hat, "likelihoods": {"indices": lik.contiguous()},
                "extra_loss": self.beta * commit}

    def aux_loss(self) -> torch.Tensor:
        return torch.zeros(())

    @torch.no_grad()
    def train_stats(self) -> dict:
        """Codebook health: per stage, the perplexity of the code usage (``exp`` of its entropy;
        ``K`` = every code equally used, 1 = collapse), the codes used more than a tenth of
        uniformly, and the dead-code restarts so far."""
        p = self._prior().double()
        perp = torch.exp(-(p * p.log()).sum(dim=1))
        return {"perplexity": [round(float(v), 1) for v in perp],
                "codes_used": [int(v) for v in (p > 0.1 / self.K).sum(dim=1)],
                "restarts": [int(v) for v in self.restarts],
                "latent_rms": round(getattr(self, "_latent_rms", float("nan")), 4)}

    # ---- shipping ------------------------------------------------------------------------
    @torch.no_grad()
    def freeze(self) -> None:
        """Integer codebooks (units 2**-ACT_BITS), one 16-bit CDF table per stage from its
        prior, and the fixed-point synthesis — from the current weights, once."""
        A = fixedpoint.ACT_BITS
        self._normalise_scale()
        cb = torch.round(self.codebooks.double() * 2.0**A)
        if float(cb.abs().amax(dim=(1, 2)).sum()) >= 2.0**31:
            raise OverflowError("vqvae codebooks too large for int32 latent sums")
        self.codebooks_fx.copy_(cb.long())
        cdf, length = entropy.quantized_cdf_tables(self._prior().double().numpy())
        self.prior_cdf.copy_(cdf)
        self.prior_cdf_length.copy_(length)
        self._freeze_fixed_synthesis()
        self.frozen.fill_(1)
        self._coder = None

    @torch.no_grad()
    def _synthesis_scales(self) -> dict[int, int]:
        """Rescale the fixed-point synthesis where its activations grow large: nothing in training
        pins the scale inside ``g_s`` either (a 54,713-step run reached activations in the tens
        of thousands, an inverse GDN ``γ`` far below the weights' resolution). Calibrated on
        latents the decoder can actually receive: every level's sum of code vectors, each
        stage's indices drawn from its prior (seeded, so the weights are reproducible), plus a
        smooth slice analysed at every level."""
        g = torch.Generator().manual_seed(0)
        C = self.codebooks.double()
        p = self._prior().double()
        inputs = []
        for q in range(self.n_qualities):
            y = torch.zeros(16 * 16, self.D, dtype=torch.float64)
            for s in range(q + 1):
                y += C[s][torch.multinomial(p[s], 16 * 16, replacement=True, generator=g)]
            inputs.append(y.reshape(1, 16, 16, self.D).permute(0, 3, 1, 2).float())
        yy, xx = torch.meshgrid(torch.arange(64.0) / 64, torch.arange(64.0) / 64, indexing="ij")
        disc = ((yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.16) * (0.6 + 0.3 * torch.sin(12 * xx) * torch.cos(9 * yy))
        y = self.g_a(disc.float()[None, None]).permute(0, 2, 3, 1).reshape(-1, self.D).double()
        for q in range(self.n_qualities):
            mu = float(self._mu(q)) if self.rate_weight > 0 else None
            _, _, codes = self._rvq(y, self.codebooks.double(), q + 1, mu=mu)
            inputs.append(codes.sum(0).reshape(1, 16, 16, self.D).permute(0, 3, 1, 2).float())
        return fixedpoint.activation_scales(self.g_s, inputs)

    @torch.no_grad()
    def _normalise_scale(self) -> None:
        """Bring the latent back to unit scale before the codebooks are rounded: nothing in
        training pins it (the encoder's last convolution and the decoder's first can trade a
        factor freely), and it can drift by orders of magnitude — until the integer latent sums
        overflow. Divides the latent (the analysis' last convolution), the codebooks and their
        EMA state by a power of two ``s`` and multiplies the synthesis' first convolution by it:
        exactly the same function, the same indices (the search is scale-free, its bit price
        scales with the latent energy), in floating point without rounding."""
        rms = math.sqrt(max(float(self.latent_energy), 1e-30))
        s = 2.0 ** round(math.log2(rms))
        if s == 1.0:
            return
        last, first = self.g_a[-1], self.g_s[0]
        last.weight.div_(s)
        last.bias.div_(s)
        first.weight.mul_(s)
        self.codebooks.div_(s)
        self.ema_sum.div_(s)
        self.latent_energy.div_(s * s)

    @property
    def coder(self) -> "entropy.TableCoder":
        """The range coder over the frozen tables (table ``s`` codes stage ``s``'s indices)."""
        if int(self.frozen) != 1:
            raise RuntimeError("vqvae is not frozen: call model.freeze() first")
        if getattr(self, "_coder", None) is None:
            self._coder = entropy.TableCoder.from_tables(
                self.prior_cdf, self.prior_cdf_length, torch.zeros(self.n_qualities, dtype=torch.int64))
        return self._coder

    def _check_quality(self, q: int) -> int:
        q = int(q)
        if not 0 <= q < self.n_qualities:
            raise ValueError(f"quality index {q} outside 0..{self.n_qualities - 1}")
        return q

    def _latent_sum(self, idx: torch.Tensor) -> torch.Tensor:
        """Indices ``(1, n, h, w)`` → the integer latent ``(1, D, h, w)`` int32: the sum of the
        stages' integer code vectors."""
        n = idx.shape[1]
        acc = torch.zeros(idx.shape[2], idx.shape[3], self.D, dtype=torch.int64)
        for s in range(n):
            acc += self.codebooks_fx[s][idx[0, s].long()]
        return acc.permute(2, 0, 1)[None].to(torch.int32).contiguous()

    # ---- bitstream -----------------------------------------------------------------------
    @torch.no_grad()
    def analyse(self, x: torch.Tensor, q: int, single_stream: bool = False) -> tuple[bytes, torch.Tensor]:
        """Encode one slice ``(1, 1, H, W)`` → (one range-coded stream of the ``q + 1`` stages'
        indices, the decoded integer latent); ``single_stream`` changes nothing."""
        q = self._check_quality(q)
        coder = self.coder
        y = self.g_a(x)
        _, D, h, w = y.shape
        flat = y.permute(0, 2, 3, 1).reshape(-1, D).double()
        C = self.codebooks_fx.double() * 2.0**-fixedpoint.ACT_BITS  # exactly what the decoder sums
        mu = float(self._mu(q)) if self.rate_weight > 0 else None
        idx, _, _ = self._rvq(flat, C, q + 1, mu=mu)
        idx = idx.reshape(q + 1, h, w)[None].to(torch.int32)
        data = coder.encode(idx, entropy.channel_indexes(idx.shape))
        return data, self._latent_sum(idx)

    @torch.no_grad()
    def decode_latents(self, data: bytes, shape: tuple[int, int], q: int,
                       single_stream: bool = False) -> dict[str, torch.Tensor]:
        """Entropy-decode one slice payload of padded size ``shape`` → ``{"y": the integer latent
        (1, D, H/d, W/d) int32 in units of 2**-ACT_BITS (the sum of the decoded codes),
        "indices": (1, q+1, H/d, W/d) int32}``; ValueError for a stream that does not decode
        to valid indices."""
        q = self._check_quality(q)
        H, W = shape
        ishape = (1, q + 1, H // self.downsampling, W // self.downsampling)
        idx = self.coder.decode(data, entropy.channel_indexes(ishape))
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.K):
            raise ValueError(f"vqvae stream holds a codebook index outside 0..{self.K - 1}")
        return {"y": self._latent_sum(idx), "indices": idx}

    @torch.no_grad()
    def synthesize_float(self, sym: torch.Tensor, q: int) -> torch.Tensor:
        """The float32 synthesis of a decoded integer latent (encoder-side decisions only)."""
        return self._g_s_float(sym.float() * 2.0**-fixedpoint.ACT_BITS)


def rate_bound_bpp(model: ResidualVQVAE, q: int) -> float:
    """Upper bound of the rate of level index ``q`` (0-based) in bits per pixel:
    ``(q + 1) · log2 K / downsampling²`` (the prior can only lower it, plus stream sealing)."""
    return (q + 1) * math.log2(model.K) / model.downsampling**2


__all__ = ["ResidualVQVAE", "VQ_LAMBDAS", "vq_transforms", "rate_bound_bpp"]
