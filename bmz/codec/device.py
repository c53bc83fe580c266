"""Decoding on another device (a GPU): the fixed-point synthesis moved, everything else kept.

``on_device(model, "cuda")`` gives the frozen model with its fixed-point synthesis
(:class:`bmz.codec.fixedpoint.FixedPointSynthesis`, the bulk of a slice's arithmetic) on the device;
the entropy decoding, the integer hyper-synthesis and the integer entropy parameters stay on the
CPU (they are serial or small). The decoded arrays are the CPU's, bit for bit: every partial sum of
the fixed-point synthesis is an integer below 2**52, exact in binary64 in any summation order,
and its square roots and products are single IEEE-754 operations. What could break that is an
algorithm that is not a sum of the products — cuDNN may pick transform-based ones (FFT,
Winograd) — so cuDNN is switched off for these convolutions: PyTorch's own CUDA convolution is an
im2col and a cuBLAS product, exact under the same bound.
"""

from __future__ import annotations

import copy
import threading

import torch

from ..errors import InputError

_LOCK = threading.Lock()
_COPIES: dict[tuple[int, str], "OnDevice"] = {}


def parse_device(device) -> torch.device | None:
    """``None`` / ``"cpu"`` → None (decode on the CPU); ``"cuda"``, ``"cuda:1"`` … → that device,
    checked to exist (InputError naming what is there otherwise)."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"device {device!r}: not a device name (cpu, cuda, cuda:N): {e}") from None
    if dev.type == "cpu":
        return None
    if dev.type != "cuda":
        raise InputError(f"device {device!r}: bmz decodes on the CPU or a CUDA GPU")
    if not torch.cuda.is_available():
        raise InputError(f"device {device!r}: no CUDA GPU is available to torch here")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return dev


class OnDevice:
    """A frozen model whose :meth:`synthesize` runs on ``device`` (see the module docstring);
    every other attribute is the model's own."""

    def __init__(self, model, device: torch.device):
        self.__dict__["_model"] = model
        self.__dict__["device"] = device
        self.__dict__["_fx"] = copy.deepcopy(model.fx_s).to(device)

    def __getattr__(self, name):
        return getattr(self._model, name)

    @torch.no_grad()
    def synthesize(self, sym: torch.Tensor, q: int) -> torch.Tensor:
        a = self._model.activations(sym, q).to(self.device)
        with torch.backends.cudnn.flags(enabled=False):
            return self._fx(a).cpu()

    @torch.no_grad()
    def decompress_slice(self, data: bytes, shape: tuple[int, int], q: int,
                         single_stream: bool = False, **kw) -> torch.Tensor:
        return self.synthesize(self._model.decode_latents(data, shape, q, single_stream, **kw)["y"], q)


def on_device(model, device: torch.device | None):
    """``model`` itself for the CPU (``None``), else its :class:`OnDevice` twin (one per model
    and device, kept)."""
    if device is None:
        return model
    key = (id(model), str(device))
    with _LOCK:
        if key not in _COPIES:
            _COPIES[key] = OnDevice(model, device)
        return _COPIES[key]
