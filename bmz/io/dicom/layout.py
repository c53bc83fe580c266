"""Where each data element of a DICOM file lies, byte for byte (no values are interpreted).

:func:`layout` walks a DICOM file's bytes — preamble, file meta information, data set, nested
sequences and items — and gives, for every element, its tag, VR (as written; ``None`` in implicit
VR), and the offsets of its header, value and end. :func:`elements` flattens that into the
element dump the tests and the encoder's checks compare: ``(path, VR, value bytes)`` in file
order, sequences recursed. Nothing here decodes a value, so nothing can be re-rendered.

It exists for :mod:`bmz.io.dicom.kept`, which cuts the pixel data out of a file and must know
exactly where it and its neighbours are. pydicom parses the same files for their values; this
module only locates bytes, with pydicom's tolerance where real files need it (an explicit-VR
file whose element has no valid VR is read as implicit there, as pydicom does).

Encodings: explicit VR little endian (the file meta, and every compressed transfer syntax),
implicit VR little endian, explicit VR big endian. An undefined-length element is a sequence
(SQ, UN — whose content is implicit VR little endian, PS3.5 6.2.2 —, or any element of an
implicit-VR data set) or, for Pixel Data, encapsulated fragments (PS3.5 A.4).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR

PIXEL_DATA = 0x7FE00010
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"

# explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2)
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
             b"UT", b"UV"}


class LayoutError(ValueError):
    """The bytes are not a DICOM file this module can walk (the message says where)."""


@dataclass
class Element:
    """One data element: ``start`` (its tag's offset), ``value_start``, ``end`` (one past its
    value, delimiter included for an undefined length), ``vr`` (the two letters written, or
    ``None`` in implicit VR) and, for a sequence, its ``items`` (each a list of elements; an
    item's own ``(start, end)`` is in ``item_spans``)."""

    tag: int
    vr: str | None
    start: int
    value_start: int
    end: int
    undefined: bool = False
    items: list[list["Element"]] | None = None
    item_spans: list[tuple[int, int]] = field(default_factory=list)
    #: encapsulated pixel data: the (offset, length) of each fragment's bytes, the offset table
    #: (the first item) included
    fragments: list[tuple[int, int]] | None = None

    @property
    def group(self) -> int:
        return self.tag >> 16

    def label(self) -> str:
        return f"({self.tag >> 16:04X},{self.tag & 0xFFFF:04X})"


@dataclass
class Layout:
    """A whole file: ``preamble`` (whether it has the 128 bytes + ``DICM``), the file meta
    elements (``meta``), the transfer syntax they name (``""`` when none), the data set's encoding
    and its top-level ``elements``; ``dataset_start`` is where the data set begins."""

    preamble: bool
    meta: list[Element]
    transfer_syntax: str
    implicit: bool
    little: bool
    dataset_start: int
    elements: list[Element]

    def find(self, tag: int) -> Element | None:
        """The top-level element ``tag`` of the data set (or of the file meta for group 2)."""
        for e in (self.meta if tag >> 16 == 2 else self.elements):
            if e.tag == tag:
                return e
        return None


class _Reader:
    def __init__(self, buf: bytes, little: bool):
        self.buf = buf
        self.u16 = struct.Struct("<H" if little else ">H").unpack_from
        self.u32 = struct.Struct("<I" if little else ">I").unpack_from
        self.little = little

    def need(self, pos: int, n: int, limit: int, what: str) -> None:
        if pos + n > limit:
            raise LayoutError(f"{what} at byte {pos} runs past the end ({limit})")

    def tag(self, pos: int) -> int:
        return (self.u16(self.buf, pos)[0] << 16) | self.u16(self.buf, pos + 2)[0]


def _vr_letters(b: bytes) -> bool:
    return len(b) == 2 and 65 <= b[0] <= 90 and 65 <= b[1] <= 90


def _parse(r: _Reader, pos: int, limit: int, implicit: bool, in_item: bool,
           depth: int) -> tuple[list[Element], int]:
    """Elements from ``pos`` up to ``limit`` (a defined length) or, ``in_item`` with an
    undefined length, up to the item delimiter; returns them and the position after."""
    if depth > 64:
        raise LayoutError(f"sequences nested more than 64 deep at byte {pos}")
    out: list[Element] = []
    buf = r.buf
    while pos < limit:
        r.need(pos, 8, limit, "element header")
        tag = r.tag(pos)
        if tag == ITEM_END:  # end of an undefined-length item
            if not in_item:
                raise LayoutError(f"item delimiter outside an item at byte {pos}")
            return out, pos + 8
        start = pos
        vr: str | None = None
        vr_bytes = buf[pos + 4:pos + 6]
        if not implicit and _vr_letters(vr_bytes):
            vr = vr_bytes.decode("ascii")
            if vr_bytes in _LONG_VRS:
                r.need(pos, 12, limit, "element header")
                length = r.u32(buf, pos + 8)[0]
                pos += 12
            else:
                length = r.u16(buf, pos + 6)[0]
                pos += 8
        else:  # implicit VR (or pydicom's "implicit VR switch" of a bad explicit VR)
            length = r.u32(buf, pos + 4)[0]
            pos += 8
        elem = Element(tag, vr, start, pos, pos)
        if length == UNDEFINED:
            elem.undefined = True
            if tag == PIXEL_DATA:  # encapsulated (at the top level or in an icon image)
                elem.fragments, pos = _fragments(r, pos, limit)
            else:
                nested_implicit = implicit or vr == "UN"
                elem.items, elem.item_spans, pos = _items(r, pos, limit, None, nested_implicit,
                                                          depth)
        else:
            r.need(pos, length, limit, f"value of {elem.label()}")
            end = pos + length
            if vr == "SQ" or (vr is None and _is_sequence(tag)):
                try:
                    elem.items, elem.item_spans, _ = _items(r, pos, end, end, implicit, depth)
                except LayoutError:
                    if vr == "SQ":
                        raise
                    elem.items, elem.item_spans = None, []  # not a sequence after all: raw
            pos = end
        elem.end = pos
        out.append(elem)
    if in_item:
        raise LayoutError("an undefined-length item has no delimiter")
    return out, pos


def _items(r: _Reader, pos: int, limit: int, end: int | None, implicit: bool,
           depth: int) -> tuple[list[list[Element]], list[tuple[int, int]], int]:
    """The items of a sequence value starting at ``pos``: up to ``end`` (defined length) or to
    the sequence delimiter."""
    items: list[list[Element]] = []
    spans: list[tuple[int, int]] = []
    stop = end if end is not None else limit
    while True:
        if end is not None and pos >= end:
            return items, spans, pos
        r.need(pos, 8, stop, "sequence item")
        tag = r.tag(pos)
        length = r.u32(r.buf, pos + 4)[0]
        if tag == SEQUENCE_END:
            if end is not None:
                raise LayoutError(f"sequence delimiter in a defined-length sequence at byte {pos}")
            return items, spans, pos + 8
        if tag != ITEM:
            raise LayoutError(f"expected a sequence item at byte {pos}, found "
                              f"({tag >> 16:04X},{tag & 0xFFFF:04X})")
        item_start = pos
        pos += 8
        if length == UNDEFINED:
            elems, pos = _parse(r, pos, stop, implicit, True, depth + 1)
        else:
            r.need(pos, length, stop, "sequence item")
            elems, _ = _parse(r, pos, pos + length, implicit, False, depth + 1)
            pos += length
        items.append(elems)
        spans.append((item_start, pos))


def _fragments(r: _Reader, pos: int, limit: int) -> tuple[list[tuple[int, int]], int]:
    """Encapsulated pixel data: the fragments (offset table first) up to the sequence
    delimiter (always little endian)."""
    frags = []
    le = _Reader(r.buf, True)
    while True:
        r.need(pos, 8, limit, "pixel data fragment")
        tag = le.tag(pos)
        length = le.u32(r.buf, pos + 4)[0]
        if tag == SEQUENCE_END:
            return frags, pos + 8
        if tag != ITEM or length == UNDEFINED:
            raise LayoutError(f"expected a pixel data fragment at byte {pos}")
        r.need(pos + 8, length, limit, "pixel data fragment")
        frags.append((pos + 8, length))
        pos += 8 + length


def _is_sequence(tag: int) -> bool:
    """Whether the data dictionary says ``tag`` is a sequence (for implicit VR)."""
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return False


def _guess_encoding(buf: bytes, pos: int) -> tuple[bool, bool]:
    """(implicit, little) of a data set without a transfer syntax, from its first element."""
    if pos + 8 > len(buf):
        return True, True
    little = struct.unpack_from("<H", buf, pos)[0] <= struct.unpack_from(">H", buf, pos)[0]
    return not _vr_letters(buf[pos + 4:pos + 6]), little


def layout(buf: bytes, encoding: tuple[bool, bool] | None = None) -> Layout:
    """Walk the DICOM file ``buf``. ``encoding`` = ``(implicit, little)`` of the data set when
    known (pydicom's ``ds.original_encoding``); otherwise it follows the file meta's transfer
    syntax, or the first element when there is none. A deflated data set cannot be walked
    (:class:`LayoutError`). Raises :class:`LayoutError` on bytes that are not DICOM."""
    preamble = len(buf) >= 132 and buf[128:132] == b"DICM"
    pos = 132 if preamble else 0
    le = _Reader(buf, True)
    meta: list[Element] = []
    # the file meta: explicit VR little endian elements of group 0002
    while pos + 8 <= len(buf) and le.u16(buf, pos)[0] == 0x0002:
        implicit_meta = not _vr_letters(buf[pos + 4:pos + 6])
        one, = _parse(le, pos, pos + _element_size(le, pos, implicit_meta), implicit_meta,
                      False, 0)[0]
        meta.append(one)
        pos = one.end
    ts = ""
    for e in meta:
        if e.tag == 0x00020010:
            ts = buf[e.value_start:e.end].rstrip(b"\x00 ").decode("ascii", "replace")
    if ts == DEFLATED_LE:
        raise LayoutError("the data set is deflated (Deflated Explicit VR Little Endian)")
    if encoding is None:
        if ts == IMPLICIT_LE:
            encoding = (True, True)
        elif ts == EXPLICIT_BE:
            encoding = (False, False)
        elif ts:
            encoding = (False, True)
        else:
            encoding = _guess_encoding(buf, pos)
    implicit, little = encoding
    r = _Reader(buf, little)
    elements, _ = _parse(r, pos, len(buf), implicit, False, 0)
    return Layout(preamble, meta, ts, implicit, little, pos, elements)


def _element_size(r: _Reader, pos: int, implicit: bool) -> int:
    r.need(pos, 8, len(r.buf), "file meta element")
    if implicit:
        n, head = r.u32(r.buf, pos + 4)[0], 8
    elif r.buf[pos + 4:pos + 6] in _LONG_VRS:
        r.need(pos, 12, len(r.buf), "file meta element")
        n, head = r.u32(r.buf, pos + 8)[0], 12
    else:
        n, head = r.u16(r.buf, pos + 6)[0], 8
    if n == UNDEFINED:
        raise LayoutError(f"undefined length in the file meta at byte {pos}")
    r.need(pos + head, n, len(r.buf), "file meta element")
    return head + n


def elements(buf: bytes, lay: Layout | None = None) -> list[tuple[str, str, bytes | None]]:
    """The element dump of a file: ``(path, VR, value bytes)`` for every element in file order,
    the file meta first; a sequence gives ``(path, VR, None)`` followed by its items' elements,
    whose paths are ``"(GGGG,EEEE)[i](gggg,eeee)"``. Encapsulated pixel data give their
    fragments' bytes joined. Implicit-VR elements have VR ``""``."""
    lay = lay or layout(buf)
    out: list[tuple[str, str, bytes | None]] = []

    def walk(elems: list[Element], prefix: str) -> None:
        for e in elems:
            path = prefix + e.label()
            if e.items is not None:
                out.append((path, e.vr or "", None))
                for i, item in enumerate(e.items):
                    walk(item, f"{path}[{i}]")
            elif e.fragments is not None:
                out.append((path, e.vr or "", b"".join(buf[o:o + n] for o, n in e.fragments)))
            else:
                out.append((path, e.vr or "", bytes(buf[e.value_start:e.end])))

    walk(lay.meta, "")
    walk(lay.elements, "")
    return out
