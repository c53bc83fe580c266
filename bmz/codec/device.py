"""Decoding on another device (a GPU): the fixed-point synthesis moved, everything else kept.

``on_device(model, "cuda")`` gives the frozen model with its fixed-point synthesis
(:class:`bmz.codec.fixedpoint.FixedPointSynthesis`, the bulk of a slice's arithmetic) on the device,
run in batches of the slices the decoding threads hand it (``bmz decode --jobs N``: up to N per
batch); the entropy decoding, the integer hyper-synthesis and the integer entropy parameters stay
on the CPU, one slice per thread (they are serial or small). The decoded arrays are the CPU's, bit for bit: every partial sum of
the fixed-point synthesis is an integer below 2**52, exact in binary64 in any summation order,
and its square roots and products are single IEEE-754 operations. What could break that is an
algorithm that is not a sum of the products — cuDNN may pick transform-based ones (FFT,
Winograd) — so cuDNN is switched off for these convolutions: PyTorch's own CUDA convolution is an
im2col and a cuBLAS product, exact under the same bound.
"""

from __future__ import annotations

import copy
import threading
import time

import torch

from ..errors import InputError

_LOCK = threading.Lock()
_CUDNN_OFF = threading.Lock()
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


class _Batcher:
    """Runs the synthesis of slices decoded on several threads as batches on the device.

    Each decoding thread entropy-decodes its slice on the CPU, then hands its activations here;
    the first to arrive leads: it waits (at most ``linger`` seconds) until as many slices are
    queued as threads decode (``workers``), runs the slices of one shape as one batch, and hands
    each its result. A batch whose arithmetic fails (a damaged or forged slice out of the exact
    range) is redone slice by slice, so that the error stays with its slice. Batched or not,
    each slice's sums are the same exact integers: the arrays do not depend on the batching."""

    def __init__(self, fx, device: torch.device, max_batch: int = 32, linger: float = 0.05):
        self._fx, self._device = fx, device
        self.max_batch, self.linger = max_batch, linger
        self.workers = 1
        self._cv = threading.Condition()
        self._queue: list[dict] = []
        self._leading = False

    def _compute(self, batch: list[dict]) -> None:
        # cuDNN off is a process-wide switch: one batch at a time holds it (two batchers must not
        # restore it under each other)
        with _CUDNN_OFF, torch.backends.cudnn.flags(enabled=False):
            try:
                a = torch.cat([it["a"] for it in batch]).to(self._device)
                out = self._fx(a).cpu()
                for it, o in zip(batch, torch.split(out, [it["a"].shape[0] for it in batch])):
                    it["out"] = o
            except Exception as e:  # noqa: BLE001 - redone one by one: each error to its slice
                if len(batch) == 1:
                    batch[0]["err"] = e
                    return
                for it in batch:
                    try:
                        it["out"] = self._fx(it["a"].to(self._device)).cpu()
                    except Exception as e:  # noqa: BLE001
                        it["err"] = e

    def run(self, a: torch.Tensor) -> torch.Tensor:
        item = {"a": a, "out": None, "err": None, "done": False}
        with self._cv:
            self._queue.append(item)
            self._cv.notify_all()
            while not item["done"]:
                if self._leading:
                    self._cv.wait()
                    continue
                self._leading = True
                batch: list[dict] = []
                try:
                    want = min(self.max_batch, max(1, self.workers))
                    deadline = time.monotonic() + self.linger
                    while len(self._queue) < want and time.monotonic() < deadline:
                        self._cv.wait(max(0.0, deadline - time.monotonic()))
                    shape = tuple(self._queue[0]["a"].shape[1:])
                    batch = [it for it in self._queue
                             if tuple(it["a"].shape[1:]) == shape][:self.max_batch]
                    taken = {id(it) for it in batch}  # by identity: items hold tensors
                    self._queue = [it for it in self._queue if id(it) not in taken]
                    self._cv.release()
                    try:
                        self._compute(batch)  # errors land in the items, never raised
                    finally:
                        self._cv.acquire()
                finally:
                    self._leading = False
                    for it in batch:
                        it["done"] = True
                    self._cv.notify_all()
        if item["err"] is not None:
            raise item["err"]
        return item["out"]


class OnDevice:
    """A frozen model whose :meth:`synthesize` runs on ``device``, batched across the threads
    that decode (see the module docstring); every other attribute is the model's own."""

    def __init__(self, model, device: torch.device):
        self.__dict__["_model"] = model
        self.__dict__["device"] = device
        self.__dict__["_batcher"] = _Batcher(copy.deepcopy(model.fx_s).to(device), device)

    def __getattr__(self, name):
        return getattr(self._model, name)

    def set_workers(self, n: int) -> None:
        """How many threads decode at once: a batch waits for that many slices at most."""
        self._batcher.workers = max(1, int(n))

    @torch.no_grad()
    def synthesize(self, sym: torch.Tensor, q: int) -> torch.Tensor:
        return self._batcher.run(self._model.activations(sym, q))

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
