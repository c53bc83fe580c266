"""Chunk kind ``0x01``, learned: the slice coded by the file's model, in files of chunk format 2
(and, without its kind byte, the base layer of a bounded chunk: :mod:`.bounded`).

Layout: the kind byte, the floor as u16 little-endian, then the model's slice payload in its
multi-stream layout (``single_stream=False``; docs/FORMAT.md §10.1). Files of format 2 hold
constant and learned chunks; bmz reads them as ever but writes format 4 (:mod:`.learned_compact`)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from . import _learned
from ._base import SliceContext, SliceLatents

KIND = 1
NAME = "learned"
#: the chunk format of files whose slices are constant or learned chunks
FORMAT = 2
#: the lowest ``codec.quality`` of such files
MIN_QUALITY = 1
_SINGLE_STREAM = False


def write_floor(floor: int) -> bytes:
    return int(floor).to_bytes(2, "little")


def read_floor(chunk: bytes) -> tuple[int, int]:
    if len(chunk) < 3:
        raise ValueError(f"learned chunk of {len(chunk)} bytes, shorter than its 3-byte header")
    return int.from_bytes(chunk[1:3], "little"), 3


def encode(model, s: np.ndarray, mapping: dict, quality: int) -> bytes:
    """One stored-value slice → a constant chunk or a learned chunk at quality index ``quality``."""
    return _learned.encode(model, s, mapping, quality, KIND, write_floor, _SINGLE_STREAM)


def decode_with(model, chunk: bytes, shape: tuple[int, int], mapping: dict, quality: int,
                dtype) -> np.ndarray:
    """A learned chunk decoded with ``model`` at quality index ``quality`` (a bounded chunk's base)."""
    return _learned.decode(model, chunk, shape, mapping, quality, dtype, read_floor, _SINGLE_STREAM)


def decode(chunk: bytes, ctx: SliceContext, previous: Sequence[SliceLatents] = ()) -> np.ndarray:
    return decode_with(ctx.get_model(), chunk, ctx.shape, ctx.mapping, ctx.quality_index, ctx.dtype)


def latents(chunk: bytes, ctx: SliceContext, previous: Sequence[SliceLatents] = ()) -> SliceLatents:
    return _learned.latents(chunk, ctx, read_floor, _SINGLE_STREAM)


def encoder(model, mapping: dict, quality: int) -> _learned.Encoder:
    """The encoder of files of this format at quality index ``quality``."""
    return _learned.Encoder(FORMAT, encode, model, mapping, quality)
