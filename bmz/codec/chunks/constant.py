"""Chunk kind ``0x00``, constant: a slice whose voxels all hold one value (docs/FORMAT.md §10).

Layout: the kind byte, then the value as int64 little-endian (9 bytes in all). Files of every
chunk format may hold it; it decodes without the model, exactly."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ._base import SliceContext, SliceLatents

KIND = 0
NAME = "constant"
SIZE = 9


def is_constant(s: np.ndarray) -> bool:
    """Whether slice ``s`` is stored as a constant chunk (every voxel equal)."""
    return bool(s.size and (s == s.flat[0]).all())


def encode(value: int) -> bytes:
    return bytes([KIND]) + int(value).to_bytes(8, "little", signed=True)


def value(chunk: bytes) -> int:
    """The stored value of a constant chunk (ValueError for a chunk of another length)."""
    if len(chunk) != SIZE:
        raise ValueError(f"constant chunk of {len(chunk)} bytes, expected {SIZE}")
    return int.from_bytes(chunk[1:SIZE], "little", signed=True)


def _checked_value(chunk: bytes, mapping: dict) -> int:
    v = value(chunk)
    if not mapping["min"] <= v <= mapping["max"]:
        raise ValueError(f"constant value {v} outside the volume range")
    return v


def decode(chunk: bytes, ctx: SliceContext, previous: Sequence[SliceLatents] = ()) -> np.ndarray:
    return np.full(ctx.shape, _checked_value(chunk, ctx.mapping), dtype=ctx.dtype)


def latents(chunk: bytes, ctx: SliceContext, previous: Sequence[SliceLatents] = ()) -> SliceLatents:
    return SliceLatents(KIND, ctx.shape, ctx.quality_index, value=_checked_value(chunk, ctx.mapping))
