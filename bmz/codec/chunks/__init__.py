"""Slice chunks: one module per chunk kind, and the table that dispatches to them.

A ``.bmz`` file holds one chunk per slice; its first byte is the chunk's **kind**. The metadata's
``codec.chunk_format`` says which kinds a file may hold: the constant kind, and the one kind of
its format (or its ``HOLDS``). Each kind's module owns its numbers and its layout (docs/FORMAT.md §10):

==========  ===================  ============  =========================================
kind        module               file format   holds
==========  ===================  ============  =========================================
``0x00``    :mod:`.constant`     every one     a slice of one value (exact, no model)
``0x01``    :mod:`.learned`      2             the model's payload, u16 floor
``0x02``    :mod:`.bounded`      3, 6          max error δ / lossless: base + residual
``0x03``    :mod:`.learned_compact`  4, 5      the model's payload, one stream, varint floor
``0x04``    :mod:`.learned_inter`  5           as 0x03, coded with the previous slice's latent
``0x05``    :mod:`.bounded_inter`  6           residual coded after the previous slice (no base)
==========  ===================  ============  =========================================

A kind's module gives ``KIND``, ``NAME``, ``decode(chunk, ctx, previous)`` and, when its chunks
hold latent codes, ``latents(chunk, ctx, previous)``. A module that is also a file format gives
``FORMAT``, ``MIN_QUALITY`` (the lowest ``codec.quality`` of its files), an encoder (``encoder``
or ``Encoder``, with ``codec_fields()``, ``encode_slice(s)`` and optionally ``chunks(vol)``, every
chunk at once) and optionally ``check_meta(name, codec)``,
``file_needs_model(codec)``, ``max_error(codec)`` and ``context(k, codec)``.

``previous``: formats whose slices are coded with what earlier slices of the same group hand on
(slice groups: format 5, :mod:`.learned_inter`, and format 6, :mod:`.bounded_inter`) name those
slices with ``context(k, codec, chunk)``; the reader (:class:`bmz.file.BmzFile`) gets what they
hand on first (:func:`carry`, kept for the next slice) and passes it, in that order. What a slice
hands on is its latents (format 5), or — for a format that gives ``carry(chunk, ctx, previous)``
and ``from_carry(c, ctx)``, and then decodes every chunk it holds itself (its ``decode``) —
whatever that format's coder needs (format 6: the decoded values, error map and coder state). A format may hold
more than one kind (its ``HOLDS``); both grouped formats share one dependency rule (§10.3).
"""

from __future__ import annotations

from types import ModuleType
from typing import Sequence

import numpy as np

from . import bounded, bounded_inter, constant, learned, learned_compact, learned_inter
from ._base import SliceContext, SliceLatents

#: chunk kind (a chunk's first byte) → the module that codes it
KINDS: dict[int, ModuleType] = {m.KIND: m for m in (constant, learned, bounded, learned_compact,
                                                     learned_inter, bounded_inter)}
#: chunk format (``codec.chunk_format``) → the module of its files' own kind (the kinds it holds
#: besides constant chunks: that kind, or its ``HOLDS``)
FORMATS: dict[int, ModuleType] = {m.FORMAT: m for m in (learned, bounded, learned_compact,
                                                         learned_inter, bounded_inter)}
#: the format of models with inter-slice context (lossy slice groups)
GROUPED = learned_inter
#: the formats coded in slice groups (``codec.group``; docs/FORMAT.md §10.3 and §10.4)
GROUP_FORMATS = (learned_inter, bounded_inter)
#: the kind bmz writes for lossy files
LOSSY = learned_compact
#: the format bmz writes for files with a guaranteed max error (lossless: δ = 0): slice groups
BOUNDED = bounded_inter

__all__ = ["KINDS", "FORMATS", "LOSSY", "BOUNDED", "GROUPED", "GROUP_FORMATS", "SliceContext",
           "SliceLatents", "format_of", "decode", "latents", "from_latents", "carry", "from_carry", "context_slices",
           "grouped", "file_needs_model", "max_error"]


def format_of(codec: dict) -> ModuleType | None:
    """The module of a file's chunk format (``codec.chunk_format``), or None when this bmz does
    not know it (or it is not an integer)."""
    fmt = codec.get("chunk_format")
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        return None
    return FORMATS.get(fmt)


def _kind(chunk: bytes, codec: dict) -> ModuleType:
    """The module of ``chunk``'s kind, in a file of ``codec``'s (known) format: ValueError for an
    empty chunk, an unknown kind, or a kind the file's format does not hold."""
    if not chunk:
        raise ValueError("empty chunk")
    kind = KINDS.get(chunk[0])
    if kind is None:
        raise ValueError(f"unknown chunk kind {chunk[0]}")
    fmt = format_of(codec)
    holds = getattr(fmt, "HOLDS", (fmt.KIND,))
    if kind is not constant and kind.KIND not in holds:
        names = " and ".join([constant.NAME] + [KINDS[h].NAME for h in holds])
        raise ValueError(f"chunk kind {chunk[0]} in a file of chunk format {fmt.FORMAT} (its "
                         f"files hold {names} chunks)")
    return kind


def decode(chunk: bytes, ctx: SliceContext, previous: Sequence = ()) -> np.ndarray:
    """Chunk bytes → the stored-value slice ``ctx.shape`` in ``ctx.dtype``. ``previous``: what
    the slices :func:`context_slices` names hand on (:func:`carry`). Raises ValueError on a bad
    chunk."""
    kind = _kind(chunk, ctx.codec)
    fmt = format_of(ctx.codec)
    if hasattr(fmt, "carry"):  # the format decodes every chunk it holds
        return fmt.decode(chunk, ctx, previous)
    return kind.decode(chunk, ctx, previous)


def latents(chunk: bytes, ctx: SliceContext, previous: Sequence[SliceLatents] = ()) -> SliceLatents:
    """Chunk bytes → its entropy-decoded latents (the decoder of :func:`decode` stopped before the
    synthesis). Raises ValueError on a bad chunk, or one of a kind without latent codes."""
    kind = _kind(chunk, ctx.codec)
    if not hasattr(kind, "latents"):
        raise ValueError(f"{kind.NAME} chunks (kind {kind.KIND}) hold no latent codes")
    return kind.latents(chunk, ctx, previous)


def carry(chunk: bytes, ctx: SliceContext, previous: Sequence = ()):
    """What a slice hands on to the next slice of its group (its format's ``carry``; otherwise its
    latents, :func:`latents`). Raises ValueError on a bad chunk."""
    fmt = format_of(ctx.codec)
    if hasattr(fmt, "carry"):
        _kind(chunk, ctx.codec)  # a kind its format holds
        return fmt.carry(chunk, ctx, previous)
    return latents(chunk, ctx, previous)


def from_carry(c, ctx: SliceContext) -> np.ndarray:
    """The stored-value slice of what :func:`carry` returned (:func:`carry` then this =
    :func:`decode`)."""
    fmt = format_of(ctx.codec)
    if hasattr(fmt, "from_carry"):
        return fmt.from_carry(c, ctx)
    return from_latents(c, ctx)


def grouped(codec: dict) -> bool:
    """Whether a file's slices are coded in slice groups (:data:`GROUP_FORMATS`)."""
    return format_of(codec) in GROUP_FORMATS


def context_slices(codec: dict, k: int, chunk: bytes = b"") -> list[int]:
    """The earlier slices whose hand-on (:func:`carry`) decoding slice ``k`` (whose chunk is ``chunk``) of a file
    needs (its format's ``context``; none for formats whose slices are coded on their own)."""
    fmt = format_of(codec)
    ctx = getattr(fmt, "context", None)
    return list(ctx(k, codec, chunk)) if ctx is not None else []


def from_latents(lat: SliceLatents, ctx: SliceContext) -> np.ndarray:
    """The stored-value slice of decoded latents (:func:`latents` then this = :func:`decode`)."""
    return learned_inter.from_latents(lat, ctx)


def file_needs_model(codec: dict) -> bool:
    """Whether decoding a file needs a model: one is named and its format uses it (an unknown
    format: assume so)."""
    if not codec.get("model"):
        return False
    fmt = format_of(codec)
    needs = getattr(fmt, "file_needs_model", None)
    return needs(codec) if needs is not None else True


def max_error(codec: dict) -> int | None:
    """The guaranteed max error of a file's decoded values (stored units), None for lossy files."""
    fmt = format_of(codec)
    bound = getattr(fmt, "max_error", None)
    return bound(codec) if bound is not None else None
