"""The model contract, the registry, and the scale-hyperprior family the others build on.

:class:`BmzModel` is the contract every model follows (:mod:`bmz.codec.models` describes it);
:func:`register_model` registers a class under its name; :func:`gdn_transforms` and the
convolution helpers are the shared analysis/synthesis layers; :class:`GainedScaleHyperprior` is
the ``hyperprior`` family, whose payload layout (:func:`payload_decoders`) the context family
shares. :mod:`bmz.codec.models` gathers every family and builds models by name.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from . import entropy, fixedpoint, priors
from .layers import GDN

_REGISTRY: dict[str, Callable[..., "BmzModel"]] = {}


def register_model(name: str):
    """Class decorator registering a model under a unique kebab-case ``name``."""

    def deco(cls):
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered")
        if name != name.lower() or "_" in name or " " in name:
            raise ValueError(f"model names are kebab-case, got {name!r}")
        cls.model_name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def conv(cin: int, cout: int, k: int = 5, s: int = 2) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=s, padding=k // 2)


def deconv(cin: int, cout: int, k: int = 5, s: int = 2) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, k, stride=s, padding=k // 2, output_padding=s - 1)


def gdn_transforms(N: int, M: int, stages: int) -> tuple[nn.Sequential, nn.Sequential]:
    """Ballé's analysis / synthesis pair: ``stages`` × conv5↓2 with GDN between (1→N→…→N→M),
    and the mirror with transposed convolutions and inverse GDN."""
    ga: list[nn.Module] = [conv(1, N)]
    gs: list[nn.Module] = []
    for _ in range(stages - 2):
        ga += [GDN(N), conv(N, N)]
        gs += [deconv(N, N), GDN(N, inverse=True)]
    ga += [GDN(N), conv(N, M)]
    return nn.Sequential(*ga), nn.Sequential(deconv(M, N), GDN(N, inverse=True), *gs, deconv(N, 1))


class BmzModel(nn.Module):
    """Base class: configuration, quality levels and the shared contract."""

    model_name = "?"
    downsampling = 64

    def __init__(self, lambdas: list[float]):
        super().__init__()
        self.lambdas = [float(v) for v in lambdas]

    @property
    def n_qualities(self) -> int:
        return len(self.lambdas)

    def config(self) -> dict:
        raise NotImplementedError

    @torch.no_grad()
    def decompress_slice(self, data: bytes, shape: tuple[int, int], q: int,
                         single_stream: bool = False) -> torch.Tensor:
        """Decode one slice of padded size ``shape`` → ``x_hat`` ``(1, 1, H, W)`` (float, not
        clamped): :meth:`decode_latents` (each model's), then the fixed-point synthesis."""
        return self.synthesize(self.decode_latents(data, shape, q, single_stream)["y"], q)

    def load_state_dict(self, state_dict, strict: bool = True):
        """Like ``nn.Module.load_state_dict``, but CDF tables (whose size is only known after
        ``freeze()``) take the stored shape instead of failing on a size mismatch."""
        for name, buf in list(self.named_buffers()):
            if name.rsplit(".", 1)[-1] in ("_offset", "_quantized_cdf", "_cdf_length") \
                    and name in state_dict and buf.shape != state_dict[name].shape:
                mod_name, attr = name.rsplit(".", 1)
                setattr(self.get_submodule(mod_name), attr, torch.empty_like(state_dict[name]))
        return super().load_state_dict(state_dict, strict=strict)

    # ---- fixed-point decoding (bmz.codec.fixedpoint) -------------------------------------
    def _init_fixed_synthesis(self, M: int) -> None:
        """The fixed-point twin of ``self.g_s`` and the integer decoder-side gains (and latent
        offsets, for priors with medians) in units of 2**-ACT_BITS, all set by ``freeze()``."""
        self.fx_s = fixedpoint.FixedPointSynthesis(self.g_s)
        self.register_buffer("dec_inv_gain_fx", torch.zeros(self.n_qualities, M, dtype=torch.int64))
        self.register_buffer("dec_offset_fx", torch.zeros(self.n_qualities, M, dtype=torch.int64))

    def _latent_offsets(self) -> torch.Tensor:
        """Per quality and channel, what is added to a decoded symbol before the inverse gain."""
        return torch.zeros(self.dec_offset_fx.shape, dtype=torch.float64)

    @torch.no_grad()
    def _freeze_fixed_synthesis(self) -> None:
        A = fixedpoint.ACT_BITS
        self.fx_s.build(self._synthesis_scales())
        self.dec_inv_gain_fx.copy_(torch.round(torch.exp2(self.log2_inv_gain.detach().double()) * 2.0**A).long())
        self.dec_offset_fx.copy_(torch.round(self._latent_offsets() * 2.0**A).long())

    def _synthesis_scales(self) -> dict[int, int] | None:
        """Per-layer powers of two for the fixed-point synthesis
        (:func:`bmz.codec.fixedpoint.activation_scales`); none by default."""
        return None

    def activations(self, sym: torch.Tensor, q: int) -> torch.Tensor:
        """Decoded integer latent symbols of quality ``q`` → the fixed-point synthesis's input:
        the *ungained* latent ``a = round((sym + offset) · inv_gain)`` as int64 in units of
        ``2**-ACT_BITS`` (the same scale for every quality, so codes of different qualities of
        one model can be mixed here: :mod:`bmz.interpolate`)."""
        A = fixedpoint.ACT_BITS
        s = sym.to(torch.int64) * 2**A + self.dec_offset_fx[q][None, :, None, None]
        return torch.div(s * self.dec_inv_gain_fx[q][None, :, None, None] + 2 ** (A - 1), 2**A,
                         rounding_mode="floor")

    def synthesize(self, sym: torch.Tensor, q: int) -> torch.Tensor:
        """Decoded integer latent symbols of quality ``q`` → ``x_hat`` (float64, bit-exact):
        ``a = round((sym + offset) · inv_gain)`` in integers (:meth:`activations`), then the
        fixed-point synthesis."""
        return self.fx_s(self.activations(sym, q))

    def compress_slice(self, x: torch.Tensor, q: int) -> bytes:
        """Encode one slice ``(1, 1, H, W)`` → its payload bytes (see :meth:`analyse`)."""
        return self.analyse(x, q)[0]

    @torch.no_grad()
    def synthesize_float(self, sym: torch.Tensor, q: int) -> torch.Tensor:
        """The float32 synthesis of decoded symbols: what :meth:`synthesize` computes exactly, to
        within rounding (for encoder-side decisions; never used to decode)."""
        off = self._latent_offsets()[q].float()[None, :, None, None]
        return self._g_s_float(
            (sym.float() + off) * torch.exp2(self.log2_inv_gain[q]).float()[None, :, None, None])

    def _g_s_float(self, a: torch.Tensor) -> torch.Tensor:
        """``g_s(a)`` in float32, channels-last: oneDNN's fast path of the transposed
        convolutions (several times faster on the CPU, the same sums here)."""
        return self.g_s(a.contiguous(memory_format=torch.channels_last)).contiguous()

    def aux_loss(self) -> torch.Tensor:
        return sum(m.loss() for m in self.modules() if priors.is_trainable_bottleneck(m))


@register_model("hyperprior")
class GainedScaleHyperprior(BmzModel):
    r"""Ballé et al. 2018 scale hyperprior, single channel, with gain units for variable rate
    and an integer hyper-synthesis for bit-exact decoding.

    J. Ballé, D. Minnen, S. Singh, S. J. Hwang, N. Johnston, "Variational image compression with a
    scale hyperprior", ICLR 2018; gain units after Z. Cui et al., "Asymmetric gained deep image
    compression with continuous rate adaptation", CVPR 2021; integer hyper-synthesis after
    J. Ballé, N. Johnston, D. Minnen, "Integer networks for data compression with latent-variable
    models", ICLR 2019.

    ::

        x ─g_a─► y ──×gain[q]──► Q ─► ŷ ──×inv_gain[q]──► g_s ─► x̂
                 │                    ▲ (Gaussian, σ from ŝ + log2 gain[q])
                 └─|·|─h_a─► z ─► Q ─► ẑ ─h_s─► log2 σ

    g_a: ``stages`` × conv5↓2 with GDN between (1→N→…→N→M);  g_s: the mirror with IGDN.
    h_a: conv3 ReLU conv5↓2 ReLU conv5↓2 (M→N);  h_s: deconv5↑2 ReLU deconv5↑2 ReLU conv3 (N→M),
    predicting log2 σ of the *ungained* latent, so that the scale of the gained latent is exactly
    ``h_s(ẑ) + log2 gain[q]`` — an addition that the integer decoder does in fixed point.

    Ballé's transforms have 4 stages (16× downsampling, M/256 latent values per pixel); bmz's default
    is 3 stages (8×, M/64 per pixel): MRI archives want high fidelity (40–55 dB), where 16× with a
    narrow latent is a dimensional bottleneck that no bit rate can lift.
    """

    def __init__(self, N: int = 64, M: int = 128, lambdas: list[float] | None = None,
                 log2_scale_min: float = math.log2(0.11), log2_scale_max: float = 10.0,
                 scale_levels: int = 76, stages: int = 3):
        lambdas = lambdas or [0.004 * 2.5**i for i in range(8)]
        super().__init__(lambdas)
        self.N, self.M, self.stages = N, M, int(stages)
        self.downsampling = 2 ** (self.stages + 2)
        self.g_a, self.g_s = gdn_transforms(N, M, self.stages)
        self.h_a = nn.Sequential(conv(M, N, 3, 1), nn.ReLU(inplace=True), conv(N, N), nn.ReLU(inplace=True),
                                 conv(N, N))
        self.h_s = nn.Sequential(deconv(N, N), nn.ReLU(inplace=True), deconv(N, N), nn.ReLU(inplace=True),
                                 conv(N, M, 3, 1))
        q = torch.arange(self.n_qualities, dtype=torch.float32)
        spread = (q - (self.n_qualities - 1) / 2) * 0.66
        self.log2_gain = nn.Parameter(spread[:, None].repeat(1, M))
        self.log2_inv_gain = nn.Parameter(-spread[:, None].repeat(1, M))
        self.entropy_bottleneck = priors.entropy_bottleneck(N)
        self.log2_scale_min, self.log2_scale_max = float(log2_scale_min), float(log2_scale_max)
        self.scale_levels = int(scale_levels)
        table = np.exp2(np.linspace(self.log2_scale_min, self.log2_scale_max, self.scale_levels))
        self.gaussian_conditional = priors.gaussian_conditional(table.tolist())
        self.int_hs = entropy.IntegerHyperSynthesis(self.h_s, self.log2_gain, self.log2_scale_min,
                                                    self.log2_scale_max, self.scale_levels)
        self._init_fixed_synthesis(M)

    def config(self) -> dict:
        return {"N": self.N, "M": self.M, "stages": self.stages, "lambdas": self.lambdas,
                "log2_scale_min": self.log2_scale_min, "log2_scale_max": self.log2_scale_max,
                "scale_levels": self.scale_levels}

    # ---- training path -------------------------------------------------------------------
    def forward(self, x: torch.Tensor, q: torch.Tensor) -> dict:
        y = self.g_a(x)
        lg = self.log2_gain[q][:, :, None, None]
        z = self.h_a(torch.abs(y))
        z_hat, z_lik = self.entropy_bottleneck(z)
        log2_sigma = (self.h_s(z_hat) + lg).clamp(self.log2_scale_min, self.log2_scale_max)
        y_hat, y_lik = self.gaussian_conditional(y * torch.exp2(lg), torch.exp2(log2_sigma))
        x_hat = self.g_s(y_hat * torch.exp2(self.log2_inv_gain[q][:, :, None, None]))
        return {"x_hat": x_hat, "likelihoods": {"y": y_lik, "z": z_lik}}

    # ---- shipping ------------------------------------------------------------------------
    def freeze(self) -> None:
        """Build CDF tables and integer hyper-synthesis from the current weights (after training)."""
        self.entropy_bottleneck.update(force=True, update_quantiles=True)
        self.gaussian_conditional.update()
        self.int_hs.build()
        self._freeze_fixed_synthesis()
        self._coders = None

    @property
    def coders(self) -> tuple["entropy.TableCoder", "entropy.TableCoder"]:
        """Entropy coders over the frozen tables (z: factorized prior, y: Gaussian table)."""
        if getattr(self, "_coders", None) is None:
            self._coders = (entropy.TableCoder.from_entropy_model(self.entropy_bottleneck),
                            entropy.TableCoder.from_entropy_model(self.gaussian_conditional))
        return self._coders

    # ---- bitstream -----------------------------------------------------------------------
    def _z_medians(self) -> torch.Tensor:
        return self.entropy_bottleneck.quantiles[:, 0, 1].detach()

    @torch.no_grad()
    def analyse(self, x: torch.Tensor, q: int, single_stream: bool = False) -> tuple[bytes, torch.Tensor]:
        """Encode one slice ``(1, 1, H, W)`` → (payload bytes, the latent symbols coded).

        The payload is ``u32 len(z) | z stream | y stream`` (chunk kind 1), or with
        ``single_stream`` one stream holding z then y (chunk kind 3: 4 length bytes and one
        stream's sealing fewer per slice)."""
        z_coder, y_coder = self.coders
        y = self.g_a(x)
        z = self.h_a(torch.abs(y))
        med = self._z_medians()[None, :, None, None]
        z_sym = torch.round(z - med).to(torch.int32)
        z_hat = z_sym.to(torch.float32) + med
        y_idx = self.int_hs.indexes(z_hat, q)
        y_sym = torch.round(y * torch.exp2(self.log2_gain[q])[None, :, None, None]).to(torch.int32)
        z_enc = entropy.stream_encoder()
        y_enc = z_enc if single_stream else entropy.stream_encoder()
        z_coder.encode_into(z_enc, z_sym, entropy.channel_indexes(z_sym.shape))
        y_coder.encode_into(y_enc, y_sym, y_idx)
        if single_stream:
            return entropy.stream_bytes(z_enc), y_sym
        z_bytes = entropy.stream_bytes(z_enc)
        return len(z_bytes).to_bytes(4, "little") + z_bytes + entropy.stream_bytes(y_enc), y_sym

    @torch.no_grad()
    def decode_latents(self, data: bytes, shape: tuple[int, int], q: int,
                       single_stream: bool = False) -> dict[str, torch.Tensor]:
        """Entropy-decode one slice payload of padded size ``shape`` (laid out as :meth:`analyse`
        wrote it), without synthesis → ``{"y": int32 symbols of the gained latent (1, M,
        H/2**stages, W/2**stages), "z": int32 symbols of the hyper-latent (1, N,
        H/2**(stages+2), W/2**(stages+2))}`` (ẑ = z + median)."""
        z_coder, y_coder = self.coders
        H, W = shape
        zshape = (1, self.N, H // self.downsampling, W // self.downsampling)
        z_dec, y_dec = payload_decoders(data, single_stream)
        z_sym = z_coder.decode_from(z_dec, entropy.channel_indexes(zshape))
        z_hat = z_sym.to(torch.float32) + self._z_medians()[None, :, None, None]
        y_sym = y_coder.decode_from(y_dec, self.int_hs.indexes(z_hat, q))
        entropy.check_exhausted(z_dec, y_dec)
        return {"y": y_sym, "z": z_sym}


def payload_decoders(data: bytes, single_stream: bool):
    """Range decoders of a hyperprior payload's (z, y) streams: one shared stream, or
    ``u32 len(z) | z | y`` (ValueError for a payload too short for what it declares)."""
    if single_stream:
        dec = entropy.stream_decoder(data)
        return dec, dec
    if len(data) < 4:
        raise ValueError("slice payload shorter than its 4-byte header")
    nz = int.from_bytes(data[:4], "little")
    if nz > len(data) - 4:
        raise ValueError(f"slice payload declares a {nz}-byte z stream but holds {len(data) - 4} bytes")
    return entropy.stream_decoder(data[4:4 + nz]), entropy.stream_decoder(data[4 + nz:])
