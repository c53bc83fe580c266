"""Codecs with a factorized prior: Ballé 2016, the U-Nets without skips, the minimal autoencoder.

All share one coding scheme (:class:`GainedFactorizedCodec`): an analysis transform ``g_a`` gives the
latent ``y``; per quality ``q`` it is scaled by learned gains, quantised, and entropy-coded with
that quality's own factorized density (one :class:`~compressai.entropy_models.EntropyBottleneck`
per quality, so each rate has a density fitted to its own latent scale); the decoder undoes the
gain and runs the synthesis ``g_s``. The bitstream of a slice is one rANS stream of
``round(y · gain[q] − median[q])`` with a fixed, frozen table per channel: nothing at decode time
depends on floating-point arithmetic, so every machine parses the very same latent; the synthesis
then runs in fixed point (:mod:`bmz.codec.fixedpoint`), so every machine decodes the same array.

The architectures differ only in ``g_a`` / ``g_s``:

* ``factorized`` — J. Ballé, V. Laparra, E. P. Simoncelli, "End-to-end optimized image
  compression", ICLR 2017: conv5↓2 with GDN between, IGDN in the mirror (bmz: 3 stages, 8×).
* ``unet-noskip-v1`` / ``-v2`` / ``-c`` — the U-Net of O. Ronneberger et al. (MICCAI 2015) with its
  skip connections removed, so that all information must pass the bottleneck: double conv3 + ReLU
  per level, 2×2 max-pool down, 2×2 transposed conv up; widths 64…1024 (V1), 1.5× those (V2),
  32…256 over 3 levels (C, streamlined). A 1×1 conv maps the deepest features to the ``M``-channel
  latent and back.
* ``cnn-ae-8`` / ``-16`` / ``-32`` — the minimal convolutional autoencoder: conv3 + ReLU, two conv3↓2
  + ReLU to a ``C``-channel latent at 4× downsampling; the decoder mirrors it with transposed
  convolutions.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from . import entropy, priors
from .hyperprior import BmzModel, gdn_transforms, register_model

#: Default rates of the factorized families: four of the flagship's eight λ (q2, q4, q6, q8).
FAMILY_LAMBDAS = [0.01, 0.0625, 0.390625, 2.44140625]


def _initial_log2_gain(lambdas: list[float], M: int) -> torch.Tensor:
    """Gains spread like the rates: ``0.5 · log2(λ_q / geomean λ)`` (MSE ∝ step², step ∝ 1/gain)."""
    lam = np.log2(np.asarray(lambdas, dtype=np.float64))
    spread = torch.tensor(0.5 * (lam - lam.mean()), dtype=torch.float32)
    return spread[:, None].repeat(1, M)


class GainedFactorizedCodec(BmzModel):
    """Base: ``g_a`` → gain[q] → quantise → factorized prior of quality q → inv_gain[q] → ``g_s``.

    Subclasses build ``self.g_a`` (1 → M channels, ``downsampling``×) and ``self.g_s`` (M → 1) and
    call :meth:`_init_coding` with the latent width ``M``.
    """

    M: int

    def _init_coding(self, M: int) -> None:
        self.M = int(M)
        g = _initial_log2_gain(self.lambdas, self.M)
        self.log2_gain = nn.Parameter(g)
        self.log2_inv_gain = nn.Parameter(-g.clone())
        self.entropy_bottlenecks = nn.ModuleList(priors.entropy_bottleneck(self.M) for _ in self.lambdas)
        self._init_fixed_synthesis(self.M)

    # ---- training path -------------------------------------------------------------------
    def forward(self, x: torch.Tensor, q: torch.Tensor) -> dict:
        y = self.g_a(x)
        yg = y * torch.exp2(self.log2_gain[q][:, :, None, None])
        y_hat = torch.empty_like(yg)
        lik = torch.empty_like(yg)
        for qi in torch.unique(q).tolist():  # each quality has its own density
            sel = (q == qi).nonzero(as_tuple=True)[0]
            yh, lk = self.entropy_bottlenecks[qi](yg[sel])
            y_hat = y_hat.index_put((sel,), yh)
            lik = lik.index_put((sel,), lk)
        x_hat = self.g_s(y_hat * torch.exp2(self.log2_inv_gain[q][:, :, None, None]))
        return {"x_hat": x_hat, "likelihoods": {"y": lik}}

    # ---- shipping ------------------------------------------------------------------------
    def freeze(self) -> None:
        for eb in self.entropy_bottlenecks:
            eb.update(force=True, update_quantiles=True)
        self._freeze_fixed_synthesis()
        self._coders = None

    @property
    def coders(self) -> list["entropy.TableCoder"]:
        if getattr(self, "_coders", None) is None:
            self._coders = [entropy.TableCoder.from_entropy_model(eb) for eb in self.entropy_bottlenecks]
        return self._coders

    def _medians(self, q: int) -> torch.Tensor:
        return self.entropy_bottlenecks[q].quantiles[:, 0, 1].detach()[None, :, None, None]

    # ---- bitstream -----------------------------------------------------------------------
    @torch.no_grad()
    def analyse(self, x: torch.Tensor, q: int, single_stream: bool = False) -> tuple[bytes, torch.Tensor]:
        """Encode one slice ``(1, 1, H, W)`` → (one range-coded stream of the gained, quantised
        latent, the symbols); ``single_stream`` changes nothing (there is one stream anyway)."""
        y = self.g_a(x)
        sym = torch.round(y * torch.exp2(self.log2_gain[q])[None, :, None, None]
                          - self._medians(q)).to(torch.int32)
        return self.coders[q].encode(sym, entropy.channel_indexes(sym.shape)), sym

    @torch.no_grad()
    def decode_latents(self, data: bytes, shape: tuple[int, int], q: int,
                       single_stream: bool = False) -> dict[str, torch.Tensor]:
        """Entropy-decode one slice payload of padded size ``shape``, without synthesis →
        ``{"y": int32 symbols (1, M, H/D, W/D)}`` (``round(y · gain[q] − median[q])``)."""
        H, W = shape
        yshape = (1, self.M, H // self.downsampling, W // self.downsampling)
        return {"y": self.coders[q].decode(data, entropy.channel_indexes(yshape))}

    def _latent_offsets(self) -> torch.Tensor:
        return torch.stack([self._medians(q).double().reshape(-1) for q in range(self.n_qualities)])


@register_model("factorized")
class GainedFactorizedPrior(GainedFactorizedCodec):
    """Ballé et al. 2016 GDN transforms with a factorized prior, single channel, gain units for
    variable rate (``stages`` × conv5↓2, 1→N→…→M; the mirror with IGDN)."""

    def __init__(self, N: int = 64, M: int = 128, stages: int = 3, lambdas: list[float] | None = None):
        super().__init__(lambdas or FAMILY_LAMBDAS)
        self.N, self.stages = int(N), int(stages)
        self.downsampling = 2 ** self.stages
        self.g_a, self.g_s = gdn_transforms(N, M, self.stages)
        self._init_coding(M)

    def config(self) -> dict:
        return {"N": self.N, "M": self.M, "stages": self.stages, "lambdas": self.lambdas}


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True))


class UNetNoSkip(GainedFactorizedCodec):
    """U-Net encoder/decoder without skip connections as a bottleneck codec (widths per level;
    ``len(widths) - 1`` max-pools, so ``2**(len(widths) - 1)``× downsampling)."""

    default_widths: tuple[int, ...] = (64, 128, 256, 512, 1024)
    default_M: int = 256

    def __init__(self, widths: list[int] | None = None, M: int | None = None,
                 lambdas: list[float] | None = None):
        super().__init__(lambdas or FAMILY_LAMBDAS)
        self.widths = [int(w) for w in (widths or self.default_widths)]
        M = int(M or self.default_M)
        self.downsampling = 2 ** (len(self.widths) - 1)
        enc: list[nn.Module] = [_double_conv(1, self.widths[0])]
        for a, b in zip(self.widths, self.widths[1:]):
            enc += [nn.MaxPool2d(2), _double_conv(a, b)]
        enc.append(nn.Conv2d(self.widths[-1], M, 1))
        self.g_a = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(M, self.widths[-1], 1), nn.ReLU(inplace=True)]
        for b, a in zip(self.widths[::-1], self.widths[-2::-1]):
            dec += [nn.ConvTranspose2d(b, a, 2, stride=2), nn.ReLU(inplace=True), _double_conv(a, a)]
        dec.append(nn.Conv2d(self.widths[0], 1, 1))
        self.g_s = nn.Sequential(*dec)
        self._init_he()
        self._init_coding(M)

    def _init_he(self) -> None:
        """He initialisation (ReLU gain, zero biases). PyTorch's default shrinks the activations
        layer after layer: at initialisation the latent of the 17-layer V1 had a standard deviation
        of 0.02 (quantisation noise 15× larger) and the output one of 0.0006 — the network first
        had to learn a thousandfold scale, and with the default it never left a blurred mean
        (the PSNR plateau the first ``unet-noskip-c`` stalled on)."""
        for mod in [*self.g_a.modules(), *self.g_s.modules()]:
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, nonlinearity="relu", mode="fan_in")
                nn.init.zeros_(mod.bias)
            elif isinstance(mod, nn.ConvTranspose2d):  # weight (in, out, k, k): fan_in is dim 0
                nn.init.kaiming_normal_(mod.weight, nonlinearity="relu", mode="fan_out")
                nn.init.zeros_(mod.bias)

    def config(self) -> dict:
        return {"widths": self.widths, "M": self.M, "lambdas": self.lambdas}


@register_model("unet-noskip-v1")
class UNetNoSkipV1(UNetNoSkip):
    """U-Net V1 (widths 64…1024, 16×) without skip connections, factorized prior, gain units."""


@register_model("unet-noskip-v2")
class UNetNoSkipV2(UNetNoSkip):
    """U-Net V2 (1.5× V1's widths: 96…1536, 16×) without skip connections, factorized prior."""

    default_widths = (96, 192, 384, 768, 1536)


@register_model("unet-noskip-c")
class UNetNoSkipC(UNetNoSkip):
    """U-Net C, streamlined (widths 32…256 over 3 pools, 8×) without skips, factorized prior."""

    default_widths = (32, 64, 128, 256)
    default_M = 128


class ConvAutoencoder(GainedFactorizedCodec):
    """The minimal convolutional autoencoder with a ``C``-channel latent at 4×, entropy-coded."""

    channels = 16

    def __init__(self, C: int | None = None, lambdas: list[float] | None = None):
        super().__init__(lambdas or FAMILY_LAMBDAS)
        C = int(C or self.channels)
        self.C = C
        self.downsampling = 4
        self.g_a = nn.Sequential(
            nn.Conv2d(1, C, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(C, C, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(C, C, 3, stride=2, padding=1))
        self.g_s = nn.Sequential(
            nn.ConvTranspose2d(C, C, 3, stride=2, padding=1, output_padding=1), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(C, C, 3, stride=2, padding=1, output_padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(C, 1, 3, padding=1))
        self._init_coding(C)

    def config(self) -> dict:
        return {"C": self.C, "lambdas": self.lambdas}


@register_model("cnn-ae-8")
class ConvAutoencoder8(ConvAutoencoder):
    """Minimal convolutional autoencoder, 8-channel latent at 4× (0.5 values per pixel)."""

    channels = 8


@register_model("cnn-ae-16")
class ConvAutoencoder16(ConvAutoencoder):
    """Minimal convolutional autoencoder, 16-channel latent at 4× (1 value per pixel)."""

    channels = 16


@register_model("cnn-ae-32")
class ConvAutoencoder32(ConvAutoencoder):
    """Minimal convolutional autoencoder, 32-channel latent at 4× (2 values per pixel)."""

    channels = 32
