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
are independent: :meth:`GroupEncoder.chunks` codes them on :data:`THREADS` threads, with the same
bytes for any count.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

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
#: threads coding groups at once (None: every core); the bytes are the same for any count
THREADS: int | None = None
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
    smaller), every other one after the previous (kind ``0x05``). :meth:`chunks` codes whole
    groups on :data:`THREADS` threads; :meth:`encode_slice` codes slices 0, 1, 2, … in order."""

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

    def _slice(self, s: np.ndarray, prev, prev_back):
        """One slice after ``prev`` / ``prev_back`` (what the encoder's and the check's decode of
        the previous slice handed on; None at a group start), verified by decoding it as a reader
        will → (chunk, (base bytes, residual bytes), prev, prev_back for the next slice)."""
        s = np.asarray(s)
        lo, hi = int(s.min()), int(s.max())
        if hi - lo <= 2 * self.delta:
            c = lo + (hi - lo) // 2
            ctx = constant_context(c - self.vmin, s.shape)
            return constant.encode(c), (0, constant.SIZE), ctx, ctx
        if self.base_quality == "auto":
            raise RuntimeError("GroupEncoder.choose() must resolve base_quality 'auto' first")
        bug = ("bounded chunk failed its encode-time check (decoded values differ from the "
               "encoder's or exceed the bound); this is a bmz bug, nothing was written")
        try:
            if prev is None:
                chunk, rec, nbase, ctx = self._chunk(s, int(self.base_quality), self.fallback)
            else:
                res, ctx = _residual3d().encode(s.astype(np.int64) - self.vmin, self.maxv,
                                                self.delta, prev=prev)
                rec, nbase = ctx.rec, 0
                chunk = bytes([KIND]) + bounded.recon_crc(rec).to_bytes(4, "little") + res
            # the guarantee: decode the chunk as any reader will, and compare with the original
            back, back_ctx = decode_chunk(chunk, s.shape, self.mapping, self.delta,
                                          lambda: self.model, prev_back)
        except (RuntimeError, ValueError) as e:
            raise BmzError(f"{bug} ({e})") from e
        if not np.array_equal(back, rec + self.vmin) or \
                int(np.abs(back - s.astype(np.int64)).max()) > self.delta:
            raise BmzError(bug)
        return chunk, (nbase, len(chunk) - nbase), ctx, back_ctx

    def encode_slice(self, s: np.ndarray) -> bytes:
        k, self._k = self._k, self._k + 1
        prev, prev_back = self._prev if k % self.group else (None, None)
        chunk, part, *self._prev = self._slice(s, prev, prev_back)
        self.parts.append(part)
        return chunk

    def _group(self, slices: list[np.ndarray]) -> list[tuple[bytes, tuple[int, int]]]:
        """The chunks of one group → [(chunk, (base bytes, residual bytes))]."""
        out, prev, prev_back = [], None, None
        for s in slices:
            chunk, part, prev, prev_back = self._slice(s, prev, prev_back)
            out.append((chunk, part))
        return out

    def chunks(self, vol):
        """The chunks of ``vol``'s slices, in order (a generator: slices are read in order on the
        calling thread, groups coded on :data:`THREADS` threads, a few groups ahead)."""
        if self.base_quality == "auto":
            raise RuntimeError("GroupEncoder.choose() must resolve base_quality 'auto' first")
        n, G = vol.shape[0], self.group
        # the learned base layer runs torch: one thread then; the residual coder releases the GIL
        threads = 1 if self.base_quality else max(1, int(THREADS or os.cpu_count() or 1))
        if threads == 1:
            for a in range(0, n, G):
                for chunk, part in self._group([vol[k] for k in range(a, min(a + G, n))]):
                    self.parts.append(part)
                    yield chunk
            return
        with ThreadPoolExecutor(threads) as ex:
            pending: deque = deque()
            starts = iter(range(0, n, G))
            while True:
                while len(pending) < 2 * threads:
                    a = next(starts, None)
                    if a is None:
                        break
                    group = [np.asarray(vol[k]) for k in range(a, min(a + G, n))]
                    pending.append(ex.submit(self._group, group))
                if not pending:
                    break
                for chunk, part in pending.popleft().result():
                    self.parts.append(part)
                    yield chunk


#: the table's name for this kind's encoder (``codec_fields``, ``encode_slice``, ``chunks``)
Encoder = GroupEncoder
