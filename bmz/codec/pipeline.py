"""From stored integer slices to the network's scale and back: what every learned chunk kind
(:mod:`bmz.codec.chunks`) and the training share.

Intensity mapping (exact, written in the file): for a volume with stored values in
``[vmin, vmax]``, the network sees ``x = (v - vmin) / (vmax - vmin)`` in float32, and a decoded
``x̂`` maps back to ``clip(rint(float64(x̂) · (vmax - vmin)) + vmin, vmin, vmax)`` in the original
dtype. PSNR on the network's scale is therefore PSNR with peak = volume max − min.

Slices are padded to a multiple of the model's downsampling factor by repeating edge pixels and
cropped after decoding. Each learned chunk carries a ``floor``: decoded values ``≤ min + floor``
become ``min`` (:func:`choose_floor`). The chunks' layouts: :mod:`bmz.codec.chunks`.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Iterator

import numpy as np

if TYPE_CHECKING:
    import torch


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run the transforms on one thread. Encoding: the same input gives the same bytes whatever
    the caller's thread setting (float convolutions may sum in another order on more threads).
    Decoding is integer-exact at any thread count (:mod:`bmz.codec.entropy`,
    :mod:`bmz.codec.fixedpoint`); one thread is just faster for MRI-sized slices."""
    with torch_threads(1):
        yield


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the transforms on ``n`` threads (then restore the caller's setting); ``None``: leave
    torch alone (and unimported: nothing here runs a transform). Only decoding may use more than
    one: its arithmetic is exact, so the arrays do not depend on ``n``."""
    if n is None:
        yield
        return
    import torch  # heavy: imported by what runs the transforms, not by reading a file's header

    old = torch.get_num_threads()
    if old == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def bit_depth(vmin: int, vmax: int) -> int:
    """Bits needed for the values' range: ``ceil(log2(vmax - vmin + 1))`` (at least 1)."""
    return max(1, math.ceil(math.log2(int(vmax) - int(vmin) + 1)))


def intensity_mapping(data: np.ndarray) -> dict:
    """The exact mapping of a volume's stored values to [0, 1]: offset, scale, bit depth."""
    if data.size == 0:
        raise ValueError("empty array")
    return mapping_for_range(int(data.min()), int(data.max()))


def mapping_for_range(vmin: int, vmax: int) -> dict:
    """:func:`intensity_mapping` of a volume whose stored values span ``[vmin, vmax]``."""
    vmin, vmax = int(vmin), int(vmax)
    return {"offset": vmin, "scale": vmax - vmin, "bits": bit_depth(vmin, vmax), "min": vmin, "max": vmax}


def to_unit(data: np.ndarray, mapping: dict) -> np.ndarray:
    """Stored values → float32 in [0, 1] (all zeros when the volume is constant)."""
    x = data.astype(np.float64) - mapping["offset"]
    if mapping["scale"] > 0:
        x /= mapping["scale"]
    return x.astype(np.float32)


def from_unit(x: np.ndarray, mapping: dict, dtype: np.dtype) -> np.ndarray:
    """Network output → stored values, clipped to the volume's range, in ``dtype``."""
    v = np.rint(x.astype(np.float64) * mapping["scale"]) + mapping["offset"]
    return np.clip(v, mapping["min"], mapping["max"]).astype(dtype)


def pad_to_multiple(s: np.ndarray, m: int) -> np.ndarray:
    H, W = s.shape
    ph, pw = (-H) % m, (-W) % m
    if ph == 0 and pw == 0:
        return np.ascontiguousarray(s)
    return np.pad(s, ((0, ph), (0, pw)), mode="edge")


def padded_shape(shape: tuple[int, int], m: int) -> tuple[int, int]:
    return (shape[0] + (-shape[0]) % m, shape[1] + (-shape[1]) % m)


def floor_candidates(mapping: dict) -> int:
    """The largest floor the encoder considers: 1/32 of the range, at least 4 stored units."""
    return int(min(65535, max(4, mapping["scale"] // 32)))


def choose_floor(s: np.ndarray, rec: np.ndarray, mapping: dict) -> int:
    """The floor ``f`` minimising the slice's squared error when every reconstructed value
    ``≤ min + f`` is set to ``min`` (``f`` = 0: only what is already ``min``).

    Learned reconstructions leave flat background (air, stored as the volume minimum) a few units
    above it; that costs little PSNR but much SSIM and is visible in windowed displays. Sending
    one number per slice removes it whenever that lowers the error."""
    vmin = mapping["min"]
    F = floor_candidates(mapping)
    low = rec <= vmin + F
    if not low.any():
        return 0
    r = rec[low].astype(np.int64) - vmin  # 0..F
    e_keep = (s[low].astype(np.int64) - rec[low]) ** 2
    e_snap = (s[low].astype(np.int64) - vmin) ** 2
    gain = np.bincount(r, weights=(e_keep - e_snap).astype(np.float64), minlength=F + 1)
    # snapping every value ≤ f changes the error by -Σ_{v ≤ f} gain[v]: take the best prefix
    best = np.cumsum(gain)
    f = int(np.argmax(best))
    return f if best[f] > 0 else 0


def synthesize_latents(model, a: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    """Fixed-point synthesis of integer activations ``a`` ``(B, M, h, w)`` (units 2**-ACT_BITS, as
    ``model.activations`` gives) → ``x̂`` float64 ``(B, H, W)`` on the network's [0, 1] scale,
    cropped to the slice ``shape``. Bit-exact: decoding a learned chunk is this on
    ``activations(y, q)``."""
    H, W = shape
    return model.fx_s(a)[:, 0, :H, :W].numpy()
