"""What the learned chunk kinds share (:mod:`.learned`, :mod:`.learned_compact`): the model's
slice payload behind a header holding the slice's ``floor``.

Decoded values ``≤ min + floor`` become ``min`` (:func:`bmz.codec.pipeline.choose_floor`); a
floor above :func:`~bmz.codec.pipeline.floor_candidates` is one no encoder sends, and is refused.
The kinds differ in how the floor is written and whether the payload's entropy-coded parts share
one stream (the model's ``single_stream``)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from ... import _threads
from .. import pipeline
from . import constant
from ._base import SliceContext, SliceLatents

#: a kind's floor codec: ``write(floor) → bytes``; ``read(chunk) → (floor, payload offset)``
FloorWriter = Callable[[int], bytes]
FloorReader = Callable[[bytes], "tuple[int, int]"]


def encode(model, s: np.ndarray, mapping: dict, quality: int, kind: int, write_floor: FloorWriter,
           single_stream: bool) -> bytes:
    """One stored-value slice (H, W) → a constant chunk, or a learned chunk of ``kind``."""
    if constant.is_constant(s):
        return constant.encode(s.flat[0])
    payload, sym = model.analyse(network_input(model, s, mapping), quality,
                                 single_stream=single_stream)
    return chunk_bytes(model, s, mapping, quality, kind, write_floor, payload, sym)


def network_input(model, s: np.ndarray, mapping: dict):
    """A stored-value slice as the model's input: ``(1, 1, H', W')`` float32 on [0, 1], padded
    to the model's downsampling multiple."""
    import torch

    return torch.from_numpy(pipeline.pad_to_multiple(pipeline.to_unit(s, mapping),
                                                     model.downsampling))[None, None]


def chunk_bytes(model, s: np.ndarray, mapping: dict, quality: int, kind: int,
                write_floor: FloorWriter, payload: bytes, sym) -> bytes:
    """A learned chunk of ``kind``: its header with the floor the slice's reconstruction (from
    the latent symbols ``sym``) calls for, then ``payload``."""
    return bytes([kind]) + write_floor(floor_of(model, s, mapping, quality, sym)) + payload


def floor_of(model, s: np.ndarray, mapping: dict, quality: int, sym) -> int:
    """The floor slice ``s``'s reconstruction from the latent symbols ``sym`` calls for
    (:func:`bmz.codec.pipeline.choose_floor`)."""
    H, W = s.shape
    rec = pipeline.from_unit(model.synthesize_float(sym, quality)[0, 0, :H, :W].numpy(), mapping,
                             np.int64)
    return pipeline.choose_floor(s, rec, mapping)


def header(model, chunk: bytes, mapping: dict | None, read_floor: FloorReader) -> tuple[int, bytes]:
    """(floor, payload) of a learned chunk, after the header checks (with the volume's
    ``mapping``: a floor no encoder sends is refused)."""
    if model is None:
        raise ValueError("learned chunk but no model")
    floor, pos = read_floor(chunk)
    if mapping is not None and floor > pipeline.floor_candidates(mapping):
        raise ValueError(f"learned chunk: floor {floor} above the largest an encoder sends "
                         f"({pipeline.floor_candidates(mapping)})")
    return floor, chunk[pos:]


def decode(model, chunk: bytes, shape: tuple[int, int], mapping: dict, quality: int, dtype,
           read_floor: FloorReader, single_stream: bool) -> np.ndarray:
    """A learned chunk → stored-value slice (H, W) in ``dtype`` (ValueError on a bad chunk)."""
    floor, payload = header(model, chunk, mapping, read_floor)
    H, W = shape
    x_hat = model.decompress_slice(payload, pipeline.padded_shape(shape, model.downsampling),
                                   quality, single_stream=single_stream)
    v = pipeline.from_unit(x_hat[0, 0, :H, :W].numpy(), mapping, dtype)
    if floor:
        v[v <= mapping["min"] + floor] = mapping["min"]
    return v


def latents(chunk: bytes, ctx: SliceContext, read_floor: FloorReader,
            single_stream: bool) -> SliceLatents:
    """A learned chunk → its entropy-decoded symbols (the decoder, stopped before the synthesis)."""
    model = ctx.get_model()
    floor, payload = header(model, chunk, ctx.mapping, read_floor)
    q = ctx.quality_index
    sym = model.decode_latents(payload, pipeline.padded_shape(ctx.shape, model.downsampling), q,
                               single_stream=single_stream)
    return SliceLatents(chunk[0], ctx.shape, q, floor=floor, symbols=sym)


class Encoder:
    """Encodes a volume's slices with ``encode(model, s, mapping, quality)`` (a learned kind's)
    into a file of chunk format ``fmt``, at quality index ``quality``."""

    def __init__(self, fmt: int, encode, model, mapping: dict, quality: int):
        self.fmt, self._encode = fmt, encode
        self.model, self.mapping, self.quality = model, mapping, int(quality)

    def codec_fields(self) -> dict:
        """What the metadata's ``codec`` object records beyond model, weights and quality."""
        return {"chunk_format": self.fmt}

    def encode_slice(self, s: np.ndarray) -> bytes:
        return self._encode(self.model, s, self.mapping, self.quality)

    def chunks(self, vol, threads: int | None = 1):
        """The chunks of ``vol``'s slices, in order: slices are coded on their own, ``threads``
        at once (None: every core; :func:`bmz._threads.ordered`), the same bytes for any count."""
        slices = (np.asarray(vol[k]) for k in range(vol.shape[0]))
        return _threads.ordered(self.encode_slice, slices, threads)
