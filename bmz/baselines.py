"""Classical image codecs as baselines, one 2-D slice at a time, at the volume's real bit depth.

Method (the one behind ``shared/REFERENCE.md`` and ``classical_val.csv``, so numbers compare):

* B = ``ceil(log2(max - min + 1))`` of the whole volume (:func:`bmz.codec.pipeline.bit_depth`);
* each slice (axis 0 of ``Volume.data``, i.e. the last NIfTI axis) is coded as its own image of
  ``stored - min``, as ``uint8`` when B ≤ 8 else ``uint16`` (declaring B bits where the codec
  allows it);
* every byte the codec writes counts (headers included: a PACS stores them);
* decoded values are clamped to ``[0, 2^B - 1]``, shifted back by ``min`` and cast to the
  volume's dtype; lossless settings are checked bit-exact (:class:`LosslessMismatch` if not).

Codecs live in a small registry (:data:`CODECS`, :func:`get_codec`): each is a
:class:`SliceCodec` with ``settings`` (a sweep of :class:`Setting`), ``encode(img, setting, bits)
-> bytes`` and ``decode(data, bits) -> array``. Add JPEG, HTJ2K, JPEG-LS, JPEG XL, AVIF by
subclassing :class:`SliceCodec` and decorating with :func:`register` (mind REFERENCE.md §2's traps).

JPEG 2000 (OpenJPEG through ``imagecodecs.jpeg2k_encode``; mapping read from imagecodecs'
``_jpeg2k.pyx``, measured with 2026.1.14 / openjpeg 2.5.4 — 2021 releases differed): ``level`` is
OpenJPEG's *fixed-quality* target — ``tcp_distoratio[0] = level`` with ``cp_fixed_quality = 1``,
a single quality layer, irreversible 9/7 wavelet, RPCL order, 256×256 precincts and
``min(6, int(log2(min(H, W)) - 2))`` resolutions — i.e. a target PSNR in dB *relative to the
declared precision's peak* ``2^prec - 1`` (so the declared bit depth matters: an 11-bit image
declared as 16-bit gets targets ~30 dB too low, hence ``bitspersample=B``). ``level`` None/0
(anything outside 1…1000) is lossless: reversible 5/3. We write a raw J2K codestream
(``codecformat='J2K'``: 129 B of headers per lossless 120×120 slice, 143 B lossy — the per-slice
header the reference reports); imagecodecs' default JP2 container would add ~85 B per slice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from .codec.pipeline import bit_depth

__all__ = [
    "Setting", "SliceCodec", "CodedVolume", "LosslessMismatch", "CODECS", "register",
    "get_codec", "codec_input", "code_volume", "sweep", "JPEG2000",
]


class LosslessMismatch(RuntimeError):
    """A lossless setting did not decode bit-exact."""


@dataclass(frozen=True)
class Setting:
    """One point of a codec's sweep: ``name`` as in ``classical_val.csv`` (``psnr36``,
    ``lossless``), the codec ``param`` and whether it must be bit-exact."""

    name: str
    param: float | int | None
    lossless: bool = False

    @property
    def mode(self) -> str:
        return "lossless" if self.lossless else "lossy"


class SliceCodec:
    """A classical 2-D codec. Subclasses set ``name``/``label``/``settings`` and implement
    :meth:`encode`, :meth:`decode` (and :meth:`version`)."""

    name: str = ""
    label: str = ""
    settings: tuple[Setting, ...] = ()

    def __init__(self, threads: int = 1):
        self.threads = int(threads)

    def encode(self, img: np.ndarray, setting: Setting, bits: int) -> bytes:  # pragma: no cover
        raise NotImplementedError

    def decode(self, data: bytes, bits: int) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def version(self) -> str:
        return ""

    def setting(self, name: str) -> Setting:
        for s in self.settings:
            if s.name == name:
                return s
        raise KeyError(f"{self.name}: no setting {name!r}; known: "
                       f"{', '.join(s.name for s in self.settings)}")


CODECS: dict[str, type[SliceCodec]] = {}


def register(cls: type[SliceCodec]) -> type[SliceCodec]:
    """Class decorator adding a codec to :data:`CODECS`; a name registered twice is an error."""
    if not cls.name or cls.name in CODECS:
        raise ValueError(f"baseline codec name {cls.name!r} is empty or already registered")
    CODECS[cls.name] = cls
    return cls


def get_codec(name: str, threads: int = 1) -> SliceCodec:
    try:
        return CODECS[name](threads=threads)
    except KeyError:
        raise KeyError(f"unknown baseline codec {name!r}; known: {', '.join(CODECS)}") from None


# ----------------------------------------------------------------------------------------------
# JPEG 2000 (OpenJPEG)
# ----------------------------------------------------------------------------------------------

J2K_PSNR_TARGETS = (18, 21, 24, 27, 30, 33, 36, 39, 42, 45, 48, 52, 56, 60, 65, 70, 76)


@register
class JPEG2000(SliceCodec):
    """JPEG 2000 via OpenJPEG (imagecodecs): fixed-quality PSNR targets ``psnrNN`` and lossless."""

    name = "JPEG2000"
    label = "JPEG 2000 (OpenJPEG)"
    settings = tuple(Setting(f"psnr{p}", p) for p in J2K_PSNR_TARGETS) + (
        Setting("lossless", 0, lossless=True),)

    def encode(self, img: np.ndarray, setting: Setting, bits: int) -> bytes:
        import imagecodecs

        img = np.ascontiguousarray(img)
        # declare the true bit depth inside the container type (imagecodecs honours 1..7 for
        # uint8 and 9..15 for uint16); it sets the fixed-quality PSNR peak and the lossless cost
        bps = bits if (bits < 8 or 8 < bits < 16) else None
        level = None if setting.lossless else setting.param
        return bytes(imagecodecs.jpeg2k_encode(img, level=level, codecformat="J2K",
                                               bitspersample=bps, numthreads=self.threads))

    def decode(self, data: bytes, bits: int) -> np.ndarray:
        import imagecodecs

        return imagecodecs.jpeg2k_decode(data, numthreads=self.threads)

    def version(self) -> str:
        import imagecodecs

        return f"imagecodecs {imagecodecs.__version__}, {imagecodecs.jpeg2k_version()}"


# ----------------------------------------------------------------------------------------------
# whole volumes
# ----------------------------------------------------------------------------------------------


def codec_input(vol: np.ndarray) -> tuple[np.ndarray, int, int]:
    """``(stored - min as uint8/uint16, min, B)`` for a volume (n, H, W) of stored values."""
    v = np.asarray(vol)
    vmin, vmax = int(v.min()), int(v.max())
    bits = bit_depth(vmin, vmax)
    if bits > 16:
        raise ValueError(f"value range {vmin}..{vmax} needs {bits} bits; baselines handle ≤ 16")
    dt = np.uint8 if bits <= 8 else np.uint16
    x = (v.astype(np.int64) - vmin).astype(dt)
    return x, vmin, bits


@dataclass
class CodedVolume:
    """One volume through one codec setting."""

    codec: str
    setting: Setting
    bits: int
    slice_bytes: list[int]
    enc_s: float
    dec_s: float
    recon: np.ndarray = field(repr=False)

    @property
    def n_bytes(self) -> int:
        return int(sum(self.slice_bytes))


def code_volume(codec: SliceCodec, vol: np.ndarray, setting: Setting | str,
                clock: Callable[[], float] = time.perf_counter) -> CodedVolume:
    """Encode and decode every slice of ``vol`` (n, H, W) with ``codec`` at ``setting``.

    Returns sizes, wall times (encode: the codec calls over all slices; decode: codec calls plus
    clamp/shift/cast) and the reconstruction in ``vol``'s dtype. Raises
    :class:`LosslessMismatch` if a lossless setting is not bit-exact."""
    if isinstance(setting, str):
        setting = codec.setting(setting)
    v = np.asarray(vol)
    if v.ndim == 2:
        v = v[None]
    x, vmin, bits = codec_input(v)
    top = (1 << bits) - 1
    info = np.iinfo(v.dtype)
    streams: list[bytes] = []
    t0 = clock()
    for k in range(x.shape[0]):
        streams.append(codec.encode(x[k], setting, bits))
    t1 = clock()
    recon = np.empty_like(v)
    for k, s in enumerate(streams):
        d = np.asarray(codec.decode(s, bits))
        if d.shape != x.shape[1:]:
            raise RuntimeError(f"{codec.name} {setting.name}: slice {k} decoded to shape {d.shape}, "
                               f"expected {x.shape[1:]}")
        d = np.clip(d.astype(np.int64), 0, top) + vmin
        recon[k] = np.clip(d, info.min, info.max).astype(v.dtype)
    t2 = clock()
    if setting.lossless and not np.array_equal(recon, v):
        bad = int(np.count_nonzero(recon != v))
        raise LosslessMismatch(f"{codec.name} {setting.name}: not bit-exact ({bad} voxels differ)")
    return CodedVolume(codec.name, setting, bits, [len(s) for s in streams], t1 - t0, t2 - t1,
                       recon)


def sweep(codec: SliceCodec, vol: np.ndarray,
          settings: Iterable[Setting | str] | None = None) -> Iterable[CodedVolume]:
    """:func:`code_volume` over ``settings`` (default: the codec's whole sweep)."""
    for s in (codec.settings if settings is None else settings):
        yield code_volume(codec, vol, s)
