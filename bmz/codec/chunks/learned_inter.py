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

from ... import _threads
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
    """Encodes a volume's slices into a file of chunk format 5 with groups of ``group``: a
    group's first slice alone, every other with its predecessor as context where that codes
    smaller. :meth:`chunks` codes a volume on any number of threads (the same bytes);
    :meth:`encode_slice` must be called for slices 0, 1, 2, … in order.

    What a slice is coded with is its predecessor's latent symbols — which the analysis of that
    slice alone gives, not its coding — so every slice is analysed on its own (the costly part:
    the analysis transform and the float synthesis that chooses the floor) and only the entropy
    coding waits for the previous slice's analysis."""

    def __init__(self, model, mapping: dict, quality: int, group: int):
        if not getattr(model, "inter_slice", False):
            raise ValueError(f"model {model.model_name} has no inter-slice context")
        self.model, self.mapping, self.quality, self.group = model, mapping, int(quality), int(group)
        self._k, self._prev = 0, None

    def codec_fields(self) -> dict:
        return {"chunk_format": FORMAT, "group": self.group}

    def _prepare(self, s: np.ndarray, hand_on: bool):
        """Slice ``s`` on its own → (its constant chunk or None, its analysis and floor, what it
        hands on to the next slice of its group when ``hand_on``: None for a constant slice)."""
        if constant.is_constant(s):
            return constant.encode(s.flat[0]), None, None
        m, q = self.model, self.quality
        an = m.analysis(_learned.network_input(m, s, self.mapping), q)
        floor = _learned.floor_of(m, s, self.mapping, q, an["y"])
        return None, (an, floor), group_context(m, an["y"], q) if hand_on else None

    def _finish(self, prepared, prev) -> bytes:
        """The chunk of a prepared slice, coded with ``prev`` (the previous slice's hand-on; None
        at a group start or after a constant slice) where that is smaller."""
        an, floor = prepared
        payload, used = self.model.code_best(an, self.quality, prev)
        kind = KIND if used else learned_compact.KIND
        return bytes([kind]) + learned_compact.write_floor(floor) + payload

    def encode_slice(self, s: np.ndarray) -> bytes:
        k, self._k = self._k, self._k + 1
        prev = self._prev if k % self.group else None
        chunk, prepared, self._prev = self._prepare(s, True)
        return chunk if chunk is not None else self._finish(prepared, prev)

    def _unit(self, item) -> bytes:
        """One slice of :meth:`chunks`: prepared, its hand-on set (``own``), then coded once the
        previous slice's hand-on (``prev``) is there."""
        s, prev, own = item
        with _threads.handing_on(*([own] if own is not None else [])):
            chunk, prepared, handed = self._prepare(s, own is not None)
            if own is not None:
                own.set_result(handed)
        if chunk is not None:
            return chunk
        return self._finish(prepared, _threads.wait(prev) if prev is not None else None)

    def chunks(self, vol, threads: int | None = 1):
        """The chunks of ``vol``'s slices, in order, ``threads`` slices at once (None: every core;
        :func:`bmz._threads.ordered`): each slice is analysed as soon as a thread is free, its
        coding waits for its predecessor's analysis only. The same bytes for any count."""
        n, G = vol.shape[0], self.group

        def items():
            prev = None
            for k in range(n):
                own = _threads.Future() if (k + 1) % G and k + 1 < n else None
                yield np.asarray(vol[k]), prev if k % G else None, own
                prev = own

        return _threads.ordered(self._unit, items(), threads)


def encoder(model, mapping: dict, quality: int, group: int = 1) -> Encoder:
    """The encoder of files of this format at quality index ``quality``, groups of ``group``."""
    return Encoder(model, mapping, quality, group)
