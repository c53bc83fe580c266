"""GDN, bmz's own: the layer the analysis and synthesis transforms use, without importing CompressAI.

A reimplementation of CompressAI's ``compressai.layers.GDN`` with its reparametrisation
(``compressai.ops.parametrizers.NonNegativeParametrizer``) and lower bound
(``compressai.ops.bound_ops.LowerBound``), CompressAI 1.2 — InterDigital Communications, Inc.,
BSD-3-Clause-Clear licence (https://github.com/InterDigitalInc/CompressAI). It is here so that
encoding and decoding with shipped weights never import CompressAI (whose package import pulls
in torch_geometric, torch._dynamo and scipy: seconds before the first slice is decoded).

It is the same layer, not an approximation:

* the same parameters and buffers under the same names, registered in the same order
  (``beta``, ``gamma``, ``beta_reparam.pedestal``, ``beta_reparam.lower_bound.bound``,
  ``gamma_reparam.pedestal``, ``gamma_reparam.lower_bound.bound``): state dicts, and optimiser
  states that index parameters by position, pass between the two unchanged;
* the same initial values, and a forward pass made of the very same tensor operations in the
  same order, so the float analysis — which decides every bit an encoder writes — gives
  identical results, and re-encoding gives byte-identical files;
* the same gradient: the lower bound passes the gradient where ``x ≥ bound`` or where it
  pushes ``x`` up (CompressAI's ``LowerBoundFunction``), else none.

J. Ballé, V. Laparra, E. P. Simoncelli, "Density modeling of images using a generalized
normalization transformation", ICLR 2016.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["GDN", "LowerBound", "NonNegativeParametrizer"]


class _LowerBoundFunction(torch.autograd.Function):
    """``max(x, bound)`` whose gradient passes where ``x ≥ bound`` or the gradient is negative
    (descent then moves ``x`` up, back over the bound)."""

    @staticmethod
    def forward(ctx, x, bound):
        ctx.save_for_backward(x, bound)
        return torch.max(x, bound)

    @staticmethod
    def backward(ctx, grad_output):
        x, bound = ctx.saved_tensors
        pass_through_if = (x >= bound) | (grad_output < 0)
        return pass_through_if * grad_output, None


class LowerBound(nn.Module):
    """``torch.max(x, bound)`` with :class:`_LowerBoundFunction`'s gradient; ``bound`` is a
    one-element float32 buffer."""

    bound: torch.Tensor

    def __init__(self, bound: float):
        super().__init__()
        self.register_buffer("bound", torch.Tensor([float(bound)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _LowerBoundFunction.apply(x, self.bound)


class NonNegativeParametrizer(nn.Module):
    """``p ↦ max(p, bound)² − pedestal``: a value of at least ``minimum`` parametrised by ``p``
    (``pedestal = reparam_offset²``, ``bound = sqrt(minimum + pedestal)``); :meth:`init` is the
    inverse, for initial values."""

    pedestal: torch.Tensor

    def __init__(self, minimum: float = 0, reparam_offset: float = 2**-18):
        super().__init__()
        self.minimum = float(minimum)
        self.reparam_offset = float(reparam_offset)
        pedestal = self.reparam_offset**2
        self.register_buffer("pedestal", torch.Tensor([pedestal]))
        bound = (self.minimum + self.reparam_offset**2) ** 0.5
        self.lower_bound = LowerBound(bound)

    def init(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(torch.max(x + self.pedestal, self.pedestal))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lower_bound(x)
        out = out**2 - self.pedestal
        return out


class GDN(nn.Module):
    r"""Generalized divisive normalization (Ballé et al. 2016), or its inverse (``inverse``):

    .. math:: y_i = x_i \,/\, \sqrt{\beta_i + \textstyle\sum_j \gamma_{ij} x_j^2}
              \qquad (\text{inverse: } y_i = x_i \cdot \sqrt{\cdots})

    ``β`` and ``γ`` are non-negative through :class:`NonNegativeParametrizer` (``β ≥
    beta_min``). CompressAI's ``GDN``, reimplemented (see the module docstring)."""

    def __init__(self, in_channels: int, inverse: bool = False, beta_min: float = 1e-6,
                 gamma_init: float = 0.1):
        super().__init__()
        beta_min = float(beta_min)
        gamma_init = float(gamma_init)
        self.inverse = bool(inverse)

        self.beta_reparam = NonNegativeParametrizer(minimum=beta_min)
        beta = torch.ones(in_channels)
        beta = self.beta_reparam.init(beta)
        self.beta = nn.Parameter(beta)

        self.gamma_reparam = NonNegativeParametrizer()
        gamma = gamma_init * torch.eye(in_channels)
        gamma = self.gamma_reparam.init(gamma)
        self.gamma = nn.Parameter(gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, C, _, _ = x.size()
        beta = self.beta_reparam(self.beta)
        gamma = self.gamma_reparam(self.gamma)
        gamma = gamma.reshape(C, C, 1, 1)
        norm = F.conv2d(x**2, gamma, beta)
        if self.inverse:
            norm = torch.sqrt(norm)
        else:
            norm = torch.rsqrt(norm)
        out = x * norm
        return out
