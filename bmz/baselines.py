"""Classical image codecs as baselines, one 2-D slice at a time, at the volume's real bit depth.

Method (the one behind ``shared/REFERENCE.md`` and ``classical_val.csv``, so numbers compare):

* B = ``ceil(log2(max - min + 1))`` of the whole volume (:func:`bmz.codec.pipeline.bit_depth`);
* each slice (axis 0 of ``Volume.data``, i.e. the last NIfTI axis) is coded as its own image of
  ``stored - min``, as ``uint8`` when B ≤ 8 else ``uint16`` (declaring B bits where the codec
  allows it; each codec's docstring says what it declares);
* every byte the codec writes counts (headers included: a PACS stores them); the per-image header
  part is also estimated (:meth:`SliceCodec.header_bytes`) so rates can be given without it;
* decoded values are clamped to ``[0, 2^B - 1]``, shifted back by ``min`` and cast to the
  volume's dtype; lossless settings are checked bit-exact (:class:`LosslessMismatch` if not);
* a bit depth a codec (or one of its settings) cannot code raises :class:`UnsupportedBitDepth`.

Codecs live in a registry (:data:`CODECS`, :func:`get_codec`, CLI aliases in :data:`ALIASES`):
each is a :class:`SliceCodec` with a settings sweep (:meth:`SliceCodec.settings_for` — the
reference csv's ``setting``/``param`` values, extended for B > 8 where the 8-bit sweep does not
reach ~0.1 bpp), ``encode(img, setting, bits) -> bytes`` and ``decode(data, bits) -> array``.
All run single-threaded. Versions (for caches): :meth:`SliceCodec.version`.

Codecs (imagecodecs 2026.1.14; each class documents its mapping and traps — REFERENCE.md §2):

==========  ==========================================================================
JPEG        libjpeg-turbo (``jpeg8``): 8-bit baseline with optimised Huffman tables for
            B ≤ 8, 12-bit extended (SOF1) for 9–12 bits, lossy refused above 12 bits;
            lossless = SOF3 (predictor 1) at B bits (2–16).
JPEG2000    OpenJPEG: fixed-quality PSNR targets, raw J2K codestream, B declared.
HTJ2K       OpenJPH: int16 input (lossy wraps in uint8/uint16), quantisation step, clamp.
JPEG-LS     CharLS: NEAR sweep; raw codestream (imagecodecs' SPIFF header stripped) — and
            ``lossless-ic`` as imagecodecs writes it; precision declared 8 or 16 bits.
JPEG-XL     libjxl: distance sweep declared at 16 bits for B > 8, lossless at B bits.
AVIF        libavif/aom speed 6: R=G=B with 4:0:0, 8/10/12 bits (smallest holding B).
==========  ==========================================================================

Header estimates (``bpp_nohdr``): JPEG and JPEG-LS — parse the markers, everything but the
entropy-coded segments is header; JPEG 2000 / HTJ2K — parse the codestream, main header plus
tile-part headers (everything but the bytes after SOD); AVIF — parse the ISOBMFF boxes, everything
but the ``mdat`` payload; JPEG XL (a bit-packed codestream without byte-aligned markers) — the size
of a 1×1 image coded with the same setting and declared depth.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Iterable, Sequence

import numpy as np

from ._deps import optional
from .codec.pipeline import bit_depth

__all__ = [
    "Setting", "SliceCodec", "CodedVolume", "LosslessMismatch", "UnsupportedBitDepth", "CODECS",
    "ALIASES", "register", "get_codec", "canonical_name", "codec_input", "code_volume", "sweep",
    "jpeg2000_at_bytes", "J2K_LEVEL_RANGE",
    "JPEG", "JPEG2000", "HTJ2K", "JPEGLS", "JPEGXL", "AVIF",
    "jpeg_marker_header_bytes", "j2k_header_bytes", "isobmff_header_bytes", "strip_spiff",
    "avif_depth",
]


class LosslessMismatch(RuntimeError):
    """A lossless setting did not decode bit-exact."""


class UnsupportedBitDepth(ValueError):
    """The codec (or this setting of it) cannot code images of this bit depth."""


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
    """A classical 2-D codec. Subclasses set ``name``/``label``/``settings``/``lib`` and implement
    :meth:`_encode` (and :meth:`decode`, :meth:`header_bytes`, :meth:`settings_for`,
    :meth:`check_bits` where the defaults do not fit)."""

    name: str = ""
    label: str = ""
    settings: tuple[Setting, ...] = ()
    #: imagecodecs' name of the codec (``jpeg2k`` → ``jpeg2k_decode``, ``jpeg2k_version``)
    lib: str = ""
    #: whether its decoder takes ``numthreads``
    threaded_decode: bool = False
    #: bit depths the codec codes at all (lossless and lossy)
    max_bits: int = 16

    def __init__(self, threads: int = 1):
        self.threads = int(threads)

    def encode(self, img: np.ndarray, setting: Setting, bits: int) -> bytes:
        """Slice ``img`` of ``bits``-bit values coded with ``setting`` (UnsupportedBitDepth where
        the setting cannot code them)."""
        self.check_bits(bits, setting)
        return bytes(self._encode(_ic(), np.ascontiguousarray(img), setting, bits))

    def _encode(self, ic, img: np.ndarray, setting: Setting, bits: int):  # pragma: no cover
        """``encode`` with imagecodecs ``ic``, the bit depth checked, ``img`` C-contiguous."""
        raise NotImplementedError

    def decode(self, data: bytes, bits: int) -> np.ndarray:
        kw = {"numthreads": self.threads} if self.threaded_decode else {}
        return getattr(_ic(), self.lib + "_decode")(data, **kw)

    def version(self) -> str:
        """imagecodecs' version and that of the library behind the codec."""
        ic = _ic()
        return f"imagecodecs {ic.__version__}, {getattr(ic, self.lib + '_version')()}"

    def settings_for(self, bits: int) -> tuple[Setting, ...]:
        """The sweep for images of ``bits`` bits (default: :attr:`settings`)."""
        return self.settings

    def check_bits(self, bits: int, setting: Setting) -> None:
        """Raise :class:`UnsupportedBitDepth` if ``setting`` cannot code ``bits``-bit images."""
        if not 1 <= bits <= self.max_bits:
            raise UnsupportedBitDepth(f"{self.name}: cannot code {bits}-bit images "
                                      f"(1..{self.max_bits} bits)")

    def header_bytes(self, data: bytes, setting: Setting, bits: int) -> int:
        """Estimated per-image header bytes of the coded image ``data`` (0 if unknown)."""
        return 0

    def setting(self, name: str, bits: int | None = None) -> Setting:
        pool = self.settings if bits is None else self.settings_for(bits)
        for s in pool:
            if s.name == name:
                return s
        for s in self.settings_for(16):  # settings that exist only at higher bit depths
            if s.name == name:
                return s
        raise KeyError(f"{self.name}: no setting {name!r}; known: "
                       f"{', '.join(s.name for s in pool)}")


CODECS: dict[str, type[SliceCodec]] = {}
#: lower-case command-line names → registry names
ALIASES: dict[str, str] = {}


def register(cls: type[SliceCodec]) -> type[SliceCodec]:
    """Class decorator adding a codec to :data:`CODECS`; a name registered twice is an error."""
    if not cls.name or cls.name in CODECS:
        raise ValueError(f"baseline codec name {cls.name!r} is empty or already registered")
    CODECS[cls.name] = cls
    ALIASES[cls.name.lower().replace("-", "")] = cls.name
    return cls


def canonical_name(name: str) -> str:
    """``jpegls`` / ``JPEG-LS`` / ``jpeg-ls`` → ``JPEG-LS`` (KeyError naming the known ones)."""
    if name in CODECS:
        return name
    key = name.lower().replace("-", "").replace("_", "").replace(" ", "")
    if key in ALIASES:
        return ALIASES[key]
    raise KeyError(f"unknown baseline codec {name!r}; known: "
                   f"{', '.join(sorted(ALIASES))}")


def get_codec(name: str, threads: int = 1) -> SliceCodec:
    return CODECS[canonical_name(name)](threads=threads)


def _ic():
    return optional("imagecodecs", "bench", "the classical codecs (bmz.baselines)")


def _fmt_param(v: float) -> str:
    return f"{v:g}"


def series(prefix: str, values, scale: float = 1) -> tuple[Setting, ...]:
    """Settings named ``prefix`` + each value (``q75``, ``d0.5``) with parameter value × ``scale``."""
    return tuple(Setting(f"{prefix}{_fmt_param(v)}", v * scale) for v in values)


#: the lossless setting of most codecs
LOSSLESS = Setting("lossless", 0, lossless=True)


# ----------------------------------------------------------------------------------------------
# header estimates
# ----------------------------------------------------------------------------------------------


def jpeg_marker_header_bytes(data: bytes) -> int:
    """Bytes of a JPEG / JPEG-LS stream outside its entropy-coded segments (SOI, APPn, DQT, DHT,
    SOF, LSE, SOS headers, EOI...). Entropy-coded data runs from the end of an SOS segment to the
    next marker: ``0xFF`` followed by a byte ≥ 0x80 other than RST0–7 (JPEG stuffs ``FF 00``,
    JPEG-LS stuffs a 0 bit after ``FF``, so neither looks like a marker)."""
    b = bytes(data)
    n = len(b)
    i, payload = 0, 0
    while i + 1 < n:
        if b[i] != 0xFF:
            i += 1
            continue
        m = b[i + 1]
        if m == 0xFF:  # fill byte
            i += 1
            continue
        if m in (0xD8, 0xD9, 0x01) or 0xD0 <= m <= 0xD7:  # standalone markers
            i += 2
            continue
        if i + 4 > n:
            break
        seg = int.from_bytes(b[i + 2:i + 4], "big")
        i += 2 + seg
        if m == 0xDA:  # SOS: entropy-coded data follows
            j = i
            while j + 1 < n and not (b[j] == 0xFF and b[j + 1] >= 0x80
                                     and not 0xD0 <= b[j + 1] <= 0xD7):
                j += 1
            payload += j - i
            i = j
    return max(0, n - payload)


def j2k_header_bytes(data: bytes) -> int:
    """Bytes of a JPEG 2000 / HTJ2K codestream that are not tile data: the main header (SOC up to
    the first SOT), each tile-part's header (SOT up to and including SOD) and EOC."""
    b = bytes(data)
    n = len(b)
    if b[:2] != b"\xff\x4f":
        return 0
    i, payload = 2, 0
    while i + 4 <= n:
        m = int.from_bytes(b[i:i + 2], "big")
        if m == 0xFF90:  # SOT
            psot = int.from_bytes(b[i + 6:i + 10], "big")
            start = i
            j = i + 2 + int.from_bytes(b[i + 2:i + 4], "big")
            while j + 2 <= n and int.from_bytes(b[j:j + 2], "big") != 0xFF93:  # SOD
                j += 2 + int.from_bytes(b[j + 2:j + 4], "big")
            j += 2
            end = start + psot if psot else (n - 2 if b[-2:] == b"\xff\xd9" else n)
            payload += max(0, end - j)
            i = end
        elif m == 0xFFD9:  # EOC
            break
        else:
            i += 2 + int.from_bytes(b[i + 2:i + 4], "big")
    return max(0, n - payload)


def isobmff_header_bytes(data: bytes) -> int:
    """Bytes of an ISOBMFF file (AVIF, HEIF) outside the ``mdat`` boxes' payload."""
    b = bytes(data)
    n = len(b)
    i, payload = 0, 0
    while i + 8 <= n:
        size = int.from_bytes(b[i:i + 4], "big")
        typ = b[i + 4:i + 8]
        hdr = 8
        if size == 1:
            size = int.from_bytes(b[i + 8:i + 16], "big")
            hdr = 16
        elif size == 0:
            size = n - i
        if size < hdr:
            break
        if typ == b"mdat":
            payload += size - hdr
        i += size
    return max(0, n - payload)


# ----------------------------------------------------------------------------------------------
# JPEG (libjpeg-turbo)
# ----------------------------------------------------------------------------------------------

JPEG_QUALITIES = (1, 3, 5, 8, 12, 20, 30, 45, 60, 75, 85, 92, 96, 99, 100)


@register
class JPEG(SliceCodec):
    """JPEG via libjpeg-turbo (``imagecodecs.jpeg8_encode``).

    Lossy ``qNN``: quality NN with optimised Huffman tables (what the reference did: its q20/q75
    rates match optimised tables, not the standard ones, which cost ~170 B more per image);
    8-bit baseline (SOF0) for B ≤ 8, 12-bit extended (SOF1, ``uint16`` input) for 9–12 bits — the
    12-bit JPEG PACS use for MR; B > 12 is refused (:class:`UnsupportedBitDepth`): libjpeg-turbo
    has no 16-bit lossy mode. ``lossless``: SOF3 (ITU-T T.81 lossless, predictor 1) declaring
    B bits (2–16)."""

    name = "JPEG"
    lib = "jpeg8"
    label = "JPEG (libjpeg-turbo)"
    settings = series("q", JPEG_QUALITIES) + (LOSSLESS,)

    def check_bits(self, bits: int, setting: Setting) -> None:
        super().check_bits(bits, setting)
        if not setting.lossless and bits > 12:
            raise UnsupportedBitDepth(
                f"JPEG: lossy JPEG codes 8-bit (baseline) or 12-bit (extended) samples; this "
                f"volume needs {bits} bits (use lossless JPEG, JPEG 2000 or JPEG-LS)")

    def _encode(self, ic, img: np.ndarray, setting: Setting, bits: int):
        if setting.lossless:
            return bytes(ic.jpeg8_encode(img, lossless=True, predictor=1,
                                         bitspersample=max(2, bits)))
        bps = 8 if bits <= 8 else 12
        return bytes(ic.jpeg8_encode(img, level=int(setting.param), optimize=True,
                                     bitspersample=bps))

    def header_bytes(self, data: bytes, setting: Setting, bits: int) -> int:
        return jpeg_marker_header_bytes(data)


# ----------------------------------------------------------------------------------------------
# JPEG 2000 (OpenJPEG)
# ----------------------------------------------------------------------------------------------

J2K_PSNR_TARGETS = (18, 21, 24, 27, 30, 33, 36, 39, 42, 45, 48, 52, 56, 60, 65, 70, 76)


@register
class JPEG2000(SliceCodec):
    """JPEG 2000 via OpenJPEG (``imagecodecs.jpeg2k_encode``): fixed-quality targets ``psnrNN``
    and lossless.

    Mapping read from imagecodecs' ``_jpeg2k.pyx``, measured with 2026.1.14 / openjpeg 2.5.4:
    ``level`` is OpenJPEG's *fixed-quality* target — ``tcp_distoratio[0] = level`` with
    ``cp_fixed_quality = 1``, a single quality layer, irreversible 9/7 wavelet, RPCL order,
    256×256 precincts and ``min(6, int(log2(min(H, W)) - 2))`` resolutions — i.e. a target PSNR in
    dB *relative to the declared precision's peak* ``2^prec - 1`` (so the declared bit depth
    matters: an 11-bit image declared as 16-bit gets targets far too low, the peak being
    2^16 − 1 instead of 2^11 − 1, hence ``bitspersample=B``). ``lossless``: reversible 5/3. We
    write a raw J2K codestream (``codecformat='J2K'``: 129 B of headers per lossless 120×120
    slice, 143 B lossy — the per-slice header the reference reports); the JP2 container would add
    ~85 B per slice."""

    name = "JPEG2000"
    lib = "jpeg2k"
    threaded_decode = True
    label = "JPEG 2000 (OpenJPEG)"
    settings = series("psnr", J2K_PSNR_TARGETS) + (LOSSLESS,)

    def _encode(self, ic, img: np.ndarray, setting: Setting, bits: int):
        # imagecodecs honours 1..7 for uint8 and 9..15 for uint16
        bps = bits if (bits < 8 or 8 < bits < 16) else None
        level = None if setting.lossless else setting.param
        return bytes(ic.jpeg2k_encode(img, level=level, codecformat="J2K",
                                      bitspersample=bps, numthreads=self.threads))

    def header_bytes(self, data: bytes, setting: Setting, bits: int) -> int:
        return j2k_header_bytes(data)


# ----------------------------------------------------------------------------------------------
# HTJ2K (OpenJPH)
# ----------------------------------------------------------------------------------------------

#: (name, step): ``param = step / 256`` is OpenJPH's ``qstep`` for an int16 image
HTJ2K_STEPS = (0.6, 0.4, 0.25, 0.15, 0.1, 0.06, 0.04, 0.025, 0.015, 0.01, 0.006, 0.004)
#: coarser steps added for B > 8 (the 8-bit sweep starts near 1 bpp on 12-bit data)
HTJ2K_STEPS_HI = (9.6, 6, 4, 2.5, 1.6, 1.0)


@register
class HTJ2K(SliceCodec):
    """High-throughput JPEG 2000 via OpenJPH (``imagecodecs.htj2k_encode``).

    The image goes in as ``int16`` (signed 16-bit SIZ): OpenJPH's lossy path does not clamp, and
    a ``uint8``/``uint16`` image decodes with values wrapped (255 → 0); the int16 output is
    clamped to ``[0, 2^B - 1]`` by :func:`code_volume`. ``stepS`` passes ``qstep = S / 256`` (the
    reference's ``param``) — a step relative to the int16 range, so the same setting is ~16×
    finer relative to a 12-bit volume's range; hence coarser steps for B > 8. imagecodecs has no
    bit-depth argument: the declared precision is 16 bits (signed). B = 16 goes in as int32.
    ``lossless``: reversible 5/3."""

    name = "HTJ2K"
    lib = "htj2k"
    label = "HTJ2K (OpenJPH)"
    settings = series("step", HTJ2K_STEPS, 1 / 256) + (LOSSLESS,)

    def settings_for(self, bits: int) -> tuple[Setting, ...]:
        if bits <= 8:
            return self.settings
        hi = series("step", HTJ2K_STEPS_HI, 1 / 256)
        return hi + self.settings

    def _encode(self, ic, img: np.ndarray, setting: Setting, bits: int):
        x = np.ascontiguousarray(img, dtype=np.int16 if bits <= 15 else np.int32)
        if setting.lossless:
            return bytes(ic.htj2k_encode(x, reversible=True))
        return bytes(ic.htj2k_encode(x, level=float(setting.param)))

    def header_bytes(self, data: bytes, setting: Setting, bits: int) -> int:
        return j2k_header_bytes(data)


# ----------------------------------------------------------------------------------------------
# JPEG-LS (CharLS)
# ----------------------------------------------------------------------------------------------

JLS_NEAR = (64, 32, 16, 8, 4, 2, 1)


def strip_spiff(data: bytes) -> bytes:
    """A JPEG-LS stream without its SPIFF header (APP8 segments right after SOI).

    imagecodecs/CharLS writes a SPIFF header (44 B: the APP8 header and its end-of-directory
    entry); the JPEG-LS codestream a PACS stores in DICOM is the bare SOI…EOI stream (27 B of
    headers for an 8-bit image, what the reference's JPEG-LS rows count)."""
    b = bytes(data)
    if b[:2] != b"\xff\xd8":
        return b
    i = 2
    while b[i:i + 2] == b"\xff\xe8":
        i += 2 + int.from_bytes(b[i + 2:i + 4], "big")
    return b[:2] + b[i:]


@register
class JPEGLS(SliceCodec):
    """JPEG-LS via CharLS (``imagecodecs.jpegls_encode``): ``nearN`` (maximum error N) and
    ``lossless``, stored as the bare codestream (:func:`strip_spiff`); ``lossless-ic`` keeps the
    SPIFF header imagecodecs writes (the reference's row of that name).

    Precision: imagecodecs' ``jpegls_encode(data, level)`` has no bit-depth argument; CharLS
    declares the container's 8 or 16 bits (SOF55 P = 16 and an LSE with MAXVAL = 65535 for
    ``uint16``). For 9–15-bit data that costs some rate against declaring B (REFERENCE.md §2;
    pyjpegls can declare B); for 8-bit data (all of val's 8-bit group) it is exact. NEAR is in
    stored-value units, so for B > 8 the sweep adds NEAR 128 and 255 (the largest JPEG-LS allows)
    where the range admits them."""

    name = "JPEG-LS"
    lib = "jpegls"
    label = "JPEG-LS (CharLS)"
    settings = series("near", JLS_NEAR) + (LOSSLESS, Setting("lossless-ic", 0, lossless=True))

    def settings_for(self, bits: int) -> tuple[Setting, ...]:
        top = (1 << bits) - 1
        hi = series("near", [n for n in (255, 128) if bits > 8 and n <= top // 2])
        return hi + self.settings

    def check_bits(self, bits: int, setting: Setting) -> None:
        super().check_bits(bits, setting)
        if setting.param and int(setting.param) > min(255, ((1 << bits) - 1) // 2):
            raise UnsupportedBitDepth(f"JPEG-LS: NEAR {setting.param} exceeds "
                                      f"min(255, MAXVAL/2) for {bits}-bit data")

    def _encode(self, ic, img: np.ndarray, setting: Setting, bits: int):
        data = bytes(ic.jpegls_encode(img, level=int(setting.param) or None))
        return data if setting.name == "lossless-ic" else strip_spiff(data)

    def header_bytes(self, data: bytes, setting: Setting, bits: int) -> int:
        return jpeg_marker_header_bytes(data)


# ----------------------------------------------------------------------------------------------
# JPEG XL (libjxl)
# ----------------------------------------------------------------------------------------------

JXL_DISTANCES = (25, 18, 13, 9, 6.5, 4.5, 3, 2, 1.5, 1, 0.75, 0.5, 0.35, 0.2, 0.1, 0.06, 0.03)


@register
class JPEGXL(SliceCodec):
    """JPEG XL via libjxl (``imagecodecs.jpegxl_encode``), naked codestream, default effort.

    ``dD``: lossy at Butteraugli distance D; B ≤ 8 as 8-bit, B > 8 as the ``uint16`` values
    declared 16-bit (REFERENCE.md §2: lossy is better declared at 16 bits; on 8-bit data the
    reference's ``JPEG-XL/u16`` rows equal its 8-bit ones). ``lossless``: modular lossless
    declaring the true bit depth B."""

    name = "JPEG-XL"
    lib = "jpegxl"
    threaded_decode = True
    label = "JPEG XL (libjxl)"
    settings = series("d", JXL_DISTANCES) + (LOSSLESS,)

    def _encode(self, ic, img: np.ndarray, setting: Setting, bits: int):
        if setting.lossless:
            return bytes(ic.jpegxl_encode(img, lossless=True, bitspersample=bits,
                                          numthreads=self.threads))
        bps = 8 if img.dtype == np.uint8 else 16
        return bytes(ic.jpegxl_encode(img, distance=float(setting.param), bitspersample=bps,
                                      numthreads=self.threads))

    def header_bytes(self, data: bytes, setting: Setting, bits: int) -> int:
        return _jxl_1x1_bytes(setting, bits)


@lru_cache(maxsize=256)
def _jxl_1x1_bytes(setting: Setting, bits: int) -> int:
    one = np.zeros((1, 1), dtype=np.uint8 if bits <= 8 else np.uint16)
    return len(JPEGXL().encode(one, setting, bits))


# ----------------------------------------------------------------------------------------------
# AVIF (libavif + aom)
# ----------------------------------------------------------------------------------------------

AVIF_QUALITIES = (0, 8, 16, 25, 35, 45, 55, 65, 72, 80, 86, 91, 95, 98, 99)
#: aom speed 6: what the reference ran; imagecodecs' default is aom's slowest preset here (far
#: slower, for a small gain at the same rate)
AVIF_SPEED = 6


def avif_depth(bits: int) -> int:
    """AVIF sample depth for B-bit data: the smallest of 8/10/12 holding B (10-bit AVIF silently
    clips values above 1023, so a 10-bit container is never used for larger values)."""
    for d in (8, 10, 12):
        if bits <= d:
            return d
    raise UnsupportedBitDepth(f"AVIF: samples of at most 12 bits; this volume needs {bits} bits")


@register
class AVIF(SliceCodec):
    """AVIF via libavif/aom (``imagecodecs.avif_encode``) at speed 6 (:data:`AVIF_SPEED`).

    The grayscale path is unreliable (REFERENCE.md §2), so each slice goes in as R = G = B with
    4:0:0 subsampling (``pixelformat='400'``), at depth 8, 10 or 12 (:func:`avif_depth`); B > 12
    is refused. (A 2-D grayscale array ignores the quality here: every level came out lossless.)
    ``qNN``: libavif quality NN; ``lossless``: quality 100 with matrix coefficients BT.709 (the
    default identity matrix of imagecodecs' lossless path forces 4:4:4 and 1.7× the bytes)."""

    name = "AVIF"
    lib = "avif"
    threaded_decode = True
    label = "AVIF (libavif/aom)"
    max_bits = 12
    settings = tuple(Setting(f"q{q}", q) for q in AVIF_QUALITIES) + (
        Setting("lossless", 100, lossless=True),)

    def check_bits(self, bits: int, setting: Setting) -> None:
        avif_depth(bits)

    def _encode(self, ic, img: np.ndarray, setting: Setting, bits: int):
        depth = avif_depth(bits)
        img = np.ascontiguousarray(img, dtype=np.uint8 if depth == 8 else np.uint16)
        rgb = np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))
        # lossless: imagecodecs' default for quality 100 is the identity matrix, which forces
        # 4:4:4 and codes three planes (1.7x the bits); BT.709 (matrix 1) keeps 4:0:0 and Y = R
        # exactly for R = G = B (checked bit-exact like every lossless setting)
        kw = {"matrix": 1} if setting.lossless else {}
        return bytes(ic.avif_encode(rgb, level=int(setting.param), speed=AVIF_SPEED,
                                    bitspersample=depth, pixelformat="400",
                                    numthreads=self.threads, **kw))

    def decode(self, data: bytes, bits: int) -> np.ndarray:
        d = np.asarray(super().decode(data, bits))
        if d.ndim == 3:  # R = G = B (the lossless path may come back as RGB)
            d = d[..., 0]
        return d

    def header_bytes(self, data: bytes, setting: Setting, bits: int) -> int:
        return isobmff_header_bytes(data)


# ----------------------------------------------------------------------------------------------
# whole volumes
# ----------------------------------------------------------------------------------------------


def codec_input(vol: np.ndarray, vmin: int | None = None,
                bits: int | None = None) -> tuple[np.ndarray, int, int]:
    """``(stored - min as uint8/uint16, min, B)`` for a volume (n, H, W) of stored values.

    ``vmin``/``bits`` default to the array's own; pass the whole volume's to code a few of its
    slices exactly as they are coded within it."""
    v = np.asarray(vol)
    if vmin is None or bits is None:
        vmin, vmax = int(v.min()), int(v.max())
        bits = bit_depth(vmin, vmax)
    if bits > 16:
        raise UnsupportedBitDepth(f"value range needs {bits} bits; baselines handle ≤ 16")
    dt = np.uint8 if bits <= 8 else np.uint16
    x = (v.astype(np.int64) - vmin).astype(dt)
    return x, int(vmin), int(bits)


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
    #: estimated per-image header bytes, summed over slices (see :meth:`SliceCodec.header_bytes`)
    header_bytes: int = 0

    @property
    def n_bytes(self) -> int:
        return int(sum(self.slice_bytes))


def code_volume(codec: SliceCodec, vol: np.ndarray, setting: Setting | str,
                clock: Callable[[], float] = time.perf_counter, vmin: int | None = None,
                bits: int | None = None) -> CodedVolume:
    """Encode and decode every slice of ``vol`` (n, H, W) with ``codec`` at ``setting``.

    Returns sizes, wall times (encode: the codec calls over all slices; decode: codec calls plus
    clamp/shift/cast), the header estimate and the reconstruction in ``vol``'s dtype. Raises
    :class:`UnsupportedBitDepth` when the codec cannot code this bit depth and
    :class:`LosslessMismatch` if a lossless setting is not bit-exact. ``vmin``/``bits``: the whole
    volume's, when ``vol`` is a part of it."""
    v = np.asarray(vol)
    if v.ndim == 2:
        v = v[None]
    x, vmin, bits = codec_input(v, vmin, bits)
    if isinstance(setting, str):
        setting = codec.setting(setting, bits)
    codec.check_bits(bits, setting)
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
    hdr = sum(codec.header_bytes(s, setting, bits) for s in streams)
    return CodedVolume(codec.name, setting, bits, [len(s) for s in streams], t1 - t0, t2 - t1,
                       recon, hdr)


#: the range of OpenJPEG fixed-quality targets :func:`jpeg2000_at_bytes` searches (dB relative to
#: the declared peak ``2^B - 1``; below ~10 almost nothing is coded, above ~90 the target no longer
#: binds and the size stops growing)
J2K_LEVEL_RANGE = (1.0, 100.0)


def jpeg2000_at_bytes(vol: np.ndarray, n_bytes: int, slice_bytes: Sequence[int] | None = None, *,
                      search_slices: int = 8, iterations: int = 12,
                      tolerance: float = 0.005) -> CodedVolume:
    """JPEG 2000 (:class:`JPEG2000`: OpenJPEG, lossy 9/7, at the volume's real bit depth) of
    ``vol`` (n, H, W) at a rate matched to ``n_bytes`` in all (e.g. another codec's file).

    The fixed-quality target (``level``, continuous) is found by bisection over
    :data:`J2K_LEVEL_RANGE` — at most ``iterations`` encodes, stopping early once the size is
    within ``tolerance`` (relative) of the budget — as the highest target whose codestreams fit in
    the budget: JPEG 2000 never gets more bytes than ``n_bytes`` unless even the lowest target
    exceeds them. A volume of more than ``search_slices`` slices is searched on that many evenly
    spaced slices, with the budget scaled to them (by their share of ``slice_bytes``, the other
    codec's per-slice sizes, where given; else by their number), then the whole volume is coded
    once at the target found, so its size is close to, not exactly within, the budget. Returns the whole
    volume's :class:`CodedVolume` (sizes, reconstruction; its ``setting.param`` is the target)."""
    v = np.asarray(vol)
    if v.ndim == 2:
        v = v[None]
    codec = JPEG2000()
    x, vmin, bits = codec_input(v)
    n = x.shape[0]
    idx = (np.arange(n) if n <= search_slices
           else np.unique(np.linspace(0, n - 1, search_slices).round().astype(int)))
    if slice_bytes is not None and len(slice_bytes) == n and sum(slice_bytes) > 0:
        budget = n_bytes * sum(int(slice_bytes[k]) for k in idx) / sum(slice_bytes)
    else:
        budget = n_bytes * len(idx) / n

    def size(level: float) -> int:
        s = Setting(f"level{level:.3f}", level)
        return sum(len(codec.encode(x[k], s, bits)) for k in idx)

    lo, hi = J2K_LEVEL_RANGE
    if size(hi) <= budget:  # the budget holds the best JPEG 2000 this search reaches
        best = hi
    elif size(lo) > budget:
        best = lo
    else:  # size(lo) <= budget < size(hi)
        best = lo
        for _ in range(max(0, iterations - 2)):
            mid = 0.5 * (lo + hi)
            m = size(mid)
            if m <= budget:
                lo = best = mid
                if m >= budget * (1 - tolerance):
                    break
            else:
                hi = mid
    return code_volume(codec, v, Setting(f"level{best:.3f}", best), vmin=vmin, bits=bits)


def sweep(codec: SliceCodec, vol: np.ndarray,
          settings: Iterable[Setting | str] | None = None) -> Iterable[CodedVolume]:
    """:func:`code_volume` over ``settings`` (default: the codec's sweep for the volume's B)."""
    if settings is None:
        v = np.asarray(vol)
        settings = codec.settings_for(bit_depth(int(v.min()), int(v.max())))
    for s in settings:
        yield code_volume(codec, vol, s)
