"""Chunk kind ``0x04``, learned, compact, inter-slice: slice groups of models with inter-slice
context (chunk format 5, ``hyperprior-ctx``; docs/FORMAT.md §10.3).

Layout: as :mod:`.learned_compact` (kind byte, varint floor, one stream), but the payload was
coded with the previous slice's decoded latent as context (the model's ``analyse(..., prev=...)``).
Files of format 5 record the group size ``codec.group`` = G and hold constant, compact (``0x03``,
coded alone) and inter-slice (``0x04``) chunks. **Dependency rule:** a ``0x04`` chunk at slice k
needs slice k − 1's decoded latent; it never starts a group (k % G == 0) nor follows a constant
slice. Decoding slice k therefore entropy-decodes at most the k % G slices before it. The encoder
codes each slice inside a group both ways and writes the smaller (the latent is the same)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ...errors import FormatError
from .. import pipeline
from . import _learned, constant, learned_compact
from ._base import SliceContext, SliceLatents

KIND = 4
NAME = "learned-inter"
#: the chunk format of files coded in slice groups
FORMAT = 5
MIN_QUALITY = 1
#: the kinds files of this format hold besides constant chunks
HOLDS = (learned_compact.KIND, KIND)
#: the largest group bmz writes or accepts
MAX_GROUP = 1024


def check_meta(name, codec: dict) -> None:
    g = codec.get("group")
    if not (isinstance(g, int) and not isinstance(g, bool) and 1 <= g <= MAX_GROUP):
        raise FormatError(f"{name}: metadata field 'codec.group' ({g!r}) is invalid")


def context(k: int, codec: dict, chunk: bytes) -> list[int]:
    """The earlier slice whose latents slice ``k`` needs: ``k − 1`` for an inter-slice chunk
    inside its group, none otherwise."""
    if chunk[:1] == bytes([KIND]) and k % codec["group"]:
        return [k - 1]
    return []


def group_context(model, sym, quality: int):
    """What the next slice of a group is coded with: the model's context input of this slice's
    decoded latent symbols."""
    return model.context_input(sym, quality)


def _prev(ctx: SliceContext, previous: Sequence[SliceLatents]):
    if not previous:
        raise ValueError(f"inter-slice chunk at the start of a group of {ctx.codec['group']}")
    p = previous[-1]
    if p.symbols is None:
        raise ValueError("inter-slice chunk without a decoded previous slice in its group "
                         f"(the slice before it is {constant.NAME})")
    return group_context(ctx.get_model(), p.symbols["y"], ctx.quality_index)


def latents(chunk: bytes, ctx: SliceContext, previous: Sequence[SliceLatents] = ()) -> SliceLatents:
    model = ctx.get_model()
    if not getattr(model, "inter_slice", False):
        raise ValueError(f"inter-slice chunk but model {model.model_name} has no inter-slice context")
    prev = _prev(ctx, previous)
    floor, payload = _learned.header(model, chunk, ctx.mapping, learned_compact.read_floor)
    q = ctx.quality_index
    sym = model.decode_latents(payload, pipeline.padded_shape(ctx.shape, model.downsampling), q,
                               single_stream=True, prev=prev)
    return SliceLatents(KIND, ctx.shape, q, floor=floor, symbols=sym)


def from_latents(lat: SliceLatents, ctx: SliceContext) -> np.ndarray:
    """The stored-value slice of a learned chunk's decoded latents (the synthesis, the floor)."""
    if lat.symbols is None:
        return np.full(ctx.shape, lat.value, dtype=ctx.dtype)
    model = ctx.get_model()
    H, W = ctx.shape
    x_hat = model.synthesize(lat.symbols["y"], lat.quality)
    v = pipeline.from_unit(x_hat[0, 0, :H, :W].numpy(), ctx.mapping, ctx.dtype)
    if lat.floor:
        v[v <= ctx.mapping["min"] + lat.floor] = ctx.mapping["min"]
    return v


def decode(chunk: bytes, ctx: SliceContext, previous: Sequence[SliceLatents] = ()) -> np.ndarray:
    return from_latents(latents(chunk, ctx, previous), ctx)


class Encoder:
    """Encodes a volume's slices in order into a file of chunk format 5 with groups of ``group``:
    a group's first slice alone, every other with its predecessor as context where that codes
    smaller. ``encode_slice`` must be called for slices 0, 1, 2, … in order."""

    def __init__(self, model, mapping: dict, quality: int, group: int):
        if not getattr(model, "inter_slice", False):
            raise ValueError(f"model {model.model_name} has no inter-slice context")
        self.model, self.mapping, self.quality, self.group = model, mapping, int(quality), int(group)
        self._k, self._prev = 0, None

    def codec_fields(self) -> dict:
        return {"chunk_format": FORMAT, "group": self.group}

    def encode_slice(self, s: np.ndarray) -> bytes:
        k, self._k = self._k, self._k + 1
        prev = self._prev if k % self.group else None
        if constant.is_constant(s):
            self._prev = None
            return constant.encode(s.flat[0])
        m, q = self.model, self.quality
        x = _learned.network_input(m, s, self.mapping)
        if prev is not None:  # with the previous slice as context, or alone where that is smaller
            payload, sym, used = m.analyse_best(x, q, prev)
            kind = KIND if used else learned_compact.KIND
        else:
            payload, sym = m.analyse(x, q, single_stream=True)
            kind = learned_compact.KIND
        self._prev = group_context(m, sym, q)
        return _learned.chunk_bytes(m, s, self.mapping, q, kind, learned_compact.write_floor,
                                    payload, sym)

def encoder(model, mapping: dict, quality: int, group: int = 1) -> Encoder:
    """The encoder of files of this format at quality index ``quality``, groups of ``group``."""
    return Encoder(model, mapping, quality, group)
