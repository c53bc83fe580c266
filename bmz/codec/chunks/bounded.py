"""Chunk kind ``0x02``, bounded error: slices whose decoded values are within ``δ`` of the original
on every voxel (``δ`` = 0: lossless, every bit), in files of chunk format 3 (docs/FORMAT.md §10.2).

A bounded chunk holds an optional **learned base layer** — a :mod:`.learned` chunk of the
volume's model at some quality, without its kind byte, decoded bit-exactly by the fixed-point
decoder — and a **residual stream** (:mod:`bmz.codec.residual`) that codes every voxel with max
error ``δ`` given the base reconstruction (when there is one) and the voxels already decoded. The
chunk also carries the CRC-32 of the exact reconstruction, which the decoder checks.

Layout: the kind byte, the base quality (u8; 0: no base layer), the CRC-32 (u32 LE); with a base
layer its length (u32 LE) and bytes; then the residual stream to the end of the chunk.

The encoder chooses the base quality per volume (``"auto"``: no base, or the lowest qualities,
whichever codes a sample of slices in fewer bytes, stopping at the first quality that does not
improve on the previous; an integer forces one; 0 = no base), and per
slice keeps the base only when it makes the chunk smaller. A slice whose values span at most
``2δ`` is a constant chunk (its mid value). Every chunk is decoded again at encode time and
checked against the original: the bound is verified on the very values any decoder produces.

Files of format 3 hold constant and bounded chunks only: a learned (lossy) chunk would break the
file's guarantee. Their metadata's ``codec`` adds ``max_error`` (δ) and ``residual`` (the residual
coder's name and version, :func:`coder_id`); ``quality`` is the base quality (0: none).

bmz writes bounded-error files in slice groups now (chunk format 6, :mod:`.bounded_inter`, whose
group starts are kind ``0x02`` chunks of the same layout, coded by :mod:`bmz.codec.residual3d`);
format 3 is decoded as ever and written only on request (:class:`BoundedEncoder`: tests, golden
files).
"""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np

from ... import _threads
from ...errors import BmzError, FormatError, InputError
from . import constant, learned
from ._base import SliceContext, SliceLatents

KIND = 2
NAME = "bounded"
#: the chunk format of files whose slices are constant or bounded chunks
FORMAT = 3
#: the lowest ``codec.quality`` (the base quality) of such files: 0, no base layer
MIN_QUALITY = 0
MAX_DELTA = 65535
#: base qualities ``"auto"`` tries besides no base at all
AUTO_QUALITIES = (1, 2)
#: slices ``"auto"`` codes to choose the base quality
AUTO_SAMPLE = 6
_HEADER = 6  # kind, base quality, CRC-32


def _residual():
    """The residual coder (numba-compiled: imported when a bounded chunk is coded, not when a
    file's header is read)."""
    from .. import residual

    return residual


def coder_id() -> str:
    """The residual coder's name and version, recorded in the metadata (``codec.residual``)."""
    return _residual().CODER_ID


def recon_crc(v: np.ndarray) -> int:
    """CRC-32 of a reconstructed slice: its values minus the volume minimum as u16 LE, raster."""
    return zlib.crc32(np.ascontiguousarray(v, dtype="<u2").tobytes()) & 0xFFFFFFFF


class BoundedEncoder:
    """Encodes the slices of one volume with max error ``delta``.

    ``model``: the learned model (``None`` when no base layer is allowed); ``mapping``: the
    volume's intensity mapping (:func:`bmz.codec.pipeline.mapping_for_range`);
    ``base_quality``: ``"auto"``, 0 (none) or a quality 1…n (call :meth:`choose` for auto)."""

    def __init__(self, model, mapping: dict, delta: int, base_quality="auto"):
        self.model, self.mapping, self.delta = model, mapping, int(delta)
        self.vmin, self.maxv = int(mapping["min"]), int(mapping["scale"])
        self.base_quality = base_quality
        #: per slice, drop the base layer when the chunk is smaller without it
        self.fallback = True
        #: per encoded slice: bytes of base layer and residual (for reports and benchmarks)
        self.parts: list[tuple[int, int]] = []

    # -- choosing the base quality ---------------------------------------------------------

    def choose(self, vol, threads: int | None = 1) -> int:
        """Resolve ``"auto"`` on a sample of ``vol``'s slices → the base quality (0 = none). The
        sample's slices are coded ``threads`` at once (None: every core): the same choice for any
        count."""
        if self.base_quality != "auto":
            return int(self.base_quality)
        n = vol.shape[0]
        ks = sorted({int(round(i * (n - 1) / max(1, AUTO_SAMPLE - 1))) for i in range(min(n, AUTO_SAMPLE))})
        sample = [np.asarray(vol[k]) for k in ks]
        sample = [s for s in sample if int(s.max()) - int(s.min()) > 2 * self.delta]
        if not sample or self.model is None:
            self.base_quality = 0
            return 0
        best, best_q = None, 0
        for q in (0,) + tuple(q for q in AUTO_QUALITIES if q <= self.model.n_qualities):
            total = 0
            sizes = _threads.ordered(lambda s, q=q: len(self._chunk(s, q, fallback=False)[0]),
                                     sample, threads)
            try:
                for size in sizes:
                    total += size
                    if best is not None and total >= best:
                        break
            finally:
                sizes.close()  # what a break leaves: not started is cancelled
            if best is not None and total >= best:
                break  # a costlier base layer than one that already lost will not win either
            best, best_q = total, q
        self.base_quality = best_q
        return best_q

    def codec_fields(self) -> dict:
        """What the metadata's ``codec`` object records beyond model, weights and quality."""
        return {"chunk_format": FORMAT, "max_error": self.delta, "residual": coder_id()}

    # -- one slice -------------------------------------------------------------------------

    def _base(self, s: np.ndarray, q: int) -> tuple[bytes, np.ndarray]:
        """The learned base layer of slice ``s`` at quality ``q`` → (its payload, the bit-exact
        decoded base in ``[0, maxv]``)."""
        chunk = learned.encode(self.model, s, self.mapping, q - 1)
        if chunk[0] != learned.KIND:  # cannot happen: constant slices never get here
            raise RuntimeError("base layer of a non-constant slice is not a learned chunk")
        base = learned.decode_with(self.model, chunk, s.shape, self.mapping, q - 1, np.int64)
        return chunk[1:], base.astype(np.int64) - self.vmin

    def _chunk(self, s: np.ndarray, q: int, fallback: bool = True) -> tuple[bytes, np.ndarray, int, object]:
        """Slice ``s`` coded alone at base quality ``q`` (and without a base when ``fallback``
        and that is smaller) → (chunk, reconstruction − min, base-layer bytes, hand-on)."""
        v = s.astype(np.int64) - self.vmin
        cands = []
        if q > 0:
            payload, base = self._base(s, q)
            res, rec, ctx = self._residual(v, base)
            head = bytes([KIND, q]) + recon_crc(rec).to_bytes(4, "little")
            cands.append((head + len(payload).to_bytes(4, "little") + payload + res, rec, len(payload), ctx))
        if q == 0 or fallback:
            res, rec, ctx = self._residual(v, None)
            head = bytes([KIND, 0]) + recon_crc(rec).to_bytes(4, "little")
            cands.append((head + res, rec, 0, ctx))
        return min(cands, key=lambda c: len(c[0]))

    def _residual(self, v: np.ndarray, base) -> tuple[bytes, np.ndarray, object]:
        """The residual stream of a slice (values − min) coded alone → (bytes, reconstruction,
        what it hands on to the next slice: None in format 3)."""
        res, rec = _residual().encode(v, self.maxv, self.delta, base)
        return res, rec, None

    def encode_slice(self, s: np.ndarray) -> bytes:
        """One stored-value slice → chunk bytes, verified: decoding them gives values within
        ``delta`` of ``s`` (else :class:`~bmz.errors.BmzError` — an internal error, never a silent
        violation)."""
        if self.base_quality == "auto":
            raise RuntimeError("BoundedEncoder.choose() must resolve base_quality 'auto' first")
        s = np.asarray(s)
        lo, hi = int(s.min()), int(s.max())
        if hi - lo <= 2 * self.delta:
            self.parts.append((0, 9))
            return constant.encode(lo + (hi - lo) // 2)

        bug = ("bounded chunk failed its encode-time check (decoded values differ from the "
               "encoder's or exceed the bound); this is a bmz bug, nothing was written")
        try:
            chunk, rec, nbase, _ = self._chunk(s, int(self.base_quality), self.fallback)
            # the guarantee: decode the chunk as any reader will, and compare with the original
            back = decode_chunk(chunk, s.shape, self.mapping, self.delta, lambda: self.model)
        except (RuntimeError, ValueError) as e:
            raise BmzError(f"{bug} ({e})") from e
        if not np.array_equal(back, rec + self.vmin) or \
                int(np.abs(back - s.astype(np.int64)).max()) > self.delta:
            raise BmzError(bug)
        self.parts.append((nbase, len(chunk) - nbase))
        return chunk


def decode_chunk(chunk: bytes, shape: tuple[int, int], mapping: dict, delta: int,
                 get_model) -> np.ndarray:
    """Bounded chunk → stored values (int64, ``(H, W)``). ``get_model()`` returns the volume's
    model (called only for a chunk with a base layer). Raises ValueError on a bad chunk, including
    a reconstruction whose CRC-32 differs from the one the encoder stored."""
    if len(chunk) < _HEADER or chunk[0] != KIND:
        raise ValueError(f"bounded chunk of {len(chunk)} bytes is shorter than its header")
    crc = int.from_bytes(chunk[2:6], "little")
    base, pos = base_layer(chunk, shape, mapping, get_model)
    rec = _residual().decode(chunk[pos:], shape, int(mapping["scale"]), delta, base)
    check_crc(rec, crc)
    return rec + int(mapping["min"])


def check_crc(rec: np.ndarray, crc: int) -> None:
    """ValueError when a reconstruction's CRC-32 differs from the one the encoder stored."""
    if recon_crc(rec) != crc:
        raise ValueError("reconstruction check failed: the decoded slice's CRC-32 differs from "
                         "the one stored at encode time")


def base_layer(chunk: bytes, shape: tuple[int, int], mapping: dict,
               get_model) -> tuple[np.ndarray | None, int]:
    """The learned base layer of a bounded chunk (kind 0x02; its header checked by the caller),
    decoded (values − min; None when the chunk has none) → (it, the offset of the residual
    stream)."""
    residual = _residual()
    q = chunk[1]
    vmin, maxv = int(mapping["min"]), int(mapping["scale"])
    if not 0 <= maxv <= residual.MAX_RANGE:
        raise ValueError(f"value range {maxv} of a bounded-error file is over 16 bits")
    pos = _HEADER
    base = None
    if q:
        if len(chunk) < pos + 4:
            raise ValueError("bounded chunk truncated in its base-layer length")
        n = int.from_bytes(chunk[pos:pos + 4], "little")
        pos += 4
        if n < 2 or pos + n > len(chunk):
            raise ValueError(f"bounded chunk: base layer of {n} bytes does not fit the chunk")
        model = get_model()
        if model is None:
            raise ValueError("bounded chunk has a base layer but no model")
        if q > model.n_qualities:
            raise ValueError(f"bounded chunk: base quality {q} outside 1..{model.n_qualities}")
        layer = bytes([learned.KIND]) + bytes(chunk[pos:pos + n])
        base = learned.decode_with(model, layer, shape, mapping, q - 1, np.int64) - vmin
        pos += n
    return base, pos


def check_max_error(max_error, lossless: bool) -> int | None:
    """The API's ``max_error`` / ``lossless`` → δ (``None``: an ordinary lossy file). Raises
    InputError for anything but an integer 0 … 65535 (or ``lossless`` with another δ)."""
    if lossless not in (True, False):
        raise InputError(f"lossless must be True or False, got {lossless!r}")
    if max_error is None:
        return 0 if lossless else None
    if isinstance(max_error, (bool, np.bool_)) or not isinstance(max_error, (int, np.integer)):
        if isinstance(max_error, (float, np.floating)) and float(max_error).is_integer():
            max_error = int(max_error)
        else:
            raise InputError(f"max_error must be a whole number of stored units (0 = lossless), "
                             f"got {max_error!r}")
    d = int(max_error)
    if d < 0:
        raise InputError(f"max_error must be ≥ 0 (stored units; 0 = lossless), got {d}")
    if d > MAX_DELTA:
        raise InputError(f"max_error {d} is larger than any 16-bit value range ({MAX_DELTA})")
    if lossless and d != 0:
        raise InputError(f"lossless means max_error 0; got both lossless and max_error={d}")
    return d


def check_base_quality(base_quality, model) -> "int | str":
    """``"auto"``, 0 or a quality of ``model`` (InputError otherwise)."""
    if base_quality in (None, "auto"):
        return "auto"
    if isinstance(base_quality, str) and base_quality.strip().isdigit():
        base_quality = int(base_quality)
    if isinstance(base_quality, (bool, np.bool_)) or not isinstance(base_quality, (int, np.integer)):
        raise InputError(f"base quality must be 'auto', 0 (no base layer) or 1..{model.n_qualities}, "
                         f"got {base_quality!r}")
    if not 0 <= int(base_quality) <= model.n_qualities:
        raise InputError(f"base quality must be 'auto', 0 (no base layer) or 1..{model.n_qualities}, "
                         f"got {base_quality}")
    return int(base_quality)


def check_fields(name, codec: dict, coder: str) -> None:
    """The ``codec`` keys of a bounded-error file whose residual coder is ``coder``, checked →
    FormatError naming the field."""
    d = codec.get("max_error")
    if not (isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DELTA):
        raise FormatError(f"{name}: metadata field 'codec.max_error' ({d!r}) is invalid")
    if codec.get("residual") != coder:
        raise FormatError(f"{name}: residual coder {codec.get('residual')!r} is not the one of this "
                          f"bmz ({coder}); decode it with the bmz version that wrote it")


def check_meta(name, codec: dict) -> None:
    """The ``codec`` keys of a bounded-error file of format 3, checked → FormatError naming the
    field."""
    check_fields(name, codec, coder_id())


def file_needs_model(codec: dict) -> bool:
    """Whether decoding a file needs its model: only for a base layer (base quality ≥ 1)."""
    return codec.get("quality") != 0


def max_error(codec: dict) -> int | None:
    """The file's guaranteed max error δ (stored units; 0: lossless)."""
    return codec.get("max_error")


def decode(chunk: bytes, ctx: SliceContext, previous: Sequence[SliceLatents] = ()) -> np.ndarray:
    """A bounded chunk of a (checked) bounded-error file → the slice in ``ctx.dtype``."""
    return decode_chunk(chunk, ctx.shape, ctx.mapping, int(ctx.codec["max_error"]),
                        ctx.get_model).astype(ctx.dtype)


#: the table's name for this kind's encoder (``codec_fields``, ``encode_slice``)
Encoder = BoundedEncoder
