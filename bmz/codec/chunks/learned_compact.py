"""Chunk kind ``0x03``, learned, compact: what bmz writes for lossy files (chunk format 4).

Layout: the kind byte, the floor as an unsigned LEB128 varint (1 byte below 128; at most 3,
minimal), then the model's slice payload with every entropy-coded part in one stream
(``single_stream=True``; docs/FORMAT.md §10.1). The decoded values are those of the same latents
in a :mod:`.learned` chunk, without its length field and (for the hyperprior) with one stream's
sealing instead of two: docs/FORMAT.md §10.1 gives the saving per model family."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from . import _learned
from ._base import SliceContext, SliceLatents

KIND = 3
NAME = "learned-compact"
#: the chunk format of files whose slices are constant or compact learned chunks
FORMAT = 4
#: the lowest ``codec.quality`` of such files
MIN_QUALITY = 1
_SINGLE_STREAM = True
#: the longest floor varint (floors are below 2**16)
_FLOOR_BYTES = 3


def write_floor(v: int) -> bytes:
    """Unsigned LEB128: 7 bits per byte, least significant first, high bit = more follow."""
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def read_varint(chunk: bytes, pos: int, max_bytes: int = _FLOOR_BYTES) -> tuple[int, int]:
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


def read_floor(chunk: bytes) -> tuple[int, int]:
    return read_varint(chunk, 1)


def encode(model, s: np.ndarray, mapping: dict, quality: int) -> bytes:
    """One stored-value slice → a constant chunk or a compact learned chunk at quality index
    ``quality``."""
    return _learned.encode(model, s, mapping, quality, KIND, write_floor, _SINGLE_STREAM)


def decode(chunk: bytes, ctx: SliceContext, previous: Sequence[SliceLatents] = ()) -> np.ndarray:
    return _learned.decode(ctx.get_model(), chunk, ctx.shape, ctx.mapping, ctx.quality_index,
                           ctx.dtype, read_floor, _SINGLE_STREAM)


def latents(chunk: bytes, ctx: SliceContext, previous: Sequence[SliceLatents] = ()) -> SliceLatents:
    return _learned.latents(chunk, ctx, read_floor, _SINGLE_STREAM)


def encoder(model, mapping: dict, quality: int) -> _learned.Encoder:
    """The encoder of files of this format at quality index ``quality``."""
    return _learned.Encoder(FORMAT, encode, model, mapping, quality)
