"""bmz as a `numcodecs <https://numcodecs.readthedocs.io>`_ codec (id ``"bmz"``) for Zarr arrays.

Each chunk becomes a complete ``.bmz`` file (``bmz.compress``): a 2-D chunk is one image, a 3-D
chunk ``(z, y, x)`` a stack of slices along its first axis (a chunk of more dimensions is
flattened to slices of its last two axes). Chunks must hold integers of at most 16 bits' range
(any integer dtype); decoding gives the same dtype and values within the quality's error.

>>> import zarr
>>> from bmz.zarr_codec import Bmz, BmzZarr3
>>> z = zarr.create_array("scan.zarr", shape=vol.shape, chunks=(16, 256, 256), dtype=vol.dtype,
...                       serializer=BmzZarr3(quality=8), compressors=None)   # Zarr format 3
>>> z = zarr.create_array("scan.zarr", shape=vol.shape, chunks=(16, 256, 256), dtype=vol.dtype,
...                       zarr_format=2, compressors=Bmz(quality=8))          # Zarr format 2

Registration: importing this module registers :class:`Bmz` with numcodecs
(``numcodecs.register_codec``) and, when zarr ≥ 3.1.3 is installed, :class:`BmzZarr3` with zarr
under ``"numcodecs.bmz"``; the package's entry points (``numcodecs.codecs`` → ``bmz``,
``zarr.codecs`` → ``numcodecs.bmz``) let an installed bmz open such arrays without importing
this module first.

Settings: ``quality`` (1..the model's levels) and ``model`` (a shipped model name; default the
flagship) for lossy chunks; ``lossless=True`` or ``max_error=D`` (every decoded voxel within D
stored units of the original; ``base_quality`` as in :func:`bmz.compress`) for guaranteed
fidelity. Any other keyword is passed on to :func:`bmz.compress` if this version of bmz has it,
and refused by name otherwise.

Chunks are coded one at a time per process (a lock), each on every core: the slices of a 3-D
chunk are coded and decoded in parallel (:data:`THREADS`), and the bytes are the same for any
thread count and whatever zarr's thread pool does. Several processes that each code chunks (e.g.
Dask over chunk regions, one process per core) should set ``bmz.zarr_codec.THREADS = 1`` in each
process, so as not to run N × N threads. The thread count is not a codec setting: it does not
change a byte, and is not stored with the array.
"""

from __future__ import annotations

import inspect
import threading
from types import SimpleNamespace

import numpy as np

from . import api
from ._deps import optional
from ._version import __version__
from .codec import zoo
from .codec.chunks.bounded import check_base_quality, check_max_error
from .errors import InputError
from .file import BmzFile

# numcodecs comes with the extra bmz[zarr]; without it, importing this module says so
optional("numcodecs", "zarr", "the Zarr codec (bmz.zarr_codec)")
from numcodecs.abc import Codec  # noqa: E402
from numcodecs.compat import ensure_bytes, ensure_ndarray, ndarray_copy  # noqa: E402
from numcodecs.registry import register_codec  # noqa: E402

CODEC_ID = "bmz"
_LOCK = threading.Lock()
#: threads each chunk is coded and decoded on (None: every core); the bytes are the same for any
THREADS: int | None = None


def _compress_settings() -> set[str]:
    """Keyword settings :func:`bmz.compress` accepts beyond the array, quality and model."""
    params = inspect.signature(api.compress).parameters
    return {n for n in params
            if n not in ("array", "quality", "model", "source", "source_meta", "threads")}


class Bmz(Codec):
    """numcodecs codec: integer array chunk (2-D, 3-D, …) ↔ ``.bmz`` bytes.

    Args:
        quality: 1 (smallest) .. the model's number of levels; default: the model's default
            (:func:`bmz.codec.zoo.default_quality`).
        model: a shipped model name (``bmz info`` / ``models/``); default the flagship.
        **settings: further :func:`bmz.compress` settings: ``lossless=True``, ``max_error=D``,
            ``base_quality`` ("auto", 0 or a quality).
    """

    codec_id = CODEC_ID

    def __init__(self, quality: int | None = None, model: str | None = None, **settings):
        self.model = model or zoo.DEFAULT_MODEL
        card = zoo.read_card(self.model)  # an unknown name raises UnknownModelError (no torch)
        n_q, default = zoo.card_qualities(card)
        if quality is None:
            quality = default
        bounded = settings.get("max_error") is not None or settings.get("lossless")
        if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) \
                or not (1 <= quality <= n_q or bounded):  # bounded modes do not use quality
            raise InputError(f"bmz codec: quality must be an integer from 1 to {n_q} for model "
                             f"{self.model}, got {quality!r}")
        self.quality = int(quality)
        known = _compress_settings()
        unknown = sorted(set(settings) - known)
        if unknown:
            raise InputError(f"bmz codec: bmz {__version__} has no setting "
                             f"{', '.join(map(repr, unknown))}; its settings are quality, model"
                             + "".join(f", {k}" for k in sorted(known)))
        if {"max_error", "lossless", "base_quality"} & set(settings):
            bound = check_max_error(settings.get("max_error"), settings.get("lossless", False))
            if bound is None:
                raise InputError("bmz codec: base_quality needs max_error or lossless")
            if settings.get("max_error") is not None:
                settings["max_error"] = bound
            if "base_quality" in settings:
                settings["base_quality"] = check_base_quality(settings["base_quality"],
                                                              SimpleNamespace(n_qualities=n_q))
        self.settings = dict(settings)

    def encode(self, buf) -> bytes:
        a = buf if isinstance(buf, np.ndarray) else ensure_ndarray(buf)
        where = f"bmz codec: chunk of shape {a.shape} and dtype {a.dtype}"
        if a.dtype == bool or a.dtype.kind not in "iu":
            what = ("floating point" if a.dtype.kind == "f" else
                    "boolean" if a.dtype == bool else "not an integer type")
            raise InputError(f"{where}: {what}; bmz stores integer images (store the array as an "
                             "integer dtype, e.g. the scanner's int16/uint16)")
        if a.ndim < 2:
            raise InputError(f"{where}: bmz needs image chunks of 2 or more dimensions; a 1-D "
                             "buffer has lost its shape (use Bmz as a Zarr compressor/serializer, "
                             "or pass the array itself)")
        if a.ndim > 3:
            a = a.reshape(-1, *a.shape[-2:])
        bounded = self.settings.get("max_error") is not None or self.settings.get("lossless")
        quality = None if bounded else self.quality  # bounded chunks have a base_quality instead
        with _LOCK:
            return api.compress(np.ascontiguousarray(a), quality, self.model, **self.settings,
                                threads=THREADS)

    def decode(self, buf, out=None):
        with _LOCK, BmzFile(ensure_bytes(buf), name="<bytes>") as f:
            arr = f.read(threads=THREADS)
        if out is not None:
            return ndarray_copy(arr, out)
        return arr

    def get_config(self) -> dict:
        return {"id": self.codec_id, "quality": self.quality, "model": self.model, **self.settings}

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.settings.items())
        return f"Bmz(quality={self.quality}, model={self.model!r}{extra})"


register_codec(Bmz)

# --- Zarr format 3: an array -> bytes codec named "numcodecs.bmz" ---------------------------

try:
    from zarr.codecs.numcodecs import _NumcodecsArrayBytesCodec
except ImportError:  # zarr 2, or zarr < 3.1.3: use Bmz as a compressor of a Zarr format 2 array
    _NumcodecsArrayBytesCodec = None

if _NumcodecsArrayBytesCodec is not None:

    class BmzZarr3(_NumcodecsArrayBytesCodec, codec_name=CODEC_ID):
        """bmz as the serializer (array → bytes codec) of a Zarr format 3 array:
        ``zarr.create_array(..., serializer=BmzZarr3(quality=8), compressors=None)``."""

        def __init__(self, **codec_config):
            # stored resolved (the model's name too, not "the default"): bad settings fail here
            settings = {k: v for k, v in codec_config.items() if k != "id"}
            super().__init__(**Bmz(**settings).get_config())

        def validate(self, *, shape, dtype, chunk_grid) -> None:
            native = dtype.to_native_dtype()
            if native == np.dtype(bool) or native.kind not in "iu":
                raise InputError(f"bmz codec: dtype {native} is not an integer type; bmz stores "
                                 "integer images")
            chunks = getattr(chunk_grid, "chunk_shape", None)
            if len(shape) < 2 or (chunks is not None and len(chunks) < 2):
                raise InputError(f"bmz codec: array of shape {tuple(shape)}: bmz needs images "
                                 "(2 or more dimensions)")

    from zarr.registry import register_codec as _register_zarr_codec

    _register_zarr_codec(BmzZarr3.codec_name, BmzZarr3)

__all__ = ["Bmz", "CODEC_ID"] + (["BmzZarr3"] if _NumcodecsArrayBytesCodec is not None else [])
