"""The fast decoder profile: the flagship's latents, a synthesis of a seventh of its cost.

``hyperprior-fast`` encodes exactly as the ``hyperprior`` flagship does up to the latents: the
same analysis ``g_a``, hyper-analysis ``h_a``, hyper-latent prior and gains (copied from the
flagship and never trained again). Only what the *decoder* runs is new and small:

::

    x ─g_a─► y ──×gain[q]──► Q ─► ŷ ──×inv_gain[q]──► g_s' ─► x̂        (g_a, h_a, gain: flagship's)
             └─|·|─h_a─► z ─► Q ─► ẑ ─h_s'─► log2 σ

    g_s': deconv2↑2 M→C1 · IGDN · deconv5↑2 C1→C2 · IGDN · deconv5↑2 C2→1
    h_s': deconv5↑2 N→N · ReLU · deconv5↑2 N→N · ReLU · conv1×1 N→M

The flagship's synthesis works at 64 channels on a quarter and half of the resolution, and its
hyper-synthesis ends in a 3×3 convolution to 128 channels; here the channels are few where the
pixels are many (``C1`` at a quarter, ``C2`` at half the resolution) and the last hyper layer is
1×1. The first step up is a 2×2 transposed convolution of stride 2 — each latent vector becomes
its own 2×2 block of ``C1`` channels (a 1×1 convolution and a depth-to-space, in one layer the
fixed-point synthesis already replays) — so that no layer carries fewer values per pixel than the
latent (``M``/64): a first version with a 1×1 convolution to 32 channels at an eighth of the
resolution (half a value per pixel) stalled near 37 dB at the top quality, where the flagship
reaches 52. :func:`bmz.codec.models.decoder_macs_per_pixel` counts what each costs.

Training (``bmz train --model hyperprior-fast --init-from models/hyperprior.pt``): the encoder
side is frozen (:attr:`FastHyperprior.frozen_parameters`), so rate and distortion depend on
disjoint parameters: ``h_s'`` learns the rate of the flagship's latents, ``g_s'`` (and the decoder
gains) the reconstruction. The latents are rounded as the encoder rounds them, never noised: the
decoder learns on exactly what it will receive. The distortion term is the PSNR (``distortion =
"psnr"``), so every quality counts alike instead of the highest λ's dominating.

Bit-exactness is the flagship's: the same fixed-point synthesis (:mod:`bmz.codec.fixedpoint`) and
integer hyper-synthesis (:class:`bmz.codec.entropy.IntegerHyperSynthesis`) replay these layers, and
the files are the flagship's chunk formats with this model's name.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from . import entropy
from .hyperprior import GainedScaleHyperprior, conv, deconv, register_model
from .layers import GDN


def fast_synthesis(M: int, c1: int, c2: int) -> nn.Sequential:
    """``g_s'`` (see the module docstring): three ×2 upsamplings, narrow where pixels are many."""
    return nn.Sequential(nn.ConvTranspose2d(M, c1, 2, stride=2), GDN(c1, inverse=True),
                         deconv(c1, c2), GDN(c2, inverse=True), deconv(c2, 1))


@register_model("hyperprior-fast")
class FastHyperprior(GainedScaleHyperprior):
    """The ``hyperprior`` flagship's encoder with a small synthesis and hyper-synthesis (the
    module docstring says which and why)."""

    #: parameters copied from the flagship and kept: everything the encoder computes
    frozen_parameters = ("g_a.", "h_a.", "entropy_bottleneck.", "log2_gain")
    #: the training loss's distortion term (see bmz.train.rd_loss)
    distortion = "psnr"

    def __init__(self, N: int = 64, M: int = 128, lambdas: list[float] | None = None,
                 log2_scale_min: float = math.log2(0.11), log2_scale_max: float = 10.0,
                 scale_levels: int = 76, stages: int = 3, c1: int = 32, c2: int = 16):
        if int(stages) != 3:
            raise ValueError("hyperprior-fast has three ×2 stages (stages=3)")
        super().__init__(N, M, lambdas, log2_scale_min, log2_scale_max, scale_levels, stages)
        self.c1, self.c2 = int(c1), int(c2)
        self.g_s = fast_synthesis(M, self.c1, self.c2)
        self.h_s = nn.Sequential(deconv(N, N), nn.ReLU(inplace=True), deconv(N, N),
                                 nn.ReLU(inplace=True), conv(N, M, 1, 1))
        self.int_hs = entropy.IntegerHyperSynthesis(self.h_s, self.log2_gain, self.log2_scale_min,
                                                    self.log2_scale_max, self.scale_levels)
        self._init_fixed_synthesis(M)

    def config(self) -> dict:
        return {**super().config(), "c1": self.c1, "c2": self.c2}

    def forward(self, x: torch.Tensor, q: torch.Tensor) -> dict:
        """Training path on the frozen encoder's *rounded* latents (what the decoder receives)."""
        with torch.no_grad():
            y = self.g_a(x)
            lg = self.log2_gain[q][:, :, None, None]
            z_hat, z_lik = self.entropy_bottleneck(self.h_a(torch.abs(y)), training=False)
            y_sym = torch.round(y * torch.exp2(lg))
        log2_sigma = (self.h_s(z_hat) + lg).clamp(self.log2_scale_min, self.log2_scale_max)
        y_lik = self.gaussian_conditional.likelihood_lower_bound(
            self.gaussian_conditional._likelihood(y_sym, torch.exp2(log2_sigma)))
        x_hat = self.g_s(y_sym * torch.exp2(self.log2_inv_gain[q][:, :, None, None]))
        return {"x_hat": x_hat, "likelihoods": {"y": y_lik, "z": z_lik}}

    def aux_loss(self) -> torch.Tensor:
        """The hyper-latent prior is the flagship's, frozen: nothing to fit."""
        return torch.zeros(())
