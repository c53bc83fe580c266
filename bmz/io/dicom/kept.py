"""The kept bytes of a DICOM series: each original file but its pixel data, byte for byte.

bmz codes a series' pixels as slices; everything else in its files — every data element, the
file meta, the preamble, private elements of any size, group lengths, padding, the bits above
Bits Stored — is kept here as the files' own bytes, so that decoding gives the files back:

* an original in a native (uncompressed) transfer syntax comes back **byte-identical**: its
  bytes with the pixel-data value cut out are kept, and decoding splices the decoded pixels back
  in (written in the original's bit layout and byte order; bits above Bits Stored, or a padding
  byte, come from a kept XOR residual and tail);
* an original in an encapsulated (compressed) transfer syntax comes back with **every element
  identical** and the pixel data native, in Explicit VR Little Endian: the kept bytes are
  spliced with a list of edits made (and checked) at encode time — the transfer syntax UID and
  the file meta group length, the Pixel Data element, the Extended Offset Table (only valid for
  encapsulated data), an icon image whose pixels are encapsulated, group lengths of changed
  groups, and, for a lossy transfer syntax without Lossy Image Compression (0028,2110), that
  attribute with the ratio and method the transfer syntax implies — each edit named in the
  notes. With ``keep_encapsulated`` the original encapsulated pixel bytes are kept too, and the
  file comes back byte-identical.

Build (encode): :func:`keep_file` per file (checks its own restore before returning), then
:func:`pack` → ``(descriptor, attachment)``: the JSON descriptor goes into the ``.bmz``
metadata (``source_meta.dicom.kept``), the bytes into the container's attachment. Restore
(decode): :class:`KeptStore` ``(descriptor, attachment)``, then :meth:`KeptStore.restore` per
file with its decoded frames.

Attachment layout: an xz stream (LZMA2, check None) of, per file in order: its kept bytes, its
XOR residual, its tail, its edit literals (lengths in the descriptor); then, uncompressed, the
encapsulated pixel bytes kept verbatim, file after file. The files of a series share most of
their bytes (the Siemens CSA headers of a series differ in a few bytes), and xz finds those
repeats across files.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .layout import EXPLICIT_LE, PIXEL_DATA, Element, Layout, LayoutError, elements, layout

try:
    import pydicom
except ImportError:  # pragma: no cover - pydicom is a hard dependency
    pydicom = None  # type: ignore[assignment]

#: descriptor version (``source_meta.dicom.kept.version``)
VERSION = 1

# lossy transfer syntaxes → the (0028,2114) method they imply
LOSSY_TS_METHOD = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",  # JPEG Extended
    "1.2.840.10008.1.2.4.81": "ISO_14495_1",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.91": "ISO_15444_1",  # JPEG 2000
    "1.2.840.10008.1.2.4.203": "ISO_15444_15",  # HTJ2K
    "1.2.840.10008.1.2.4.112": "ISO_18181_1",  # JPEG XL
}

_TS = 0x00020010
_ICON = 0x00880200
_EOT = (0x7FE00001, 0x7FE00002)  # Extended Offset Table and its lengths
_LOSSY, _RATIO, _METHOD = 0x00282110, 0x00282112, 0x00282114
_XZ_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 6}]


class KeepError(ValueError):
    """A file whose bytes cannot be kept so that they come back exactly (message says why)."""


@dataclass
class Edit:
    """Replace bytes ``start..end`` of the original (end exclusive) by ``literal``, followed by
    the native pixel bytes when ``pixels``."""

    start: int
    end: int
    literal: bytes
    pixels: bool = False
    why: str = ""


@dataclass
class KeptFile:
    """One file, kept: what :func:`pack` stores."""

    size: int
    sha256: str
    ts: str
    cut: tuple[int, int]  # the pixel-data value (native) / encapsulated fragments, in the original
    kept: bytes  # the original without bytes cut[0]..cut[1]
    pixels: dict[str, Any]  # dtype, frames, rows, cols, alloc, stored, signed, length
    residual: bytes = b""  # XOR of the original pixel bytes with those the values give ("" = 0)
    tail: bytes = b""  # pixel value bytes after the values' (a padding byte)
    encapsulated: bool = False
    edits: list[Edit] = field(default_factory=list)  # encapsulated: the native conversion
    verbatim: bytes = b""  # encapsulated pixel bytes kept verbatim (keep_encapsulated)
    native_sha256: str = ""  # encapsulated: SHA-256 of the native file a lossless decode gives
    group_lengths: bool = False  # the data set has group length elements (gggg,0000)
    high_bits: bool = False  # its pixel words' bits above Bits Stored are not the values'
    value_bits: bool = False  # its pixel words' low Bits Stored bits are not pydicom's values
    #: encapsulated: what its native version changes besides the pixel data and transfer syntax
    native_changes: list[str] = field(default_factory=list)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# pixel bytes from values
# --------------------------------------------------------------------------------------------


def pixel_dtype(alloc: int, signed: bool, little: bool) -> np.dtype:
    """The numpy dtype of native pixel words: BitsAllocated 8, 16 or 32."""
    if alloc not in (8, 16, 32):
        raise KeepError(f"BitsAllocated {alloc}: bmz keeps 8, 16 or 32 bits allocated")
    return np.dtype(f"{'<' if little else '>'}{'i' if signed else 'u'}{alloc // 8}")


def pixel_bytes(frames: np.ndarray, pix: dict[str, Any]) -> bytes:
    """The native pixel bytes of stored values ``frames`` ``(n, rows, cols)``: each value as a
    word of the file's BitsAllocated, signedness and byte order (a signed value in two's
    complement, sign-extended above Bits Stored), frames one after the other."""
    dt = np.dtype(pix["dtype"])
    a = np.asarray(frames)
    if a.shape != (pix["frames"], pix["rows"], pix["cols"]):
        raise ValueError(f"frames of shape {a.shape}, the file holds "
                         f"{(pix['frames'], pix['rows'], pix['cols'])}")
    return np.ascontiguousarray(a.astype(dt, copy=False)).tobytes()


def _xor(a: bytes, b: bytes) -> bytes:
    return (np.frombuffer(a, np.uint8) ^ np.frombuffer(b, np.uint8)).tobytes()


# --------------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------------


def keep_file(raw: bytes, name: str, frames: np.ndarray, attrs: dict[str, Any],
              encoding: tuple[bool, bool] | None, keep_encapsulated: bool = False) -> KeptFile:
    """Keep the file ``raw`` whose decoded stored values are ``frames`` ``(n, rows, cols)``.

    ``attrs``: its ``rows``, ``cols``, ``alloc`` (BitsAllocated), ``stored`` (BitsStored),
    ``signed`` (PixelRepresentation 1); ``encoding``: the data set's ``(implicit, little)`` as
    pydicom read it. The restore is checked here: byte-identical for a native original (and with
    ``keep_encapsulated``), every element identical and the same pixel values for the native
    version of an encapsulated one; a file that would not come back is refused
    (:class:`KeepError`, naming ``name`` and why)."""
    try:
        lay = layout(raw, encoding)
    except LayoutError as e:
        raise KeepError(f"{name}: cannot locate its data elements ({e}); bmz keeps DICOM files "
                        "byte for byte and cannot keep this one") from None
    px = lay.find(PIXEL_DATA)
    if px is None:
        raise KeepError(f"{name}: no top-level Pixel Data (7FE0,0010)")
    alloc, stored = attrs["alloc"], attrs["stored"]
    n, rows, cols = (int(v) for v in np.shape(frames))
    try:
        dtype = pixel_dtype(alloc, attrs["signed"], lay.little)
    except KeepError as e:
        raise KeepError(f"{name}: {e}") from None
    pix = {"dtype": dtype.str, "frames": n,
           "rows": rows, "cols": cols, "alloc": alloc, "stored": stored,
           "signed": bool(attrs["signed"]), "length": n * rows * cols * alloc // 8}
    group_lengths = _has_group_lengths(lay.elements)
    if px.fragments is None:
        kf = _keep_native(raw, name, frames, lay, px, pix)
    else:
        kf = _keep_encapsulated(raw, name, frames, lay, px, pix, keep_encapsulated)
    kf.group_lengths = group_lengths
    _check(raw, name, frames, kf)
    return kf


def _keep_native(raw: bytes, name: str, frames: np.ndarray, lay: Layout, px: Element,
                 pix: dict[str, Any]) -> KeptFile:
    s, e = px.value_start, px.end
    length = pix["length"]
    if e - s < length:
        raise KeepError(f"{name}: its Pixel Data holds {e - s} bytes, fewer than the "
                        f"{length} of {pix['frames']} frame(s) of {pix['rows']}x{pix['cols']} "
                        f"at {pix['alloc']} bits")
    original = raw[s:s + length]
    predicted = pixel_bytes(frames, pix)
    residual = b"" if original == predicted else _xor(original, predicted)
    high_bits = value_bits = False
    if residual:  # which bits differ: above Bits Stored (kept), or the values' own
        order = ">" if np.dtype(pix["dtype"]).byteorder == ">" else "<"
        words = np.frombuffer(residual, f"{order}u{pix['alloc'] // 8}").astype(np.uint64)
        low = np.uint64((1 << pix["stored"]) - 1)
        high_bits = bool(np.any(words & ~low))
        value_bits = bool(np.any(words & low))
    return KeptFile(size=len(raw), sha256=sha256(raw), ts=lay.transfer_syntax, cut=(s, e),
                    kept=raw[:s] + raw[e:], pixels=pix, residual=residual,
                    tail=raw[s + length:e], high_bits=high_bits, value_bits=value_bits)


def _element_bytes(tag: int, vr: str, value: bytes) -> bytes:
    """An explicit VR little endian element (short-length VRs only, as used here)."""
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode("ascii"), len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    b = text.encode("ascii")
    return b + pad if len(b) % 2 else b


def _ratio_text(ratio: float) -> str:
    text = f"{ratio:.2f}"
    return text if len(text) <= 16 else f"{ratio:.6e}"


def _keep_encapsulated(raw: bytes, name: str, frames: np.ndarray, lay: Layout, px: Element,
                       pix: dict[str, Any], keep_encapsulated: bool) -> KeptFile:
    """An encapsulated original: its native version's edits (and the verbatim bytes)."""
    if not lay.little or lay.implicit:
        raise KeepError(f"{name}: encapsulated pixel data in a data set that is not explicit VR "
                        "little endian")
    s, e = px.value_start, px.end
    length = pix["length"]
    pad = b"\x00" if length % 2 else b""
    vr = "OB" if pix["alloc"] == 8 else "OW"
    edits: list[Edit] = []
    notes: list[str] = []
    ts_elem = lay.find(_TS)
    if ts_elem is None:
        raise KeepError(f"{name}: encapsulated pixel data but no Transfer Syntax UID in the file "
                        "meta")
    new_ts = _element_bytes(_TS, "UI", _padded(EXPLICIT_LE, b"\x00"))
    edits.append(Edit(ts_elem.start, ts_elem.end, new_ts, why="transfer syntax"))
    meta_len = lay.find(0x00020000)
    if meta_len is not None and meta_len.end - meta_len.value_start == 4:
        old = struct.unpack_from("<I", raw, meta_len.value_start)[0]
        new = old + len(new_ts) - (ts_elem.end - ts_elem.start)
        edits.append(Edit(meta_len.value_start, meta_len.end, struct.pack("<I", new & 0xFFFFFFFF),
                          why="file meta group length"))
    top: list[Edit] = []
    for elem in lay.elements:
        if elem.tag in _EOT:
            top.append(Edit(elem.start, elem.end, b"", why="extended offset table"))
            notes.append(f"{elem.label()} Extended Offset Table omitted (it describes "
                         "encapsulated pixel data only)")
        elif elem.tag == _ICON and _has_encapsulated_pixels(elem):
            top.append(Edit(elem.start, elem.end, b"", why="icon"))
            notes.append("(0088,0200) Icon Image Sequence omitted (its pixels are encapsulated "
                         "too)")
    method = LOSSY_TS_METHOD.get(lay.transfer_syntax)
    encapsulated_bytes = sum(n for _, n in px.fragments or [])
    if method and lay.find(_LOSSY) is None:
        ratio = _ratio_text(length / max(1, encapsulated_bytes))
        add = [(_LOSSY, "CS", _padded("01", b" "))]
        if lay.find(_RATIO) is None:
            add.append((_RATIO, "DS", _padded(ratio, b" ")))
        if lay.find(_METHOD) is None:
            add.append((_METHOD, "CS", _padded(method, b" ")))
        for tag, evr, value in add:
            at = next((x.start for x in lay.elements if x.tag > tag), px.start)
            top.append(Edit(at, at, _element_bytes(tag, evr, value), why="lossy history"))
        notes.append("(0028,2110) Lossy Image Compression = 01"
                     + (f", (0028,2112) = {ratio}" if lay.find(_RATIO) is None else "")
                     + (f", (0028,2114) = {method}" if lay.find(_METHOD) is None else "")
                     + " added (the lossy history its transfer syntax held)")
    header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, vr.encode("ascii"), 0, length + len(pad))
    top.append(Edit(px.start, e, header, pixels=True, why="pixel data"))
    top.sort(key=lambda x: (x.start, x.end))
    edits += _group_length_edits(raw, lay, top) + top
    edits.sort(key=lambda x: (x.start, x.end, not x.pixels))
    return KeptFile(size=len(raw), sha256=sha256(raw), ts=lay.transfer_syntax, cut=(s, e),
                    kept=raw[:s] + raw[e:], pixels=pix, tail=pad, encapsulated=True,
                    edits=edits, verbatim=raw[s:e] if keep_encapsulated else b"",
                    native_changes=notes)


def _group_length_edits(raw: bytes, lay: Layout, edits: list[Edit]) -> list[Edit]:
    """Top-level group lengths (gggg,0000) updated for the bytes ``edits`` add or remove in
    their group (``Edit.why`` aside, an edit's group is that of the element it replaces, or of
    the element it inserts)."""
    delta: dict[int, int] = {}
    for ed in edits:
        if ed.start == ed.end:  # an insertion: the group of the inserted element
            group = struct.unpack_from("<H", ed.literal, 0)[0]
        else:
            group = next((x.group for x in lay.elements if x.start == ed.start), -1)
        added = len(ed.literal)
        if ed.pixels:  # the new header's length field: the native bytes that follow it
            added += struct.unpack_from("<I", ed.literal, 8)[0]
        delta[group] = delta.get(group, 0) + added - (ed.end - ed.start)
    out = []
    for gl in lay.elements:
        if gl.tag & 0xFFFF or gl.end - gl.value_start != 4 or not delta.get(gl.group):
            continue
        old = struct.unpack_from("<I", raw, gl.value_start)[0]
        out.append(Edit(gl.value_start, gl.end,
                        struct.pack("<I", (old + delta[gl.group]) & 0xFFFFFFFF),
                        why=f"group length ({gl.group:04X},0000)"))
    return out


def _has_encapsulated_pixels(elem: Element) -> bool:
    for item in elem.items or []:
        for e in item:
            if e.fragments is not None or _has_encapsulated_pixels(e):
                return True
    return False


def _has_group_lengths(elems: list[Element]) -> bool:
    for e in elems:
        if e.tag & 0xFFFF == 0 and e.group > 6:
            return True
        if any(_has_group_lengths(item) for item in e.items or []):
            return True
    return False


# --------------------------------------------------------------------------------------------
# restoring
# --------------------------------------------------------------------------------------------


def _splice(kf_kept: bytes, cut: tuple[int, int], edits: list[tuple[int, int, bytes, bool]],
            pixels: bytes) -> bytes:
    """The original's bytes (the kept ones, ``cut`` missing) with ``edits`` applied."""
    s, e = cut
    gap = e - s

    def span(a: int, b: int) -> bytes:  # original bytes a..b, never across the cut
        if a >= b:
            return b""
        if b <= s:
            return kf_kept[a:b]
        if a >= e:
            return kf_kept[a - gap:b - gap]
        raise ValueError(f"bytes {a}..{b} cross the cut pixel data {s}..{e}")

    parts, pos = [], 0
    for start, end, literal, with_pixels in edits:
        parts.append(span(pos, start))
        parts.append(literal)
        if with_pixels:
            parts.append(pixels)
        pos = end
    parts.append(span(pos, len(kf_kept) + gap))
    return b"".join(parts)


def restore_bytes(kf: KeptFile, frames: np.ndarray, lossless: bool) -> bytes:
    """File ``kf`` with the values ``frames``: its original bytes (native original, or kept
    verbatim, and ``lossless``) or its native version (see the module)."""
    return _restore(kf.kept, kf.cut, kf.pixels, kf.residual, kf.tail,
                    [(x.start, x.end, x.literal, x.pixels) for x in kf.edits],
                    kf.verbatim, kf.encapsulated, frames, lossless)


def _restore(kept: bytes, cut: tuple[int, int], pix: dict, residual: bytes, tail: bytes,
             edits: list, verbatim: bytes | None, encapsulated: bool, frames: np.ndarray,
             lossless: bool) -> bytes:
    if encapsulated and lossless and verbatim:
        return _splice(kept, cut, [(cut[0], cut[1], verbatim, False)], b"")
    values = pixel_bytes(frames, pix)
    if lossless and residual:
        values = _xor(values, residual)
    if not encapsulated:
        return _splice(kept, cut, [(cut[0], cut[1], b"", True)], values + tail)
    return _splice(kept, cut, edits, values + tail)


def _check(raw: bytes, name: str, frames: np.ndarray, kf: KeptFile) -> None:
    """Refuse ``kf`` unless its lossless restore is the original (or, encapsulated, its every
    element but those edited, with the same pixel values)."""
    back = restore_bytes(kf, frames, lossless=True)
    if not kf.encapsulated or kf.verbatim:
        if sha256(back) != kf.sha256:
            raise KeepError(f"{name}: its bytes do not come back identical from what bmz keeps "
                            "(refused rather than stored changed)")
        if not kf.encapsulated:
            return
        back = _restore(kf.kept, kf.cut, kf.pixels, b"", kf.tail,
                        [(x.start, x.end, x.literal, x.pixels) for x in kf.edits], None, True,
                        frames, True)
    kf.native_sha256 = sha256(back)
    problem = native_differences(raw, back, frames, kf)
    if problem:
        raise KeepError(f"{name}: its native version would differ from the original "
                        f"({problem}); refused rather than stored changed")


def native_differences(original: bytes, native: bytes, frames: np.ndarray | None,
                       kf: KeptFile | None = None) -> str:
    """What differs between an encapsulated ``original`` and its ``native`` version besides
    what the conversion must change ("" when nothing): the element dumps
    (:func:`bmz.io.dicom.layout.elements`) compared without the file meta group length and
    transfer syntax, group lengths, the 7FE0 group, an omitted icon and added lossy history;
    and, when ``frames`` is given, pydicom's pixel values of ``native``."""
    changed = {"(0002,0000)", "(0002,0010)"}
    added = {"(0028,2110)", "(0028,2112)", "(0028,2114)"}
    try:
        a = elements(original)
        b = elements(native)
    except LayoutError as e:
        return f"the native version cannot be walked: {e}"
    a_tags = {p for p, _, _ in a}

    def keep(dump, is_native: bool):
        out = []
        for path, vr, value in dump:
            top = path[:11]
            if top in changed or top.startswith("(7FE0,") or top.endswith(",0000)"):
                continue
            if top == "(0088,0200)" and not any(p.startswith("(0088,0200)") for p, _, _ in b):
                continue
            if is_native and top in added and top not in a_tags:
                continue
            out.append((path, vr, value))
        return out

    ka, kb = keep(a, False), keep(b, True)
    if ka != kb:
        for x, y in zip(ka, kb):
            if x != y:
                return f"element {x[0]} {x[1]} becomes {y[0]} {y[1]}"
        return f"{len(ka)} elements become {len(kb)}"
    if frames is not None:
        try:
            ds = pydicom.dcmread(io.BytesIO(native))
            arr = np.asarray(ds.pixel_array).reshape(np.shape(frames))
        except Exception as e:  # pydicom cannot read what we made: refuse
            return f"pydicom cannot read its pixels ({e})"
        if not np.array_equal(arr, frames):
            return "its pixel values change"
    return ""


# --------------------------------------------------------------------------------------------
# the store: descriptor (JSON) + attachment (bytes)
# --------------------------------------------------------------------------------------------


def pack(files: list[KeptFile]) -> tuple[dict[str, Any], bytes]:
    """The descriptor (JSON-serialisable) and attachment bytes of a series' kept files."""
    stream, verbatim, entries = [], [], []
    for kf in files:
        literals = [x.literal for x in kf.edits]
        stream += [kf.kept, kf.residual, kf.tail, *literals]
        verbatim.append(kf.verbatim)
        entry: dict[str, Any] = {
            "size": kf.size, "sha256": kf.sha256, "ts": kf.ts, "cut": list(kf.cut),
            "kept": len(kf.kept), "pixels": kf.pixels, "residual": len(kf.residual),
            "tail": len(kf.tail),
            "restore": "identical" if not kf.encapsulated or kf.verbatim else "elements",
        }
        if kf.encapsulated:
            entry["edits"] = [[x.start, x.end, len(x.literal), x.pixels] for x in kf.edits]
            entry["native_sha256"] = kf.native_sha256
            entry["verbatim"] = len(kf.verbatim)
            entry["encapsulated_bytes"] = kf.cut[1] - kf.cut[0]
        if kf.group_lengths:
            entry["group_lengths"] = True
        if kf.high_bits:
            entry["high_bits"] = True
        if kf.value_bits:
            entry["value_bits"] = True
        if kf.native_changes:
            entry["native_changes"] = kf.native_changes
        entries.append(entry)
    raw = b"".join(stream)
    packed = lzma.compress(raw, format=lzma.FORMAT_XZ, check=lzma.CHECK_NONE,
                           filters=_XZ_FILTERS)
    descriptor = {"version": VERSION, "compression": "xz", "packed": len(packed),
                  "unpacked": len(raw), "verbatim": sum(len(v) for v in verbatim),
                  "files": entries}
    return descriptor, packed + b"".join(verbatim)


class KeptStore:
    """The kept files of a series, from the descriptor and attachment :func:`pack` made.
    Malformed input raises ``ValueError`` (the caller names the file)."""

    def __init__(self, descriptor: Any, attachment: bytes):
        if not isinstance(descriptor, dict) or descriptor.get("version") != VERSION:
            raise ValueError(f"DICOM kept bytes: descriptor version "
                             f"{descriptor.get('version') if isinstance(descriptor, dict) else '?'}"
                             f" is not {VERSION} (a newer bmz wrote this file?)")
        files = descriptor.get("files")
        n_packed, n_raw = descriptor.get("packed"), descriptor.get("unpacked")
        n_verb = descriptor.get("verbatim")
        if not (isinstance(files, list) and all(isinstance(v, int) and v >= 0
                                                for v in (n_packed, n_raw, n_verb))):
            raise ValueError("DICOM kept bytes: malformed descriptor")
        if n_packed + n_verb != len(attachment):
            raise ValueError(f"DICOM kept bytes: the attachment holds {len(attachment)} bytes, "
                             f"the descriptor says {n_packed + n_verb}")
        try:
            d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=1 << 28)
            raw = d.decompress(attachment[:n_packed], max_length=n_raw + 1)
        except lzma.LZMAError as e:
            raise ValueError(f"DICOM kept bytes: not a valid xz stream ({e})") from None
        if len(raw) != n_raw or not d.eof:
            raise ValueError("DICOM kept bytes: the xz stream does not hold what the descriptor "
                             "says")
        self.files = files
        self._parts: list[dict[str, Any]] = []
        pos, vpos = 0, n_packed
        for i, f in enumerate(files):
            try:
                part = self._part(f, raw, pos, attachment, vpos)
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"DICOM kept bytes: file {i}: malformed entry ({e})") from None
            pos, vpos = part.pop("_pos"), part.pop("_vpos")
            self._parts.append(part)
        if pos != n_raw:
            raise ValueError("DICOM kept bytes: the entries do not cover the stream")

    @staticmethod
    def _part(f: dict, raw: bytes, pos: int, att: bytes, vpos: int) -> dict[str, Any]:
        def take(n: Any) -> bytes:
            nonlocal pos
            if not isinstance(n, int) or n < 0 or pos + n > len(raw):
                raise ValueError("lengths past the stream")
            out = raw[pos:pos + n]
            pos += n
            return out

        cut = f["cut"]
        if not (isinstance(cut, list) and len(cut) == 2 and all(isinstance(v, int) for v in cut)
                and 0 <= cut[0] <= cut[1]):
            raise ValueError("bad cut")
        kept, residual, tail = take(f["kept"]), take(f["residual"]), take(f["tail"])
        edits = []
        for start, end, n, with_pixels in f.get("edits", []):
            edits.append((int(start), int(end), take(n), bool(with_pixels)))
        n_verb = int(f.get("verbatim", 0))
        verbatim = att[vpos:vpos + n_verb]
        pix = f["pixels"]
        pixel_dtype(int(pix["alloc"]), bool(pix["signed"]), np.dtype(pix["dtype"]).byteorder != ">")
        return {"kept": kept, "cut": (cut[0], cut[1]), "pix": pix, "residual": residual,
                "tail": tail, "edits": edits, "verbatim": verbatim,
                "encapsulated": "edits" in f, "_pos": pos, "_vpos": vpos + n_verb}

    def __len__(self) -> int:
        return len(self.files)

    def pixels(self, i: int) -> dict[str, Any]:
        """File ``i``'s pixel layout: dtype, frames, rows, cols, alloc, stored, signed."""
        return self._parts[i]["pix"]

    def restore(self, i: int, frames: np.ndarray, lossless: bool) -> bytes:
        """File ``i`` with the stored values ``frames``: lossless, the original file (or the
        native version of an encapsulated one: see the module); else the file with those
        values as native pixels (bits above Bits Stored as the values give them)."""
        p = self._parts[i]
        return _restore(p["kept"], p["cut"], p["pix"], p["residual"], p["tail"], p["edits"],
                        p["verbatim"], p["encapsulated"], frames, lossless)

    def expected_sha256(self, i: int) -> str:
        """SHA-256 of file ``i``'s lossless restore."""
        f = self.files[i]
        return f["sha256"] if f.get("restore") == "identical" else f.get("native_sha256", "")
