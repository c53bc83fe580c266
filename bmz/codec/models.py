"""Learned single-channel image codecs and their registry.

Every model follows one contract (see :class:`BmzModel`):

* ``forward(x, q)`` — training path: returns ``{"x_hat", "likelihoods"}`` with an *estimated* rate;
  ``x`` is a batch ``(B, 1, H, W)`` of slices mapped to ``[0, 1]``, ``q`` a ``(B,)`` tensor of quality
  indices (variable-rate models) — one set of weights serves every quality. A model may add
  ``"extra_loss"``, a ``(B,)`` tensor the training loop adds to the rate–distortion loss (the
  VQ-VAE's commitment loss).
* ``compress_slice(x, q) -> bytes`` / ``decompress_slice(data, shape, q) -> x_hat`` — the real
  bitstream of one slice (``x`` of shape ``(1, 1, H, W)`` with H, W multiples of ``downsampling``).
  ``decompress_slice`` = ``synthesize(decode_latents(data, shape, q)["y"], q)``: the entropy
  decoding alone (``decode_latents``, integer symbols) and the bit-exact synthesis of symbols.
* ``freeze()`` — after training: builds the CDF tables and the integer hyper-synthesis, once. A
  frozen model never recomputes them, so every machine uses the very same tables.

Names are kebab-case and unique; :func:`register_model` refuses duplicates.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import UnknownModelError
# the families: each registers its models on import (hyperprior first: the others build on it)
from . import hyperprior
from . import factorized  # noqa: F401
from . import context  # noqa: F401
from . import vqvae  # noqa: F401
from . import fast  # noqa: F401
from .hyperprior import (BmzModel, GainedScaleHyperprior, gdn_transforms,  # noqa: F401 (re-exported)
                         payload_decoders, register_model)
from . import priors
from .layers import GDN

_REGISTRY = hyperprior._REGISTRY


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def build_model(name: str, *, for_coding: bool = False, **config) -> "BmzModel":
    """Instantiate the architecture registered as ``name`` with ``config``: to train and freeze
    (CompressAI's entropy models), or with ``for_coding`` to load frozen weights and code only
    (frozen tables in their place, no CompressAI import: :mod:`bmz.codec.priors`)."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; known models: {', '.join(model_names())}"
        ) from None
    if not for_coding:
        return cls(**config)
    with priors.coding_only():
        return cls(**config)


def model_class(name: str) -> type | None:
    """The class registered as ``name``, or ``None``."""
    return _REGISTRY.get(name)


def decoder_macs_per_pixel(model: BmzModel, size: int = 64) -> float:
    """Multiply–accumulates of everything the decoder runs (synthesis, and the hyper-synthesis
    where there is one) per output pixel, counting convolutions and GDN's channel mixing."""
    macs = 0

    def hook(m, inp, out):
        nonlocal macs
        k = m.kernel_size[0] * m.kernel_size[1] if hasattr(m, "kernel_size") else 1
        if isinstance(m, nn.ConvTranspose2d):
            macs += inp[0].numel() * m.out_channels * k // m.groups
        elif isinstance(m, nn.Conv2d):
            macs += out.numel() * m.in_channels * k // m.groups
        elif isinstance(m, GDN):
            macs += out.numel() * out.shape[1]

    size = max(size, model.downsampling)
    with torch.no_grad():  # latent shapes from the analysis side
        y = model.g_a(torch.zeros(1, 1, size, size))
        runs = [(model.g_s, torch.zeros_like(y))]
        if hasattr(model, "h_s"):
            runs.append((model.h_s, torch.zeros_like(model.h_a(y))))
    for net, inp in runs:
        handles = [m.register_forward_hook(hook) for m in net.modules()
                   if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, GDN))]
        try:
            with torch.no_grad():
                net(inp)
        finally:
            for h in handles:
                h.remove()
    return macs / float(size * size)
