"""The ``.bmz`` container, format version 1.

A ``.bmz`` file holds one image volume as independent per-slice *chunks* (opaque bytes made by the
codec) plus a JSON metadata object. Every block carries a CRC-32, and an index of chunk offsets
lets a reader fetch one slice without touching the others. ``docs/FORMAT.md`` is the normative
description; this module implements it.

Byte layout (all integers little-endian; ``M`` = metadata length, ``N`` = slice count)::

    offset        size   field
    0             8      signature  89 42 4D 5A 0D 0A 1A 0A   ("\\x89BMZ\\r\\n\\x1a\\n")
    8             2      u16 major version (= 1)
    10            2      u16 minor version (= 1)
    12            4      u32 flags (= 1: packed index)
    16            8      u64 M, length of the compressed metadata
    24            4      u32 N, number of slices
    28            4      u32 CRC-32 of bytes 8..27
    32            M      metadata: xz stream (LZMA2) of UTF-8 JSON object
    32+M          4      u32 CRC-32 of the M metadata bytes
    36+M          8*N    slice index: N x (u32 length, u32 CRC-32 of the chunk)
    36+M+8N       4      u32 CRC-32 of the 8*N index bytes
    40+M+8N       ...    chunks, in slice order, contiguous: chunk k starts after chunks 0..k-1

Version 1.0 files (flags 0) have a 16-byte index entry (u64 offset, u32 length, u32 CRC-32) with
offsets counted from the first byte of the signature; this module reads both. Slices are
numbered from 0.

Version 1.2 adds an optional *attachment*: one block of bytes right after the last chunk, whose
length and CRC-32 the metadata key ``"attachment"`` records (``{"length": n, "crc32": c}``). It
holds what a source needs besides the slices (bmz keeps the non-pixel bytes of DICOM files there:
:mod:`bmz.io.dicom.kept`). A file with an attachment is written as version 1.2, one without as
1.1 (the same bytes as before); 1.1 readers ignore the attachment (bytes after the last chunk).

Public API: :data:`MAGIC`, :data:`FORMAT_VERSION`, :func:`pack`, :class:`BmzWriter`,
:class:`BmzReader`, :func:`is_bmz`.
"""

from __future__ import annotations

import io
import json
import lzma
import os
import struct
import zlib
from contextlib import AbstractContextManager
from types import TracebackType
from typing import IO, Any, BinaryIO, Sequence, Union

from .._fileutil import atomic_output
from ..errors import (
    BadMagicError,
    ChecksumError,
    FormatError,
    TruncatedError,
    UnsupportedVersionError,
)

__all__ = ["MAGIC", "FORMAT_VERSION", "pack", "BmzWriter", "BmzReader", "is_bmz"]

#: The 8-byte signature every ``.bmz`` file starts with (PNG-style).
MAGIC: bytes = b"\x89BMZ\r\n\x1a\n"

#: The format version this module writes for a file without an attachment: (major, minor). It
#: reads every ``1.x``.
FORMAT_VERSION: tuple[int, int] = (1, 1)
#: The version of a file with an attachment (the block after the last chunk, since 1.2).
ATTACHMENT_VERSION: tuple[int, int] = (1, 2)
#: Every version with a layout of its own that this module reads: 1.0 (16-byte index entries,
#: written before 1.1), :data:`FORMAT_VERSION` and :data:`ATTACHMENT_VERSION`.
KNOWN_VERSIONS: tuple[tuple[int, int], ...] = ((1, 0), FORMAT_VERSION, ATTACHMENT_VERSION)
#: The metadata key, reserved by the container, that records the attachment's length and CRC-32.
ATTACHMENT_KEY = "attachment"

# --- layout constants -------------------------------------------------------------------------

_VERSION = struct.Struct("<HH")  # major, minor (stable across all major versions, offset 8)
_HEADER_FIELDS = struct.Struct("<HHIQI")  # major, minor, flags, metadata length, slice count
_U32 = struct.Struct("<I")
_ENTRY = struct.Struct("<QII")  # chunk offset, chunk length, chunk CRC-32 (version 1.0 index)
_PACKED_ENTRY = struct.Struct("<II")  # chunk length, chunk CRC-32 (packed index, flag bit 0)

SIGNATURE_SIZE = len(MAGIC)  # 8
FIXED_HEADER_SIZE = _HEADER_FIELDS.size + _U32.size  # 24: fields + CRC
PREAMBLE_SIZE = SIGNATURE_SIZE + FIXED_HEADER_SIZE  # 32: where the metadata starts
INDEX_ENTRY_SIZE = _ENTRY.size  # 16 (version 1.0 index)
PACKED_INDEX_ENTRY_SIZE = _PACKED_ENTRY.size  # 8
CRC_SIZE = _U32.size  # 4

#: Flag bits 0-15 are *critical*: a reader that does not know a set critical bit must refuse the
#: file. Bits 16-31 are *ancillary*: a reader ignores those it does not know.
CRITICAL_FLAGS_MASK = 0x0000FFFF
#: Flag bit 0 (critical, version 1.1): the index holds (length, CRC-32) per chunk and the chunks
#: lie contiguously from the end of the index in slice order (8 bytes per slice instead of 16).
FLAG_PACKED_INDEX = 0x00000001
KNOWN_FLAGS = FLAG_PACKED_INDEX

#: Largest metadata block accepted, compressed or decompressed (a decompression-bomb guard).
MAX_METADATA_SIZE = 64 * 1024 * 1024

#: Largest LZMA2 dictionary a metadata xz stream may declare (a memory guard: liblzma allocates
#: the whole dictionary before decoding). No metadata needs more: it is at most 64 MiB itself.
MAX_DICT_SIZE = 64 * 1024 * 1024

# liblzma's memory limit for decoding the metadata: the largest dictionary plus the decoder's own
# state (about 30 KiB for LZMA2, a few KiB for the xz stream and block decoders).
_XZ_MEMLIMIT = MAX_DICT_SIZE + 1024 * 1024

# integrity check types of the xz format (a reserved ID is refused): None, CRC32, CRC64, SHA-256
_XZ_CHECKS = frozenset({lzma.CHECK_NONE, lzma.CHECK_CRC32, lzma.CHECK_CRC64, lzma.CHECK_SHA256})

# smallest LZMA2 dictionary (liblzma's LZMA_DICT_SIZE_MIN)
_MIN_DICT_SIZE = 4096

_MAX_U32 = 0xFFFFFFFF

Source = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]


def _crc32(data: bytes | memoryview) -> int:
    """zlib CRC-32 (ISO-HDLC: reflected polynomial 0xEDB88320, init and final xor 0xFFFFFFFF)."""
    return zlib.crc32(data) & _MAX_U32


def _prefix(name: str | None) -> str:
    return f"{name}: " if name else ""


def _slice_label(k: int, n: int) -> str:
    return f"slice {k} of {n}"


# --- metadata ---------------------------------------------------------------------------------


def _compress_meta(raw: bytes) -> bytes:
    """The metadata xz stream of the JSON bytes ``raw``: one xz stream, integrity check None (the
    block has its own CRC-32), one LZMA2 filter at preset 9 | extreme with a dictionary just
    large enough for ``raw`` (so the decoder allocates no more than the metadata's size)."""
    dict_size = max(_MIN_DICT_SIZE, len(raw))  # <= MAX_METADATA_SIZE == MAX_DICT_SIZE
    filters = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": dict_size}]
    return lzma.compress(raw, format=lzma.FORMAT_XZ, check=lzma.CHECK_NONE, filters=filters)


def _encode_meta(meta: dict) -> bytes:
    """Serialise ``meta`` to the compressed metadata block (deterministic: sorted keys, compact
    separators, UTF-8, xz with LZMA2 preset 9e, see :func:`_compress_meta`). Raises
    ``TypeError``/``ValueError`` when ``meta`` is not a JSON object (dict with str keys, finite
    numbers only)."""
    if not isinstance(meta, dict):
        raise TypeError(f"bmz metadata must be a dict, got {type(meta).__name__}")
    try:
        text = json.dumps(
            meta, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        )
        raw = text.encode("utf-8")
    except (TypeError, ValueError) as e:  # UnicodeEncodeError is a ValueError (lone surrogates)
        raise type(e)(f"bmz metadata cannot be stored as JSON: {e}") from e
    if len(raw) > MAX_METADATA_SIZE:
        raise ValueError(
            f"bmz metadata is {len(raw)} bytes as JSON; at most {MAX_METADATA_SIZE} are allowed"
        )
    return _compress_meta(raw)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _decode_meta(blob: bytes, where: str) -> dict:
    """Decompress and parse a metadata block whose CRC has already been checked. Every failure
    is a :class:`FormatError` naming ``where`` (file name and block)."""
    # One xz stream, decoded with a memory limit (a declared dictionary over MAX_DICT_SIZE is
    # refused before it is allocated) and an output cap (a bomb is never inflated past
    # MAX_METADATA_SIZE + 1 bytes). Stream padding or a second stream are stray bytes.
    try:
        d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=_XZ_MEMLIMIT)
        raw = d.decompress(blob, max_length=MAX_METADATA_SIZE + 1)
    except lzma.LZMAError as e:
        if "memory" in str(e).lower():  # liblzma's LZMA_MEMLIMIT_ERROR
            raise FormatError(
                f"{where}: xz stream needs more than {_XZ_MEMLIMIT} bytes of memory to decode "
                f"(LZMA2 dictionary over {MAX_DICT_SIZE} bytes); refusing it"
            ) from None
        raise FormatError(f"{where}: not a valid xz stream ({e})") from None
    if len(raw) > MAX_METADATA_SIZE:
        raise FormatError(
            f"{where}: decompresses to more than {MAX_METADATA_SIZE} bytes; refusing it"
        )
    if not d.eof:
        raise FormatError(f"{where}: xz stream is incomplete")
    if d.unused_data:
        raise FormatError(f"{where}: {len(d.unused_data)} stray bytes after the xz stream")
    if d.check not in _XZ_CHECKS:
        raise FormatError(f"{where}: xz stream uses the reserved integrity check ID {d.check}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{where}: not valid UTF-8 ({e})") from None
    try:
        meta = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise FormatError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise FormatError(f"{where}: must be a JSON object, found {type(meta).__name__}")
    return meta


# --- writing ----------------------------------------------------------------------------------


def _header_bytes(meta_len: int, n_slices: int, flags: int = 0,
                  version: tuple[int, int] = FORMAT_VERSION) -> bytes:
    major, minor = version
    fields = _HEADER_FIELDS.pack(major, minor, flags, meta_len, n_slices)
    return MAGIC + fields + _U32.pack(_crc32(fields))


def _is_pathlike(obj: object) -> bool:
    return isinstance(obj, (str, os.PathLike))


class BmzWriter(AbstractContextManager):
    """Streaming writer of one ``.bmz`` file.

    The signature, fixed header and metadata are written at once and room is reserved for the
    slice index; chunks are then appended one at a time with :meth:`add`, and :meth:`close` seeks
    back to fill in the index. Exactly ``n_slices`` chunks must be added.

    ``dst`` is a path or a writable binary file object:

    * a **path** is written atomically (through :func:`bmz._fileutil.atomic_output`): the file
      appears complete on :meth:`close` or not at all; :meth:`abort`, a wrong chunk count, or an
      exception inside a ``with`` block leave neither the file nor a temporary file behind.
      ``force=False`` refuses to replace an existing file (:class:`~bmz.errors.OutputError`).
    * a **file object** receives the container starting at its current position (index offsets
      stay relative to that position). If it is seekable the index is filled in by seeking back;
      if not, chunks are held in memory and everything is written on :meth:`close`. It must not
      be opened in append mode (``"ab"``), where seeking back has no effect on writes. The
      caller owns the file object: it is not closed, and on :meth:`abort` whatever was already
      written stays in it.

    ``attachment`` (bytes, optional) is written after the last chunk, its length and CRC-32 in
    the metadata key :data:`ATTACHMENT_KEY` (added here; ``meta`` must not hold it); the file is
    then version 1.2 (:data:`ATTACHMENT_VERSION`), else 1.1.

    Misuse (wrong chunk count, adding after close, a non-bytes chunk, a chunk of 4 GiB or more,
    metadata that is not a JSON object) raises ``ValueError`` or ``TypeError``.
    """

    def __init__(self, dst: str | os.PathLike | BinaryIO, meta: dict, n_slices: int,
                 force: bool = True, attachment: bytes | None = None):
        if isinstance(n_slices, bool) or not isinstance(n_slices, int):
            raise TypeError(f"n_slices must be an int, got {type(n_slices).__name__}")
        if not 0 <= n_slices <= _MAX_U32:
            raise ValueError(f"n_slices must be between 0 and {_MAX_U32}, got {n_slices}")
        version = FORMAT_VERSION
        if isinstance(meta, dict) and ATTACHMENT_KEY in meta:
            raise ValueError(f"metadata key {ATTACHMENT_KEY!r} is reserved for the container "
                             "(pass attachment= instead)")
        if attachment is not None:
            if not isinstance(attachment, (bytes, bytearray, memoryview)):
                raise TypeError(f"attachment must be bytes, got {type(attachment).__name__}")
            attachment = bytes(attachment)
            meta = {**meta, ATTACHMENT_KEY: {"length": len(attachment),
                                             "crc32": _crc32(attachment)}}
            version = ATTACHMENT_VERSION
        self._attachment = attachment
        meta_blob = _encode_meta(meta)  # validate before creating any file

        self.n_slices = n_slices
        self._count = 0
        self._done = False
        self._cm: Any = None
        fname = getattr(dst, "name", None)
        self._name = str(dst) if _is_pathlike(dst) else (fname if isinstance(fname, str) else None)
        self._entries: list[tuple[int, int, int]] = []
        self._pending: list[bytes] | None = None  # chunks held for a non-seekable file object

        if _is_pathlike(dst):
            cm = atomic_output(dst, force=force)
            self._f: BinaryIO = cm.__enter__()  # OutputError here: nothing was created
            self._cm = cm
            self._base = 0
            self._seekable = True
        else:
            if not hasattr(dst, "write"):
                raise TypeError(
                    f"dst must be a path or a writable binary file object, got {type(dst).__name__}"
                )
            self._f = dst
            self._seekable = _seekable(dst)
            self._base = dst.tell() if self._seekable else 0

        head = (_header_bytes(len(meta_blob), n_slices, FLAG_PACKED_INDEX, version) + meta_blob
                + _U32.pack(_crc32(meta_blob)))
        self._index_pos = len(head)  # relative to the container start
        self._data_start = self._index_pos + PACKED_INDEX_ENTRY_SIZE * n_slices + CRC_SIZE
        self._pos = self._data_start  # where the next chunk goes, relative to the container start
        try:
            if self._seekable:
                self._f.write(head)
                _write_zeros(self._f, self._data_start - self._index_pos)
            else:
                self._head = head
                self._pending = []
        except BaseException:
            self.abort()
            raise

    @property
    def count(self) -> int:
        """Number of chunks added so far."""
        return self._count

    def add(self, chunk: bytes) -> None:
        """Append the chunk of the next slice (bytes-like, shorter than 4 GiB)."""
        if self._done:
            raise ValueError("BmzWriter is closed; cannot add a chunk")
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise TypeError(f"a chunk must be bytes, got {type(chunk).__name__}")
        if self._count >= self.n_slices:
            raise ValueError(
                f"{_prefix(self._name)}too many chunks: the file was declared with "
                f"{self.n_slices} slices"
            )
        data = bytes(chunk)
        if len(data) > _MAX_U32:
            raise ValueError(
                f"{_prefix(self._name)}{_slice_label(self._count, self.n_slices)}: "
                f"chunk of {len(data)} bytes is too large (at most {_MAX_U32})"
            )
        self._entries.append((self._pos, len(data), _crc32(data)))
        try:
            if self._pending is not None:
                self._pending.append(data)
            else:
                self._f.write(data)
        except BaseException:
            self.abort()
            raise
        self._pos += len(data)
        self._count += 1

    def _index_bytes(self) -> bytes:
        body = b"".join(_PACKED_ENTRY.pack(length, crc) for _, length, crc in self._entries)
        return body + _U32.pack(_crc32(body))

    def close(self) -> None:
        """Finish the file: write the index (and, for a path, move the file into place).

        Raises ``ValueError`` — after discarding the output — when fewer chunks than declared were
        added. Calling it again after a successful close does nothing."""
        if self._done:
            return
        if self._count != self.n_slices:
            self.abort()
            raise ValueError(
                f"{_prefix(self._name)}only {self._count} chunks were added but the file was "
                f"declared with {self.n_slices} slices; output discarded"
            )
        try:
            index = self._index_bytes()
            if self._pending is not None:
                self._f.write(self._head)
                self._f.write(index)
                for data in self._pending:
                    self._f.write(data)
                self._pending = None
                if self._attachment is not None:
                    self._f.write(self._attachment)
            else:
                if self._attachment is not None:  # right after the last chunk
                    self._f.write(self._attachment)
                end = self._f.tell()
                self._f.seek(self._base + self._index_pos)
                self._f.write(index)
                self._f.seek(end)
            self._f.flush()
        except BaseException:
            self.abort()
            raise
        self._done = True
        if self._cm is not None:
            cm, self._cm = self._cm, None
            cm.__exit__(None, None, None)  # fsync + rename into place

    def abort(self) -> None:
        """Discard the output: for a path, the temporary file is removed and the destination is
        left as it was. Safe to call more than once, and after :meth:`close` (then it does
        nothing)."""
        if self._done:
            return
        self._done = True
        self._pending = None
        if self._cm is not None:
            cm, self._cm = self._cm, None
            err = _Aborted("bmz output aborted")
            try:
                cm.__exit__(_Aborted, err, None)  # atomic_output removes its temporary file
            except _Aborted:
                pass

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:  # an abandoned writer must not leave a temporary file behind
        try:
            if not getattr(self, "_done", True) and getattr(self, "_cm", None) is not None:
                self.abort()
        except Exception:
            pass


class _Aborted(Exception):
    """Thrown into :func:`atomic_output` to make it discard its temporary file."""


def _write_zeros(f: IO[bytes], n: int) -> None:
    """Write ``n`` zero bytes, 1 MiB at a time."""
    while n > 0:
        k = min(n, 1 << 20)
        f.write(bytes(k))
        n -= k


def _seekable(f: Any) -> bool:
    try:
        return bool(f.seekable()) if hasattr(f, "seekable") else False
    except (OSError, ValueError):
        return False


def pack(meta: dict, chunks: Sequence[bytes], attachment: bytes | None = None) -> bytes:
    """Return a whole ``.bmz`` file holding ``meta``, one chunk per slice, in order, and the
    optional ``attachment`` (see :class:`BmzWriter`)."""
    buf = io.BytesIO()
    w = BmzWriter(buf, meta, len(chunks), attachment=attachment)
    for c in chunks:
        w.add(c)
    w.close()
    return buf.getvalue()


# --- reading ----------------------------------------------------------------------------------


class _MemorySource:
    """Random access over an in-memory buffer."""

    def __init__(self, data: bytes | bytearray | memoryview):
        self._view = memoryview(data).cast("B")
        self.size = len(self._view)

    def read_at(self, offset: int, n: int) -> bytes:
        return bytes(self._view[offset:offset + n])

    def close(self) -> None:
        self._view.release()


class _FileSource:
    """Random access over a seekable binary file object, relative to ``base``."""

    def __init__(self, f: BinaryIO, owned: bool):
        self._f = f
        self._owned = owned
        self._base = f.tell()
        end = f.seek(0, io.SEEK_END)
        self.size = max(0, end - self._base)

    def read_at(self, offset: int, n: int) -> bytes:
        self._f.seek(self._base + offset)
        parts = []
        while n > 0:
            b = self._f.read(n)
            if not b:
                break
            parts.append(b)
            n -= len(b)
        return b"".join(parts)

    def close(self) -> None:
        if self._owned:
            self._f.close()


class BmzReader(AbstractContextManager):
    """Random-access reader of a ``.bmz`` file.

    ``src`` is a path, a ``bytes``/``bytearray``/``memoryview`` holding the whole file, or a
    readable binary file object (the container starts at its current position; a non-seekable one
    is read into memory). ``name`` is used in error messages (default: the path or the file
    object's ``name``).

    Opening reads and checks the signature, the fixed header, the metadata and the slice index;
    :meth:`chunk` then reads exactly one chunk. Every check failure raises a subclass of
    :class:`~bmz.errors.FormatError` naming the file and the block. A path is opened here and
    closed by :meth:`close` (or at the end of a ``with`` block); a caller's file object is left
    open.

    A version 1.2 file may hold an *attachment* after the last chunk (its extent is checked on
    opening, its CRC-32 when :meth:`attachment` reads it).

    Attributes: ``meta`` (the metadata dict), ``n_slices``, ``version`` ((major, minor) as stored
    in the file), ``flags``, ``file_size`` (bytes in the container, from the signature to the end
    of the data), ``data_start`` (offset of the first byte after the index).
    """

    meta: dict
    n_slices: int
    version: tuple[int, int]
    flags: int
    file_size: int
    data_start: int

    def __init__(self, src: Source, name: str | None = None):
        self._src: _MemorySource | _FileSource
        if isinstance(src, (bytes, bytearray, memoryview)):
            self.name = name
            self._src = _MemorySource(src)
        elif _is_pathlike(src):
            self.name = name if name is not None else str(src)
            self._src = _FileSource(open(src, "rb"), owned=True)
        elif hasattr(src, "read"):
            fname = getattr(src, "name", None)
            self.name = name if name is not None else (fname if isinstance(fname, str) else None)
            if _seekable(src):
                self._src = _FileSource(src, owned=False)
            else:
                self._src = _MemorySource(src.read())
        else:
            raise TypeError(
                f"BmzReader needs a path, bytes or a binary file object, got {type(src).__name__}"
            )
        self._entries: list[tuple[int, int, int]] = []
        try:
            self._open()
        except BaseException:
            self._src.close()
            raise

    # -- opening --

    def _where(self, block: str) -> str:
        return f"{_prefix(self.name)}{block}"

    def _read_exact(self, offset: int, n: int, block: str) -> bytes:
        if offset + n > self.file_size:
            raise TruncatedError(
                f"{self._where(block)}: needs bytes {offset}..{offset + n - 1} but the file has "
                f"only {self.file_size} bytes (file truncated?)"
            )
        data = self._src.read_at(offset, n)
        if len(data) != n:  # the file shrank while open
            raise TruncatedError(
                f"{self._where(block)}: file ended after {len(data)} of {n} bytes at offset "
                f"{offset} (file truncated?)"
            )
        return data

    def _open(self) -> None:
        self.file_size = self._src.size
        size = self.file_size

        # 1. signature (the first 32 bytes are read in one go)
        pre = self._src.read_at(0, PREAMBLE_SIZE)
        sig = pre[:SIGNATURE_SIZE]
        if sig != MAGIC:
            if len(sig) < SIGNATURE_SIZE and MAGIC.startswith(sig):
                raise TruncatedError(
                    f"{self._where('signature')}: file is only {size} bytes, too short for a "
                    f".bmz file"
                )
            raise BadMagicError(
                f"{_prefix(self.name)}not a .bmz file (signature is {sig!r}, expected "
                f"{MAGIC!r}); if the file was transferred as text, transfer it again as binary"
            )

        # 2. major version (bytes 8..11 are the same in every major version)
        if len(pre) < SIGNATURE_SIZE + _VERSION.size:
            raise TruncatedError(
                f"{self._where('fixed header')}: file ends at byte {size}, inside the fixed "
                f"header (file truncated?)"
            )
        major, minor = _VERSION.unpack_from(pre, SIGNATURE_SIZE)
        if major != FORMAT_VERSION[0]:
            hint = ("a newer bmz is needed to read it" if major > FORMAT_VERSION[0]
                    else "no bmz release reads it")
            raise UnsupportedVersionError(
                f"{_prefix(self.name)}written in .bmz format version {major}.{minor}; this bmz "
                f"reads version {FORMAT_VERSION[0]}.x only, {hint} (or the file is damaged)"
            )

        # 3. fixed header CRC
        if len(pre) < PREAMBLE_SIZE:
            raise TruncatedError(
                f"{self._where('fixed header')}: file ends at byte {size}, inside the fixed "
                f"header (file truncated?)"
            )
        fields = pre[SIGNATURE_SIZE:SIGNATURE_SIZE + _HEADER_FIELDS.size]
        (stored,) = _U32.unpack_from(pre, SIGNATURE_SIZE + _HEADER_FIELDS.size)
        if _crc32(fields) != stored:
            raise ChecksumError(
                f"{self._where('fixed header')}: checksum mismatch (stored 0x{stored:08x}, "
                f"computed 0x{_crc32(fields):08x}); the file is damaged"
            )
        _, _, flags, meta_len, n = _HEADER_FIELDS.unpack(fields)

        # 4. flags
        unknown_critical = flags & CRITICAL_FLAGS_MASK & ~KNOWN_FLAGS
        if unknown_critical:
            raise UnsupportedVersionError(
                f"{self._where('fixed header')}: uses features this bmz does not know (critical "
                f"flags 0x{unknown_critical:04x}, format version {major}.{minor}); a newer bmz is "
                f"needed"
            )

        # 5. block extents, before anything is allocated
        index_pos = PREAMBLE_SIZE + meta_len + CRC_SIZE
        if index_pos > size:
            raise TruncatedError(
                f"{self._where('metadata')}: declares {meta_len} bytes but the file has only "
                f"{size} bytes (file truncated?)"
            )
        if meta_len > MAX_METADATA_SIZE:
            raise FormatError(
                f"{self._where('metadata')}: {meta_len} bytes, more than the {MAX_METADATA_SIZE} "
                f"allowed"
            )
        packed = bool(flags & FLAG_PACKED_INDEX)
        entry_size = PACKED_INDEX_ENTRY_SIZE if packed else INDEX_ENTRY_SIZE
        data_start = index_pos + entry_size * n + CRC_SIZE
        if data_start > size:
            raise TruncatedError(
                f"{self._where('slice index')}: declares {n} slices ({entry_size * n + 4} "
                f"index bytes at offset {index_pos}) but the file has only {size} bytes "
                f"(file truncated or damaged)"
            )

        # 6. metadata
        blob = self._read_exact(PREAMBLE_SIZE, meta_len + CRC_SIZE, "metadata")
        body, (stored,) = blob[:meta_len], _U32.unpack(blob[meta_len:])
        if _crc32(body) != stored:
            raise ChecksumError(
                f"{self._where('metadata')}: checksum mismatch (stored 0x{stored:08x}, computed "
                f"0x{_crc32(body):08x}); the file is damaged"
            )
        meta = _decode_meta(body, self._where("metadata"))

        # 7. slice index
        raw = self._read_exact(index_pos, entry_size * n + CRC_SIZE, "slice index")
        body, (stored,) = raw[:-CRC_SIZE], _U32.unpack(raw[-CRC_SIZE:])
        if _crc32(body) != stored:
            raise ChecksumError(
                f"{self._where('slice index')}: checksum mismatch (stored 0x{stored:08x}, "
                f"computed 0x{_crc32(body):08x}); the file is damaged"
            )
        if packed:  # chunks back to back from the data start, in slice order
            entries, off = [], data_start
            for length, crc in _PACKED_ENTRY.iter_unpack(body):
                entries.append((off, length, crc))
                off += length
        else:
            entries = list(_ENTRY.iter_unpack(body))
        self._check_entries(entries, data_start, size, n)

        self.meta = meta
        self.n_slices = n
        self.version = (major, minor)
        self.flags = flags
        self.data_start = data_start
        self._entries = entries
        self._attachment = self._check_attachment(meta, entries, data_start, size)

    def _check_entries(self, entries: list[tuple[int, int, int]], data_start: int, size: int,
                       n: int) -> None:
        for k, (off, length, _) in enumerate(entries):
            block = f"slice index, entry of {_slice_label(k, n)}"
            if off < data_start:
                raise FormatError(
                    f"{self._where(block)}: chunk offset {off} lies inside the header (data "
                    f"starts at {data_start}); the file is damaged"
                )
            if off + length > size:
                raise TruncatedError(
                    f"{self._where(block)}: chunk at bytes {off}..{off + length - 1} extends "
                    f"past the end of the file ({size} bytes; file truncated?)"
                )
        spans = sorted((off, off + length, k) for k, (off, length, _) in enumerate(entries)
                       if length)
        for (_, end_a, ka), (start_b, _, kb) in zip(spans, spans[1:]):
            if start_b < end_a:
                raise FormatError(
                    f"{self._where('slice index')}: chunks of slices {ka} and {kb} overlap; the "
                    f"file is damaged"
                )

    # -- access --

    def __len__(self) -> int:
        return self.n_slices

    def _entry(self, k: int) -> tuple[int, int, int]:
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"slice number must be an int, got {type(k).__name__}")
        if not 0 <= k < self.n_slices:
            raise IndexError(f"{_prefix(self.name)}no slice {k}: the file has {self.n_slices} "
                             f"slices (numbered from 0)")
        return self._entries[k]

    def chunk(self, k: int) -> bytes:
        """Return the chunk of slice ``k`` (0-based), after checking its CRC-32.

        Reads only that chunk. Raises :class:`~bmz.errors.ChecksumError` with ``slice_index=k``
        when the chunk is damaged, ``IndexError`` when ``k`` is out of range."""
        off, length, stored = self._entry(k)
        label = _slice_label(k, self.n_slices)
        data = self._read_exact(off, length, label)
        crc = _crc32(data)
        if crc != stored:
            raise ChecksumError(
                f"{self._where(label)}: checksum mismatch (stored 0x{stored:08x}, computed "
                f"0x{crc:08x}); the chunk is damaged",
                slice_index=k,
            )
        return data

    def _check_attachment(self, meta: dict, entries: list[tuple[int, int, int]],
                          data_start: int, size: int) -> tuple[int, int, int] | None:
        """(offset, length, CRC-32) of the attachment the metadata declares, checked to lie in
        the file right after the last chunk; ``None`` when there is none."""
        if ATTACHMENT_KEY not in meta:
            return None
        info = meta[ATTACHMENT_KEY]
        length = info.get("length") if isinstance(info, dict) else None
        crc = info.get("crc32") if isinstance(info, dict) else None
        if not (isinstance(length, int) and not isinstance(length, bool) and length >= 0
                and isinstance(crc, int) and not isinstance(crc, bool) and 0 <= crc <= _MAX_U32):
            raise FormatError(f"{self._where('metadata')}: key {ATTACHMENT_KEY!r} must be "
                              f'{{"length": n, "crc32": c}}, not {info!r:.80}')
        offset = max([data_start] + [off + n for off, n, _ in entries])
        if offset + length > size:
            raise TruncatedError(
                f"{self._where('attachment')}: needs bytes {offset}..{offset + length - 1} but "
                f"the file has only {size} bytes (file truncated?)")
        return offset, length, crc

    @property
    def has_attachment(self) -> bool:
        """Whether the file declares an attachment (version 1.2)."""
        return self._attachment is not None

    def attachment(self) -> bytes | None:
        """The attachment's bytes after checking its CRC-32 (:class:`~bmz.errors.ChecksumError`
        when damaged), or ``None`` when the file has none."""
        if self._attachment is None:
            return None
        off, length, stored = self._attachment
        data = self._read_exact(off, length, "attachment")
        if _crc32(data) != stored:
            raise ChecksumError(
                f"{self._where('attachment')}: checksum mismatch (stored 0x{stored:08x}, "
                f"computed 0x{_crc32(data):08x}); the attachment is damaged")
        return data

    def verify_attachment(self) -> bool:
        """Whether the attachment (if any) is intact: ``True`` when there is none."""
        try:
            self.attachment()
        except ChecksumError:
            return False
        return True

    def chunk_sizes(self) -> list[int]:
        """Length in bytes of every chunk, from the index (no chunk is read)."""
        return [length for _, length, _ in self._entries]

    def verify(self) -> list[int]:
        """Check every chunk's CRC-32; return the (0-based, ascending) numbers of the damaged
        slices. Chunk damage is reported, not raised; a file that shrank since it was opened still
        raises :class:`~bmz.errors.TruncatedError`."""
        bad = []
        for k in range(self.n_slices):
            off, length, stored = self._entries[k]
            if _crc32(self._read_exact(off, length, _slice_label(k, self.n_slices))) != stored:
                bad.append(k)
        return bad

    def close(self) -> None:
        """Release the source (closes the file if this reader opened it)."""
        src = getattr(self, "_src", None)
        if src is not None:
            src.close()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        n = getattr(self, "n_slices", "?")
        return f"<BmzReader {self.name or '<memory>'} v{getattr(self, 'version', '?')} {n} slices>"


def is_bmz(data_or_path: Source) -> bool:
    """Cheap test: does the data (bytes, a path, or a binary file object) start with
    :data:`MAGIC`? Reads 8 bytes at most; a file object's position is restored. Returns
    ``False`` for a path that cannot be read."""
    if isinstance(data_or_path, (bytes, bytearray, memoryview)):
        return bytes(memoryview(data_or_path)[:SIGNATURE_SIZE]) == MAGIC
    if _is_pathlike(data_or_path):
        try:
            with open(data_or_path, "rb") as f:
                return f.read(SIGNATURE_SIZE) == MAGIC
        except OSError:
            return False
    if hasattr(data_or_path, "read"):
        f = data_or_path
        if _seekable(f):
            pos = f.tell()
            try:
                return f.read(SIGNATURE_SIZE) == MAGIC
            finally:
                f.seek(pos)
        if hasattr(f, "peek"):
            return f.peek(SIGNATURE_SIZE)[:SIGNATURE_SIZE] == MAGIC
        raise TypeError("is_bmz cannot test a non-seekable stream without consuming it")
    raise TypeError(f"is_bmz needs bytes, a path or a binary file object, got "
                    f"{type(data_or_path).__name__}")
