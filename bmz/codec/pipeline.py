"""From stored integer slices to chunk bytes and back.

Intensity mapping (exact, written in the file): for a volume with stored values in
``[vmin, vmax]``, the network sees ``x = (v - vmin) / (vmax - vmin)`` in float32, and a decoded
``x̂`` maps back to ``clip(rint(float64(x̂) · (vmax - vmin)) + vmin, vmin, vmax)`` in the original
dtype. PSNR on the network's scale is therefore PSNR with peak = volume max − min.

Slices are padded to a multiple of the model's downsampling factor by repeating edge pixels and
cropped after decoding. A slice whose values are all equal is stored as that value alone.

Chunk layout (one per slice), first byte = kind:

* ``0x00`` constant: int64 little-endian stored value.
* ``0x01`` learned (files of chunk format 2, and the base layer of format 3): u16 LE ``floor``,
  then the model's slice payload (its ``analyse``); decoded values ``≤ min + floor`` become
  ``min`` (:func:`choose_floor`).
* ``0x02`` bounded error (files of chunk format 3, ``max_error`` / lossless): see
  :mod:`bmz.codec.bounded`.
* ``0x03`` learned, compact (files of chunk format 4, what bmz writes): ``floor`` as an unsigned
  LEB128 varint (1 byte below 128), then the payload with every entropy-coded part in one
  stream (the model's ``analyse(..., single_stream=True)``). Same decoded values as ``0x01``;
  5–8 bytes fewer per slice, which counts at low rates (a 120×120 slice at 0.1 bpp is 180 bytes).
* ``0x04`` learned, compact, inter-slice (files of chunk format 5, inter-slice models): as ``0x03``,
  but the payload was coded with the previous slice's decoded latent as context (the model's
  ``analyse(..., prev=...)``): it decodes only after the slice before it. Slices are coded in
  groups of G (``codec.group``): slice ``k`` with ``k % G == 0``, and any slice after a constant
  slice, is coded alone (``0x03`` or ``0x00``); every other learned slice is ``0x04``. Decoding
  slice ``k`` therefore entropy-decodes at most the ``k % G`` slices before it (no synthesis).
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import numpy as np
import torch

CHUNK_CONSTANT = 0
CHUNK_LEARNED = 1
CHUNK_LEARNED_COMPACT = 3
CHUNK_LEARNED_INTER = 4
#: the kinds holding a model's payload
LEARNED_KINDS = (CHUNK_LEARNED, CHUNK_LEARNED_COMPACT, CHUNK_LEARNED_INTER)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run the transforms on one thread. Encoding: the same input gives the same bytes whatever
    the caller's thread setting (float convolutions may sum in another order on more threads).
    Decoding is integer-exact at any thread count (:mod:`bmz.codec.entropy`,
    :mod:`bmz.codec.fixedpoint`); one thread is just faster for MRI-sized slices."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


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


def encode_slice(model, s: np.ndarray, mapping: dict, quality: int,
                 kind: int = CHUNK_LEARNED_COMPACT) -> bytes:
    """One stored-value slice (H, W) → chunk bytes: a constant chunk, or a learned one of
    ``kind`` (``CHUNK_LEARNED_COMPACT``; ``CHUNK_LEARNED`` for chunk format 2 / bounded bases)."""
    return encode_slice_in_group(model, s, mapping, quality, kind)[0]


def encode_slice_in_group(model, s: np.ndarray, mapping: dict, quality: int,
                          kind: int = CHUNK_LEARNED_COMPACT, prev: torch.Tensor | None = None
                          ) -> tuple[bytes, torch.Tensor | None]:
    """:func:`encode_slice` that also takes the previous slice's context (``prev``, from
    :func:`group_context`; a learned slice is then chunk kind ``0x04``) and returns this slice's
    context for the next one (None for a constant slice)."""
    if s.size and (s == s.flat[0]).all():
        return bytes([CHUNK_CONSTANT]) + int(s.flat[0]).to_bytes(8, "little", signed=True), None
    if kind not in (CHUNK_LEARNED, CHUNK_LEARNED_COMPACT):
        raise ValueError(f"not a learned chunk kind an encoder asks for: {kind}")
    compact = kind == CHUNK_LEARNED_COMPACT
    x = torch.from_numpy(pad_to_multiple(to_unit(s, mapping), model.downsampling))[None, None]
    if prev is not None:  # with the previous slice as context, or alone where that is smaller
        payload, sym, used = model.analyse_best(x, quality, prev)
        kind, compact = (CHUNK_LEARNED_INTER if used else CHUNK_LEARNED_COMPACT), True
    else:
        payload, sym = model.analyse(x, quality, single_stream=compact)
    H, W = s.shape
    rec = from_unit(model.synthesize_float(sym, quality)[0, 0, :H, :W].numpy(), mapping, np.int64)
    floor = choose_floor(s, rec, mapping)
    chunk = bytes([kind]) + (_varint(floor) if compact else floor.to_bytes(2, "little")) + payload
    return chunk, group_context(model, sym, quality)


def group_context(model, sym: torch.Tensor, quality: int) -> torch.Tensor | None:
    """What the next slice of a group is coded with: the model's context input of this slice's
    decoded latent symbols (None for models without inter-slice context)."""
    return model.context_input(sym, quality) if getattr(model, "inter_slice", False) else None


def _varint(v: int) -> bytes:
    """Unsigned LEB128: 7 bits per byte, least significant first, high bit = more follow."""
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _read_varint(chunk: bytes, pos: int, max_bytes: int = 3) -> tuple[int, int]:
    """(value, position after it) of the LEB128 varint at ``chunk[pos]``; refuses a truncated,
    over-long or non-minimal one (one value, one encoding)."""
    v = 0
    for i in range(max_bytes):
        if pos + i >= len(chunk):
            raise ValueError("learned chunk truncated in its floor")
        b = chunk[pos + i]
        v |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            if b == 0 and i > 0:
                raise ValueError("learned chunk: floor varint is not minimal")
            return v, pos + i + 1
    raise ValueError(f"learned chunk: floor varint longer than {max_bytes} bytes")


def _learned_header(model, chunk: bytes, mapping: dict | None) -> tuple[int, bytes, bool]:
    """(floor, payload, single_stream) of a learned chunk, after the header checks (with the
    volume's ``mapping``: a floor no encoder sends is refused)."""
    if model is None:
        raise ValueError("learned chunk but no model")
    if chunk[0] in (CHUNK_LEARNED_COMPACT, CHUNK_LEARNED_INTER):
        floor, pos = _read_varint(chunk, 1)
        compact = True
    else:
        if len(chunk) < 3:
            raise ValueError(f"learned chunk of {len(chunk)} bytes, shorter than its 3-byte header")
        floor, pos, compact = int.from_bytes(chunk[1:3], "little"), 3, False
    if mapping is not None and floor > floor_candidates(mapping):
        raise ValueError(f"learned chunk: floor {floor} above the largest an encoder sends "
                         f"({floor_candidates(mapping)})")
    return floor, chunk[pos:], compact


def _inter_kw(model, chunk: bytes, prev) -> dict:
    """The keyword that hands an inter-slice chunk its predecessor's context; checks that the
    chunk and the context go together."""
    if chunk[0] == CHUNK_LEARNED_INTER:
        if not getattr(model, "inter_slice", False):
            raise ValueError(f"inter-slice chunk but model {model.model_name} has no inter-slice context")
        if prev is None:
            raise ValueError("inter-slice chunk without a decoded previous slice in its group")
        return {"prev": prev}
    return {}


def decode_slice(model, chunk: bytes, shape: tuple[int, int], mapping: dict, quality: int,
                 dtype: np.dtype, prev: torch.Tensor | None = None) -> np.ndarray:
    """Chunk bytes → stored-value slice (H, W) in ``dtype``. Raises ValueError on a bad chunk.
    ``prev``: the previous slice's :func:`group_context` (needed by an inter-slice chunk)."""
    return decode_slice_in_group(model, chunk, shape, mapping, quality, dtype, prev)[0]


def decode_slice_in_group(model, chunk: bytes, shape: tuple[int, int], mapping: dict, quality: int,
                          dtype: np.dtype, prev: torch.Tensor | None = None
                          ) -> tuple[np.ndarray, torch.Tensor | None]:
    """:func:`decode_slice` → (slice, its :func:`group_context` for the next slice: None for a
    constant slice or a model without inter-slice context)."""
    if not chunk:
        raise ValueError("empty chunk")
    kind = chunk[0]
    H, W = shape
    if kind == CHUNK_CONSTANT:
        if len(chunk) != 9:
            raise ValueError(f"constant chunk of {len(chunk)} bytes, expected 9")
        value = int.from_bytes(chunk[1:9], "little", signed=True)
        if not mapping["min"] <= value <= mapping["max"]:
            raise ValueError(f"constant value {value} outside the volume range")
        return np.full(shape, value, dtype=dtype), None
    if kind in LEARNED_KINDS:
        floor, payload, compact = _learned_header(model, chunk, mapping)
        sym = model.decode_latents(payload, padded_shape(shape, model.downsampling), quality,
                                   single_stream=compact, **_inter_kw(model, chunk, prev))["y"]
        x_hat = model.synthesize(sym, quality)
        v = from_unit(x_hat[0, 0, :H, :W].numpy(), mapping, dtype)
        if floor:
            v[v <= mapping["min"] + floor] = mapping["min"]
        return v, group_context(model, sym, quality)
    raise ValueError(f"unknown chunk kind {kind}")


# ---- latent codes without pixels (bmz.interpolate) ---------------------------------------------


class SliceLatents:
    """What one chunk holds, entropy-decoded but not synthesised (:func:`decode_latents`).

    ``kind``: :data:`CHUNK_CONSTANT` (``value`` = the stored value, no latent) or
    a learned kind (``floor``, and ``symbols``: the model's integer symbols, ``{"y": ...}``
    and for the hyperprior also ``"z"``). ``shape``: the slice (H, W); ``quality``: the index."""

    __slots__ = ("kind", "shape", "quality", "floor", "value", "symbols")

    def __init__(self, kind: int, shape: tuple[int, int], quality: int, floor: int = 0,
                 value: int | None = None, symbols: dict | None = None):
        self.kind, self.shape, self.quality = kind, (int(shape[0]), int(shape[1])), int(quality)
        self.floor, self.value, self.symbols = int(floor), value, symbols


def decode_latents(model, chunk: bytes, shape: tuple[int, int], quality: int,
                   mapping: dict | None = None, prev: torch.Tensor | None = None) -> SliceLatents:
    """Chunk bytes → its entropy-decoded latent symbols (the real decoder of
    :func:`decode_slice`, stopped before the synthesis). Raises ValueError on a bad chunk.
    ``prev`` as in :func:`decode_slice`."""
    if not chunk:
        raise ValueError("empty chunk")
    kind = chunk[0]
    if kind == CHUNK_CONSTANT:
        if len(chunk) != 9:
            raise ValueError(f"constant chunk of {len(chunk)} bytes, expected 9")
        return SliceLatents(kind, shape, quality, value=int.from_bytes(chunk[1:9], "little", signed=True))
    if kind in LEARNED_KINDS:
        floor, payload, compact = _learned_header(model, chunk, mapping)
        sym = model.decode_latents(payload, padded_shape(shape, model.downsampling), quality,
                                   single_stream=compact, **_inter_kw(model, chunk, prev))
        return SliceLatents(kind, shape, quality, floor=floor, symbols=sym)
    raise ValueError(f"unknown chunk kind {kind}")


def synthesize_latents(model, a: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    """Fixed-point synthesis of integer activations ``a`` ``(B, M, h, w)`` (units 2**-ACT_BITS, as
    ``model.activations`` gives) → ``x̂`` float64 ``(B, H, W)`` on the network's [0, 1] scale,
    cropped to the slice ``shape``. Bit-exact: ``decode_slice`` is this on ``activations(y, q)``."""
    H, W = shape
    return model.fx_s(a)[:, 0, :H, :W].numpy()
