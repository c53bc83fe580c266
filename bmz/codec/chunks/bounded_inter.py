"""Chunk kind ``0x05``, bounded error, inter-slice: bounded-error slice groups (chunk format 6,
the format of the bounded-error files bmz writes; docs/FORMAT.md §10.4).

Files of format 6 record the group size ``codec.group`` = G and hold constant chunks, bounded
chunks coded alone (kind ``0x02``: the layout of :mod:`.bounded`, with or without a learned base
layer) and inter-slice bounded chunks (``0x05``); every non-constant chunk is coded by the
residual coder of :mod:`bmz.codec.residual3d` (``codec.residual`` names it), and ``codec`` also
holds ``max_error`` (δ) and ``quality`` (the base quality, 0: none), as format 3.

Layout of a ``0x05`` chunk: the kind byte, the CRC-32 of the exact reconstruction (u32 LE), then
the residual stream, coded with what the previous slice of the group hands on
(:class:`bmz.codec.residual3d.Context`: its decoded values, its error map and the coder's state
after it; a constant slice hands on its value, a zero error map and the initial state).
**Dependency rule** (the one of format 5, §10.3): a ``0x05`` chunk at slice k needs slice k − 1;
it never starts a group (k % G == 0). Decoding slice k therefore decodes at most the k % G slices
before it.

The encoder codes each group's first slice alone (with a base layer where that is smaller), every
other one after its predecessor, and checks every chunk by decoding it as any reader will. Groups
are independent: :meth:`GroupEncoder.chunks` codes them on any number of threads (inside a group,
the coding and the check run one slice apart), with the same bytes for any count.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np

from ... import _threads
from ...errors import BmzError
from . import bounded, constant, learned_inter
from ._base import SliceContext

KIND = 5
NAME = "bounded-inter"
#: the chunk format of bounded-error files coded in slice groups
FORMAT = 6
#: the lowest ``codec.quality`` (the base quality) of such files: 0, no base layer
MIN_QUALITY = 0
#: the kinds files of this format hold besides constant chunks
HOLDS = (bounded.KIND, KIND)
#: the largest group bmz writes or accepts (as for lossy groups)
MAX_GROUP = learned_inter.MAX_GROUP
#: the slice group size of bounded-error files when none is asked for (benchmarks/results/lossless.md)
DEFAULT_GROUP = 8
_HEADER = 5  # kind, CRC-32

file_needs_model = bounded.file_needs_model
max_error = bounded.max_error
check_max_error = bounded.check_max_error
check_base_quality = bounded.check_base_quality


def _residual3d():
    """The residual coder of this format (numba-compiled: imported when a chunk is coded)."""
    from .. import residual3d

    return residual3d


def coder_id() -> str:
    """The residual coder's name and version, recorded in the metadata (``codec.residual``)."""
    return _residual3d().CODER_ID


def check_meta(name, codec: dict) -> None:
    """The ``codec`` keys of a bounded-error file in slice groups, checked → FormatError naming
    the field."""
    learned_inter.check_meta(name, codec)  # codec.group
    bounded.check_fields(name, codec, coder_id())


def context(k: int, codec: dict, chunk: bytes) -> list[int]:
    """The earlier slice slice ``k`` needs: ``k − 1`` for an inter-slice chunk inside its group,
    none otherwise (a ``0x05`` chunk at a group start is refused when decoded)."""
    if chunk[:1] == bytes([KIND]) and k % codec["group"]:
        return [k - 1]
    return []


def constant_context(value: int, shape) -> "residual3d.Context":  # noqa: F821
    """What a constant slice hands on: its value everywhere (minus the volume minimum), a zero
    error map, and the coder's initial state."""
    r3 = _residual3d()
    return r3.Context(np.full(shape, int(value), np.int64), np.zeros(shape, np.int64), r3.fresh_state())


def decode_chunk(chunk: bytes, shape: tuple[int, int], mapping: dict, delta: int, get_model,
                 prev) -> tuple[np.ndarray, "residual3d.Context"]:  # noqa: F821
    """A bounded chunk of format 6 (kind ``0x02``, or ``0x05`` with ``prev``: what the previous
    slice of the group handed on) → (stored values, int64; what this slice hands on). ValueError
    on a bad chunk, including a CRC-32 mismatch of the reconstruction."""
    r3 = _residual3d()
    maxv = int(mapping["scale"])
    if chunk[:1] == bytes([KIND]):
        if prev is None:
            raise ValueError("inter-slice bounded chunk without a previous slice in its group")
        if len(chunk) < _HEADER:
            raise ValueError(f"bounded chunk of {len(chunk)} bytes is shorter than its header")
        if not 0 <= maxv <= r3.MAX_RANGE:
            raise ValueError(f"value range {maxv} of a bounded-error file is over 16 bits")
        crc, pos, base = int.from_bytes(chunk[1:5], "little"), _HEADER, None
    else:
        if len(chunk) < bounded._HEADER or chunk[0] != bounded.KIND:
            raise ValueError(f"bounded chunk of {len(chunk)} bytes is shorter than its header")
        crc = int.from_bytes(chunk[2:6], "little")
        base, pos = bounded.base_layer(chunk, shape, mapping, get_model)
        prev = None
    out = r3.decode(chunk[pos:], shape, maxv, delta, base, prev)
    bounded.check_crc(out.rec, crc)
    return out.rec + int(mapping["min"]), out


def carry(chunk: bytes, ctx: SliceContext, previous: Sequence = ()) -> "residual3d.Context":  # noqa: F821
    """What a slice of a (checked) file of this format hands on to the next slice of its group —
    its decoded values (minus the volume minimum), error map and coder state — from its chunk and
    what the slices :func:`context` names handed on (``previous``)."""
    if chunk[:1] == bytes([constant.KIND]):
        return constant_context(constant.decode(chunk, ctx)[0, 0] - int(ctx.mapping["min"]), ctx.shape)
    g = ctx.codec["group"]
    if chunk[:1] == bytes([KIND]) and not previous:
        raise ValueError(f"inter-slice bounded chunk at the start of a group of {g}")
    _, out = decode_chunk(chunk, ctx.shape, ctx.mapping, int(ctx.codec["max_error"]), ctx.get_model,
                          previous[-1] if previous else None)
    return out


def from_carry(c, ctx: SliceContext) -> np.ndarray:
    """The stored-value slice of what :func:`carry` returned."""
    return (c.rec + int(ctx.mapping["min"])).astype(ctx.dtype)


def decode(chunk: bytes, ctx: SliceContext, previous: Sequence = ()) -> np.ndarray:
    if chunk[:1] == bytes([constant.KIND]):  # what it would hand on is not needed here
        return constant.decode(chunk, ctx)
    return from_carry(carry(chunk, ctx, previous), ctx)


class GroupEncoder(bounded.BoundedEncoder):
    """Encodes the slices of one volume with max error ``delta`` in groups of ``group`` slices:
    the first slice of a group alone (kind ``0x02``, with a learned base layer where that is
    smaller), every other one after the previous (kind ``0x05``). :meth:`chunks` codes a volume
    on any number of threads; :meth:`encode_slice` codes slices 0, 1, 2, … in order."""

    def __init__(self, model, mapping: dict, delta: int, base_quality="auto", group: int = DEFAULT_GROUP):
        super().__init__(model, mapping, delta, base_quality)
        self.group = int(group)
        self._k, self._prev = 0, (None, None)

    def codec_fields(self) -> dict:
        return {"chunk_format": FORMAT, "max_error": self.delta, "residual": coder_id(),
                "group": self.group}

    def _residual(self, v, base):
        res, out = _residual3d().encode(v, self.maxv, self.delta, base)
        return res, out.rec, out

    _BUG = ("bounded chunk failed its encode-time check (decoded values differ from the "
            "encoder's or exceed the bound); this is a bmz bug, nothing was written")

    def _constant(self, s: np.ndarray):
        """(chunk, part, hand-on) of a slice whose values span at most 2δ, else None."""
        lo, hi = int(s.min()), int(s.max())
        if hi - lo > 2 * self.delta:
            return None
        c = lo + (hi - lo) // 2
        return constant.encode(c), (0, constant.SIZE), constant_context(c - self.vmin, s.shape)

    def _encode_one(self, s: np.ndarray, prev):
        """One non-constant slice coded after ``prev`` (what the encoder's coding of the
        previous slice handed on; None at a group start) → (chunk, reconstruction − min, base
        bytes, hand-on)."""
        if self.base_quality == "auto":
            raise RuntimeError("GroupEncoder.choose() must resolve base_quality 'auto' first")
        try:
            if prev is None:
                return self._chunk(s, int(self.base_quality), self.fallback)
            res, ctx = _residual3d().encode(s.astype(np.int64) - self.vmin, self.maxv,
                                            self.delta, prev=prev)
            chunk = bytes([KIND]) + bounded.recon_crc(ctx.rec).to_bytes(4, "little") + res
            return chunk, ctx.rec, 0, ctx
        except (RuntimeError, ValueError) as e:
            raise BmzError(f"{self._BUG} ({e})") from e

    def _check_one(self, s: np.ndarray, chunk: bytes, rec: np.ndarray, prev_back):
        """The guarantee: ``chunk`` decoded as any reader will (after ``prev_back``, what the
        check's decode of the previous slice handed on) gives ``rec`` and is within δ of ``s``
        (else :class:`~bmz.errors.BmzError`) → what this decode hands on."""
        try:
            back, back_ctx = decode_chunk(chunk, s.shape, self.mapping, self.delta,
                                          lambda: self.model, prev_back)
        except (RuntimeError, ValueError) as e:
            raise BmzError(f"{self._BUG} ({e})") from e
        if not np.array_equal(back, rec + self.vmin) or \
                int(np.abs(back - s.astype(np.int64)).max()) > self.delta:
            raise BmzError(self._BUG)
        return back_ctx

    def _slice(self, s: np.ndarray, prev, prev_back):
        """One slice after ``prev`` / ``prev_back`` (what the encoder's and the check's decode of
        the previous slice handed on; None at a group start), verified by decoding it as a reader
        will → (chunk, (base bytes, residual bytes), prev, prev_back for the next slice)."""
        s = np.asarray(s)
        const = self._constant(s)
        if const is not None:
            return const + (const[2],)
        chunk, rec, nbase, ctx = self._encode_one(s, prev)
        back_ctx = self._check_one(s, chunk, rec, prev_back)
        return chunk, (nbase, len(chunk) - nbase), ctx, back_ctx

    def encode_slice(self, s: np.ndarray) -> bytes:
        k, self._k = self._k, self._k + 1
        prev, prev_back = self._prev if k % self.group else (None, None)
        chunk, part, *self._prev = self._slice(s, prev, prev_back)
        self.parts.append(part)
        return chunk

    def _unit(self, item):
        """One slice of :meth:`chunks` → (chunk, part). ``prev``: the previous slice's two
        hand-ons (futures; None at a group start), ``own``: this slice's (None when no slice
        needs them). The coding waits for the previous slice's coding only, the check for the
        previous check: the two chains of a group run on two threads, one slice apart."""
        s, prev, own = item
        with _threads.handing_on(*(own or ())):
            const = self._constant(s)
            if const is not None:
                if own is not None:
                    own[0].set_result(const[2])
                    own[1].set_result(const[2])
                return const[:2]
            chunk, rec, nbase, ctx = self._encode_one(s, _threads.wait(prev[0]) if prev else None)
            if own is not None:
                own[0].set_result(ctx)
            back_ctx = self._check_one(s, chunk, rec, _threads.wait(prev[1]) if prev else None)
            if own is not None:
                own[1].set_result(back_ctx)
        return chunk, (nbase, len(chunk) - nbase)

    def chunks(self, vol, threads: int | None = 1):
        """The chunks of ``vol``'s slices, in order (a generator: slices are read in order on the
        calling thread and coded ``threads`` at once, None: every core;
        :func:`bmz._threads.ordered`).
        Groups are independent; inside a group each slice's coding waits for the previous
        slice's coding, its check for the previous check, so a group keeps two threads busy and
        ``max(2 × threads, (threads // 2 + 1) × G)`` slices are in flight (enough groups for
        every thread). The same bytes for any count."""
        if self.base_quality == "auto":
            raise RuntimeError("GroupEncoder.choose() must resolve base_quality 'auto' first")
        n, G = vol.shape[0], self.group

        def items():
            prev = None
            for k in range(n):
                own = (_threads.Future(), _threads.Future()) if (k + 1) % G and k + 1 < n else None
                yield np.asarray(vol[k]), prev if k % G else None, own
                prev = own

        # a group keeps two threads busy (its coding, its check): enough groups in flight for all
        t = _threads.resolve(threads)
        window = max(2 * t, (t // 2 + 1) * G)
        with contextlib.closing(_threads.ordered(self._unit, items(), t, window)) as coded:
            for chunk, part in coded:
                self.parts.append(part)
                yield chunk


#: the table's name for this kind's encoder (``codec_fields``, ``encode_slice``, ``chunks``)
Encoder = GroupEncoder
