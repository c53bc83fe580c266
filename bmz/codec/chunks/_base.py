"""What the table (:mod:`bmz.codec.chunks`) hands a chunk kind's module, and what it gets back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np


@dataclass(frozen=True)
class SliceContext:
    """Everything decoding one chunk needs besides its bytes, from the file's checked metadata.

    ``shape``: the slice (H, W); ``mapping``: the volume's intensity mapping; ``dtype``: the
    decoded dtype; ``codec``: the metadata's ``codec`` object (its ``chunk_format`` checked);
    ``get_model()``: the file's model, loaded on the first call (only chunks that need it call)."""

    shape: tuple[int, int]
    mapping: dict
    dtype: np.dtype
    codec: dict
    get_model: Callable[[], Any]

    @property
    def quality_index(self) -> int:
        """The file's quality as the model's index (``codec.quality`` − 1)."""
        return int(self.codec["quality"]) - 1


class SliceLatents:
    """What one chunk holds, entropy-decoded but not synthesised (:func:`bmz.codec.chunks.latents`).

    ``kind``: the chunk kind — constant (``value`` = the stored value, no latent) or a learned
    kind (``floor``, and ``symbols``: the model's integer symbols, ``{"y": ...}`` and for the
    hyperprior also ``"z"``). ``shape``: the slice (H, W); ``quality``: the model's quality index."""

    __slots__ = ("kind", "shape", "quality", "floor", "value", "symbols")

    def __init__(self, kind: int, shape: tuple[int, int], quality: int, floor: int = 0,
                 value: int | None = None, symbols: dict | None = None):
        self.kind, self.shape, self.quality = kind, (int(shape[0]), int(shape[1])), int(quality)
        self.floor, self.value, self.symbols = int(floor), value, symbols
