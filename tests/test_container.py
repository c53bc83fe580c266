"""Tests of the ``.bmz`` container (bmz.bitstream): layout, round trips, random access, and that
every kind of damage is reported as a :class:`bmz.errors.FormatError` subclass."""

from __future__ import annotations

import gc
import io
import json
import lzma
import os
import shutil
import struct
import subprocess
import tracemalloc
import zlib

import pytest

from bmz.bitstream import FORMAT_VERSION, MAGIC, BmzReader, BmzWriter, is_bmz, pack
from bmz.bitstream import container as C
from bmz.errors import (
    BadMagicError,
    ChecksumError,
    FormatError,
    OutputError,
    TruncatedError,
    UnsupportedVersionError,
)

META = {"shape": [3, 4, 5], "dtype": "<i2", "source": "numpy", "codec": {"quality": 3}}
CHUNKS = [b"first chunk", b"", b"\x00\x01\x02third"]


def crc(b: bytes) -> int:
    return zlib.crc32(b) & 0xFFFFFFFF


def xz(raw: bytes, check: int = lzma.CHECK_NONE, **lzma2) -> bytes:
    """One xz stream of ``raw`` with a single LZMA2 filter (options ``lzma2``, default preset 6)."""
    filt = {"id": lzma.FILTER_LZMA2, "preset": 6, **lzma2}
    return lzma.compress(raw, format=lzma.FORMAT_XZ, check=check, filters=[filt])


def with_dict_byte(stream: bytes, prop: int) -> bytes:
    """``stream`` (one block, as :func:`xz` makes it) with its LZMA2 dictionary-size property byte
    set to ``prop`` and the block header CRC fixed, so only the declared dictionary changes."""
    b = bytearray(stream)
    size = (b[12] + 1) * 4  # block header, after the 12-byte stream header
    assert b[13] & 0x03 == 0 and b[13] & 0xC0 == 0  # one filter, no optional size fields
    assert b[14:16] == b"\x21\x01"  # LZMA2 with one property byte
    b[16] = prop
    b[12 + size - 4:12 + size] = struct.pack("<I", crc(bytes(b[12:12 + size - 4])))
    return bytes(b)


def with_check_id(stream: bytes, check_id: int) -> bytes:
    """``stream`` with the check ID in its stream header and footer replaced (CRCs fixed)."""
    b = bytearray(stream)
    b[7] = check_id
    b[8:12] = struct.pack("<I", crc(bytes(b[6:8])))
    b[-3] = check_id
    b[-12:-8] = struct.pack("<I", crc(bytes(b[-8:-2])))
    return bytes(b)


def craft(*, major=1, minor=0, flags=0, meta_blob=None, meta_len=None, n=None, entries=None,
          chunks=(), header_crc=None, tail=b"") -> bytes:
    """Hand-build a container; every field may be overridden, CRCs are correct unless given.
    Version 1.0 layout (16-byte index entries: offset, length, CRC) unless ``flags`` has bit 0
    (packed index, version 1.1: entries are (length, CRC))."""
    packed = bool(flags & 1)
    if meta_blob is None:
        meta_blob = xz(json.dumps({}).encode())
    if entries is None:
        entries, pos = [], 0
        base = 32 + len(meta_blob) + 4 + (8 if packed else 16) * len(chunks) + 4
        for c in chunks:
            entries.append((len(c), crc(c)) if packed else (base + pos, len(c), crc(c)))
            pos += len(c)
    n = len(entries) if n is None else n
    meta_len = len(meta_blob) if meta_len is None else meta_len
    fields = struct.pack("<HHIQI", major, minor, flags, meta_len, n)
    hcrc = crc(fields) if header_crc is None else header_crc
    index = b"".join(struct.pack("<II" if packed else "<QII", *e) for e in entries)
    return (MAGIC + fields + struct.pack("<I", hcrc) + meta_blob + struct.pack("<I", crc(meta_blob))
            + index + struct.pack("<I", crc(index)) + b"".join(chunks) + tail)


def read_all(src, **kw):
    with BmzReader(src, **kw) as r:
        return r.meta, [r.chunk(k) for k in range(r.n_slices)]


# --- layout and round trips -------------------------------------------------------------------


def test_constants():
    assert MAGIC == b"\x89BMZ\r\n\x1a\n"
    assert FORMAT_VERSION == (1, 1)


def test_exact_layout_matches_spec():
    data = pack(META, CHUNKS)
    raw = json.dumps(META, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
    # the reference writer: xz, check None, LZMA2 preset 9e, dictionary max(4096, len(raw))
    meta_blob = xz(raw, preset=9 | lzma.PRESET_EXTREME, dict_size=max(4096, len(raw)))
    assert data == craft(minor=1, flags=1, meta_blob=meta_blob, chunks=CHUNKS)
    assert lzma.decompress(meta_blob) == raw
    assert data[:8] == MAGIC
    major, minor, flags, mlen, n, hcrc = struct.unpack_from("<HHIQII", data, 8)
    assert (major, minor, flags, mlen, n) == (1, 1, 1, len(meta_blob), 3)
    assert hcrc == crc(data[8:28])


SPEC_EXAMPLE_11 = bytes.fromhex(  # docs/FORMAT.md, section 12: version 1.1 (what bmz writes)
    "89 42 4d 5a 0d 0a 1a 0a 01 00 01 00 01 00 00 00"
    "44 00 00 00 00 00 00 00 02 00 00 00 bf c3 e4 b2"
    "fd 37 7a 58 5a 00 00 00 ff 12 d9 41 02 00 21 01"
    "00 00 00 00 37 27 97 d6 01 00 10 7b 22 73 68 61"
    "70 65 22 3a 5b 32 2c 31 2c 31 5d 7d 00 00 00 00"
    "00 01 21 11 3a 80 a9 c6 06 72 9e 7a 01 00 00 00"
    "00 00 59 5a ed 36 7a f2 01 00 00 00 1b df 05 a5"
    "02 00 00 00 c7 21 e6 ea b5 21 2f 33 01 02 03"
)

SPEC_EXAMPLE = bytes.fromhex(  # docs/FORMAT.md, section 12: the same file in version 1.0
    "89 42 4d 5a 0d 0a 1a 0a 01 00 00 00 00 00 00 00"
    "44 00 00 00 00 00 00 00 02 00 00 00 cf e4 de f3"
    "fd 37 7a 58 5a 00 00 00 ff 12 d9 41 02 00 21 01"
    "00 00 00 00 37 27 97 d6 01 00 10 7b 22 73 68 61"
    "70 65 22 3a 5b 32 2c 31 2c 31 5d 7d 00 00 00 00"
    "00 01 21 11 3a 80 a9 c6 06 72 9e 7a 01 00 00 00"
    "00 00 59 5a ed 36 7a f2 8c 00 00 00 00 00 00 00"
    "01 00 00 00 1b df 05 a5 8d 00 00 00 00 00 00 00"
    "02 00 00 00 c7 21 e6 ea 90 b9 0d bc 01 02 03"
)


def test_spec_worked_example():
    assert len(SPEC_EXAMPLE) == 143
    assert read_all(SPEC_EXAMPLE) == ({"shape": [2, 1, 1]}, [b"\x01", b"\x02\x03"])
    mlen, n, hcrc = struct.unpack_from("<QII", SPEC_EXAMPLE, 16)
    assert (mlen, n, hcrc) == (68, 2, 0xF3DEE4CF)
    # the field values of the spec's tables
    blob = SPEC_EXAMPLE[32:100]
    assert struct.unpack_from("<I", SPEC_EXAMPLE, 100) == (0xF27A36ED,) == (crc(blob),)
    index = [struct.unpack_from("<QII", SPEC_EXAMPLE, 104 + 16 * k) for k in range(2)]
    assert index == [(140, 1, 0xA505DF1B), (141, 2, 0xEAE621C7)]
    assert struct.unpack_from("<I", SPEC_EXAMPLE, 136) == (0xBC0DB990,)
    d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    assert d.decompress(blob) == b'{"shape":[2,1,1]}' and d.eof and not d.unused_data
    assert d.check == lzma.CHECK_NONE
    assert blob[:6] == b"\xfd7zXZ\x00" and blob[-2:] == b"YZ"
    assert blob[12:17] == bytes.fromhex("02 00 21 01 00")  # block header: LZMA2, 4 KiB dictionary
    assert blob[24:27] == bytes.fromhex("01 00 10") and blob[27:44] == b'{"shape":[2,1,1]}'
    for a, b, value in [(8, 12, 0x41D912FF), (20, 24, 0xD6972737), (52, 56, 0xC6A9803A),
                        (56, 60, 0x7A9E7206)]:  # the CRC-32s inside the xz stream
        assert struct.unpack_from("<I", blob, a) == (value,)
    # version 1.1: the same header blocks, then the packed index (length, CRC) and the chunks
    assert len(SPEC_EXAMPLE_11) == 127
    assert read_all(SPEC_EXAMPLE_11) == read_all(SPEC_EXAMPLE)
    assert struct.unpack_from("<HHIQII", SPEC_EXAMPLE_11, 8) == (1, 1, 1, 68, 2, 0xB2E4C3BF)
    assert SPEC_EXAMPLE_11[32:104] == SPEC_EXAMPLE[32:104]
    index = [struct.unpack_from("<II", SPEC_EXAMPLE_11, 104 + 8 * k) for k in range(2)]
    assert index == [(1, 0xA505DF1B), (2, 0xEAE621C7)]
    assert struct.unpack_from("<I", SPEC_EXAMPLE_11, 120) == (0x332F21B5,) == (crc(SPEC_EXAMPLE_11[104:120]),)
    # the reference writer makes exactly these bytes with the same liblzma output
    if xz(b'{"shape":[2,1,1]}', preset=9 | lzma.PRESET_EXTREME, dict_size=4096) == blob:
        assert pack({"shape": [2, 1, 1]}, [b"\x01", b"\x02\x03"]) == SPEC_EXAMPLE_11


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "fileobj", "path"])
def test_round_trip_pack(kind, tmp_path):
    data = pack(META, CHUNKS)
    if kind == "bytes":
        src = data
    elif kind == "bytearray":
        src = bytearray(data)
    elif kind == "memoryview":
        src = memoryview(data)
    elif kind == "fileobj":
        src = io.BytesIO(data)
    else:
        src = tmp_path / "a.bmz"
        src.write_bytes(data)
    with BmzReader(src) as r:
        assert r.meta == META
        assert r.n_slices == 3 and len(r) == 3
        assert r.version == (1, 1) and r.flags == 1
        assert r.file_size == len(data)
        assert r.chunk_sizes() == [len(c) for c in CHUNKS]
        assert [r.chunk(k) for k in range(3)] == CHUNKS
        assert r.chunk(2) == CHUNKS[2]  # re-reading works, in any order
        assert r.verify() == []


def test_writer_to_path_and_context_manager(tmp_path):
    p = tmp_path / "vol.bmz"
    with BmzWriter(p, META, len(CHUNKS)) as w:
        for c in CHUNKS:
            w.add(c)
        assert not p.exists()  # appears only when complete
    assert p.read_bytes() == pack(META, CHUNKS)
    assert read_all(str(p)) == (META, CHUNKS)
    assert sorted(os.listdir(tmp_path)) == ["vol.bmz"]


def test_writer_force_false_refuses_existing(tmp_path):
    p = tmp_path / "vol.bmz"
    p.write_bytes(b"keep me")
    with pytest.raises(OutputError):
        BmzWriter(p, META, 1, force=False)
    assert p.read_bytes() == b"keep me"
    assert sorted(os.listdir(tmp_path)) == ["vol.bmz"]


def test_writer_to_nonseekable_stream_and_embedded_offset():
    class Pipe(io.RawIOBase):
        def __init__(self):
            self.buf = bytearray()

        def writable(self):
            return True

        def write(self, b):
            self.buf += b
            return len(b)

    pipe = Pipe()
    with BmzWriter(pipe, META, len(CHUNKS)) as w:
        for c in CHUNKS:
            w.add(c)
    assert bytes(pipe.buf) == pack(META, CHUNKS)

    # a container written after a prefix: offsets are relative to its own start
    f = io.BytesIO()
    f.write(b"PREFIX")
    with BmzWriter(f, META, len(CHUNKS)) as w:
        for c in CHUNKS:
            w.add(c)
    assert f.getvalue()[6:] == pack(META, CHUNKS)
    f.seek(6)
    assert read_all(f) == (META, CHUNKS)


def test_zero_slices():
    data = pack({"shape": [0, 4, 4]}, [])
    with BmzReader(data) as r:
        assert r.n_slices == 0
        assert r.chunk_sizes() == [] and r.verify() == []
        with pytest.raises(IndexError):
            r.chunk(0)


def test_metadata_unicode_and_determinism():
    meta = {"patient": "Zoë Ångström 患者 🧠", "z": [1, 2.5, None, True], "a": {"ü": "\u0000"}}
    data = pack(meta, [b"x"])
    assert read_all(data)[0] == meta
    reordered = {k: meta[k] for k in reversed(list(meta))}
    assert pack(reordered, [b"x"]) == data


@pytest.mark.parametrize("bad", [[1, 2], {"x": float("nan")}, {"x": object()}, {1: 2j}])
def test_writer_rejects_non_json_metadata(bad, tmp_path):
    with pytest.raises((TypeError, ValueError)):
        BmzWriter(tmp_path / "x.bmz", bad, 1)
    assert os.listdir(tmp_path) == []


def test_chunk_index_errors():
    with BmzReader(pack(META, CHUNKS)) as r:
        for k in (-1, 3, 10**12):
            with pytest.raises(IndexError):
                r.chunk(k)


def test_is_bmz(tmp_path):
    data = pack(META, CHUNKS)
    p = tmp_path / "a.bmz"
    p.write_bytes(data)
    assert is_bmz(data) and is_bmz(memoryview(data)) and is_bmz(p) and is_bmz(str(p))
    f = io.BytesIO(data)
    f.seek(0)
    assert is_bmz(f) and f.tell() == 0
    assert not is_bmz(b"\x89PNG\r\n\x1a\n") and not is_bmz(b"") and not is_bmz(MAGIC[:5])
    assert not is_bmz(tmp_path / "missing.bmz") and not is_bmz(tmp_path)


# --- random access ----------------------------------------------------------------------------


class CountingFile(io.RawIOBase):
    """A seekable binary file that counts the bytes handed out by read()."""

    def __init__(self, data: bytes):
        self._f = io.BytesIO(data)
        self.bytes_read = 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, pos, whence=0):
        return self._f.seek(pos, whence)

    def tell(self):
        return self._f.tell()

    def readinto(self, b):
        n = self._f.readinto(b)
        self.bytes_read += n
        return n


def test_random_access_reads_only_the_needed_bytes():
    chunks = [bytes([k]) * (1000 + k) for k in range(50)]
    data = pack(META, chunks)
    f = CountingFile(data)
    r = BmzReader(f)
    header_bytes = r.data_start  # signature + fixed header + metadata + index
    assert f.bytes_read <= header_bytes
    assert header_bytes < 1000  # the whole header is much smaller than one chunk
    for k in (17, 0, 49):
        before = f.bytes_read
        assert r.chunk(k) == chunks[k]
        assert f.bytes_read - before == len(chunks[k])
    assert r.chunk_sizes() == [len(c) for c in chunks]
    assert f.bytes_read <= header_bytes + sum(len(chunks[k]) for k in (17, 0, 49))


# --- damage -----------------------------------------------------------------------------------


def small_file() -> bytes:
    return pack({"shape": [3, 2, 2], "é": "ü"}, [b"AAAA", b"", b"CCCCCC"])


def test_truncation_at_every_offset():
    data = small_file()
    for cut in range(len(data)):
        with pytest.raises(FormatError) as ei:
            read_all(data[:cut], name="cut.bmz")
        assert isinstance(ei.value, (TruncatedError, ChecksumError)), (cut, ei.value)
        if cut:
            assert "cut.bmz" in str(ei.value)


def test_every_single_bit_flip():
    data = small_file()
    ref_meta, ref_chunks = read_all(data)
    with BmzReader(data) as r:
        spans = [(off, off + length) for off, length, _ in r._entries]
        data_start = r.data_start
    for pos in range(len(data)):
        for bit in range(8):
            bad = bytearray(data)
            bad[pos] ^= 1 << bit
            try:
                r = BmzReader(bytes(bad))
            except FormatError:
                assert pos < data_start  # header damage is found on opening
                continue
            assert pos >= data_start
            (k,) = [k for k, (a, b) in enumerate(spans) if a <= pos < b]
            assert r.meta == ref_meta
            assert r.verify() == [k]
            for j in range(r.n_slices):
                if j == k:
                    with pytest.raises(ChecksumError) as ei:
                        r.chunk(j)
                    assert ei.value.slice_index == k
                    assert f"slice {k} of 3" in str(ei.value)
                else:
                    assert r.chunk(j) == ref_chunks[j]


@pytest.mark.parametrize("pos,block", [(9, "fixed header"), (14, "fixed header"),
                                       (29, "fixed header"), (33, "metadata")])
def test_header_damage_names_the_block(pos, block):
    bad = bytearray(small_file())
    bad[pos] ^= 0x10
    with pytest.raises(FormatError) as ei:
        BmzReader(bytes(bad), name="x.bmz")
    msg = str(ei.value)
    assert "x.bmz" in msg
    if pos == 9:  # major version byte: read before the CRC, so it is a version error
        assert isinstance(ei.value, UnsupportedVersionError)
    else:
        assert isinstance(ei.value, ChecksumError) and ei.value.slice_index is None
        assert block in msg


def test_index_damage_is_named():
    data = small_file()
    with BmzReader(data) as r:
        pos = r.data_start - 10
    bad = bytearray(data)
    bad[pos] ^= 1
    with pytest.raises(ChecksumError, match="slice index"):
        BmzReader(bytes(bad))


def test_verify_reports_damaged_slices(tmp_path):
    chunks = [bytes([k]) * 20 for k in range(90)]
    data = bytearray(pack(META, chunks))
    with BmzReader(bytes(data)) as r:
        entries = r._entries
    for k in (17, 60):
        data[entries[k][0] + 5] ^= 0xFF
    p = tmp_path / "dmg.bmz"
    p.write_bytes(data)
    with BmzReader(p) as r:
        assert r.verify() == [17, 60]
        with pytest.raises(ChecksumError) as ei:
            r.chunk(17)
        assert ei.value.slice_index == 17
        assert "slice 17 of 90" in str(ei.value) and "dmg.bmz" in str(ei.value)
        assert r.chunk(18) == chunks[18]


def test_bad_magic():
    data = small_file()
    for bad in (b"hello world, this is not bmz" * 3, b"\x89PNG\r\n\x1a\n" + data[8:],
                data.replace(b"\r\n", b"\n"), b"x", b"\x89BMX"):
        with pytest.raises(BadMagicError, match="not a .bmz file"):
            BmzReader(bad)
    for short in (b"", MAGIC[:4]):  # could be the start of a .bmz file
        with pytest.raises(TruncatedError, match="too short"):
            BmzReader(short)


def test_unknown_major_version_and_newer_minor():
    with pytest.raises(UnsupportedVersionError, match=r"2\.0.*newer bmz"):
        BmzReader(craft(major=2, chunks=[b"x"]))
    with pytest.raises(UnsupportedVersionError, match=r"0\.3"):
        BmzReader(craft(major=0, minor=3))
    # a v2 file may change everything after the version: no CRC is needed to refuse it
    with pytest.raises(UnsupportedVersionError):
        BmzReader(MAGIC + struct.pack("<HH", 2, 0) + b"\xff" * 100)
    with BmzReader(craft(minor=7, chunks=[b"x", b"yz"])) as r:
        assert r.version == (1, 7)
        assert [r.chunk(0), r.chunk(1)] == [b"x", b"yz"]


def test_flags():
    with pytest.raises(UnsupportedVersionError, match="critical flags 0x0002"):
        BmzReader(craft(flags=0x0002))
    with pytest.raises(UnsupportedVersionError, match="critical flags 0x0002"):
        BmzReader(craft(flags=0x0003))
    with BmzReader(craft(flags=0x00010000, chunks=[b"q"])) as r:  # ancillary: ignored
        assert r.flags == 0x00010000 and r.chunk(0) == b"q"


@pytest.mark.parametrize("kw", [
    dict(meta_len=2**64 - 1),
    dict(meta_len=2**40),
    dict(n=2**32 - 1),
    dict(n=10**6),
    dict(meta_len=2**63, n=2**32 - 1),
])
def test_absurd_lengths_and_counts(kw):
    data = craft(chunks=[b"abc"], **kw)
    tracemalloc.start()
    try:
        with pytest.raises(FormatError):
            BmzReader(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_metadata_cap(monkeypatch):
    monkeypatch.setattr(C, "MAX_METADATA_SIZE", 1000)
    bomb = xz(json.dumps({"x": "a" * 5000}).encode(), preset=9)
    with pytest.raises(FormatError, match="metadata.*more than 1000 bytes"):
        BmzReader(craft(meta_blob=bomb))
    big = os.urandom(2000)  # compressed length over the cap
    with pytest.raises(FormatError, match="metadata"):
        BmzReader(craft(meta_blob=big))
    ok = xz(json.dumps({"x": "a" * 900}).encode())  # under the cap
    assert read_all(craft(meta_blob=ok))[0] == {"x": "a" * 900}


def test_metadata_bomb_is_never_inflated(monkeypatch):
    monkeypatch.setattr(C, "MAX_METADATA_SIZE", 4096)
    # 8 MiB of JSON in under 4 KiB of xz, with a 4 KiB dictionary (so the decoder is small too)
    bomb = xz(b'{"x":"' + b"a" * (8 << 20) + b'"}', preset=1, dict_size=4096)
    assert len(bomb) < 4096
    data = craft(meta_blob=bomb)
    tracemalloc.start()  # liblzma allocates through Python's raw allocator: traced too
    try:
        with pytest.raises(FormatError, match="decompresses to more than 4096 bytes"):
            BmzReader(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_metadata_dictionary_limit():
    raw = json.dumps({"a": 1}).encode()
    small = xz(raw, dict_size=4096)
    assert read_all(craft(meta_blob=small))[0] == {"a": 1}
    # 64 MiB (property byte 28) is the largest dictionary allowed
    assert read_all(craft(meta_blob=with_dict_byte(small, 28)))[0] == {"a": 1}
    # 96 MiB (29) and 4 GiB - 1 (40) are refused before anything is allocated
    for prop in (29, 40):
        data = craft(meta_blob=with_dict_byte(small, prop))
        tracemalloc.start()
        try:
            with pytest.raises(FormatError, match="m.bmz: metadata: .*dictionary over 67108864"):
                BmzReader(data, name="m.bmz")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 1 << 20


@pytest.mark.parametrize("check", [lzma.CHECK_NONE, lzma.CHECK_CRC32, lzma.CHECK_CRC64,
                                   lzma.CHECK_SHA256])
def test_metadata_integrity_checks(check):
    raw = json.dumps({"patient": "x" * 40}).encode()
    blob = xz(raw, check=check)
    assert read_all(craft(meta_blob=blob))[0] == {"patient": "x" * 40}
    if check != lzma.CHECK_NONE:  # the xz check is verified (the block CRC-32 is correct)
        (backward,) = struct.unpack_from("<I", blob, len(blob) - 8)
        index_start = len(blob) - 12 - (backward + 1) * 4
        size = {lzma.CHECK_CRC32: 4, lzma.CHECK_CRC64: 8, lzma.CHECK_SHA256: 32}[check]
        pos = index_start - size  # first byte of the block's check field
        bad = blob[:pos] + bytes([blob[pos] ^ 1]) + blob[pos + 1:]
        with pytest.raises(FormatError, match="not a valid xz stream"):
            BmzReader(craft(meta_blob=bad))


@pytest.mark.skipif(shutil.which("xz") is None, reason="the xz command is not installed")
def test_metadata_from_the_xz_command():
    # another writer: XZ Utils' xz, several blocks in the one stream, CRC64 (its default check)
    raw = json.dumps({f"k{i}": "v" * 50 for i in range(100)}).encode()
    blob = subprocess.run(["xz", "--format=xz", "--block-size=1000", "--lzma2=preset=9e,dict=64KiB",
                           "-c"], input=raw, capture_output=True, check=True).stdout
    d = lzma.LZMADecompressor()
    assert d.decompress(blob) == raw and d.check == lzma.CHECK_CRC64
    assert read_all(craft(meta_blob=blob))[0] == json.loads(raw)


@pytest.mark.parametrize("blob,why", [
    (b"not xz at all", "not a valid xz stream"),
    (zlib.compress(b'{"a": 1}'), "not a valid xz stream"),  # drafts of 1.0 used zlib
    (lzma.compress(b'{"a": 1}', format=lzma.FORMAT_ALONE), "not a valid xz stream"),
    (b"", "incomplete"),
    (xz(b'{"a": 1}')[:-3], "incomplete"),
    (xz(b'{"a": 1}')[:12], "incomplete"),  # stream header only
    (xz(b'{"a": 1}') + b"junk", "4 stray bytes"),
    (xz(b'{"a": 1}') + b"\x00" * 4, "4 stray bytes"),  # xz stream padding
    (xz(b'{"a": 1}') + xz(b'{"b": 2}'), "stray"),  # a second stream
    (with_check_id(xz(b'{"a": 1}', check=lzma.CHECK_CRC32), 2), "reserved integrity check"),
    (xz(b'\xff\xfe{"a":1}'), "UTF-8"),
    (xz(b'{"a": 1'), "JSON"),
    (xz(b'[1, 2]'), "object"),
    (xz(b'{"a": NaN}'), "JSON"),
    (xz(b'{"a": 1, "a": 2}'), "duplicate"),
    (xz(b"[" * 100000 + b"]" * 100000), "JSON"),
])
def test_bad_metadata_with_valid_crc(blob, why):
    with pytest.raises(FormatError, match=why) as ei:
        BmzReader(craft(meta_blob=blob), name="m.bmz")
    assert "m.bmz: metadata" in str(ei.value)


def test_index_sanity_checks():
    ok = craft(chunks=[b"abcd", b"efgh"])
    with BmzReader(ok) as r:
        (o0, l0, c0), (o1, l1, c1) = r._entries
        start = r.data_start
    blob = xz(json.dumps({}).encode())
    tail = b"abcdefgh"
    cases = [
        ([(8, 4, c0), (o1, l1, c1)], FormatError, "inside the header"),
        ([(start - 1, 4, c0), (o1, l1, c1)], FormatError, "inside the header"),
        ([(o0, 4, c0), (o1, 5, c1)], TruncatedError, "past the end"),
        ([(o0, 4, c0), (2**64 - 1, 1, c1)], TruncatedError, "past the end"),
        ([(o0, 2**32 - 1, c0), (o1, l1, c1)], TruncatedError, "past the end"),
        ([(o0, 6, c0), (o1, l1, c1)], FormatError, "overlap"),
        ([(o0, 4, c0), (o0, 4, c0)], FormatError, "overlap"),
    ]
    for entries, err, msg in cases:
        bad = craft(meta_blob=blob, entries=entries, tail=tail)
        with pytest.raises(err, match=msg):
            BmzReader(bad)
    # empty chunks may sit anywhere inside the data area; unreferenced trailing bytes are ignored
    s3 = start + 16  # data start with a 3-entry index
    entries = [(s3, 4, c0), (s3 + 2, 0, 0), (s3 + 4, 4, c1)]
    fine = craft(meta_blob=blob, entries=entries, tail=tail + b"?")
    assert read_all(fine)[1] == [b"abcd", b"", b"efgh"]


# --- writer misuse ----------------------------------------------------------------------------


def test_writer_wrong_chunk_count_leaves_no_file(tmp_path):
    p = tmp_path / "w.bmz"
    w = BmzWriter(p, META, 3)
    w.add(b"a")
    with pytest.raises(ValueError, match="only 1 chunks"):
        w.close()
    assert os.listdir(tmp_path) == []

    with pytest.raises(ValueError, match="too many"):
        with BmzWriter(p, META, 1) as w:
            w.add(b"a")
            w.add(b"b")
    assert os.listdir(tmp_path) == []

    with pytest.raises(ValueError):
        with BmzWriter(p, META, 2) as w:
            w.add(b"a")
    assert os.listdir(tmp_path) == []


def test_writer_exception_in_with_block_leaves_nothing(tmp_path):
    p = tmp_path / "w.bmz"
    p.write_bytes(b"old contents")
    with pytest.raises(RuntimeError):
        with BmzWriter(p, META, 2) as w:
            w.add(b"a")
            raise RuntimeError("codec failed")
    assert sorted(os.listdir(tmp_path)) == ["w.bmz"]
    assert p.read_bytes() == b"old contents"


def test_writer_abort_and_misuse(tmp_path):
    p = tmp_path / "w.bmz"
    w = BmzWriter(p, META, 1)
    w.add(b"a")
    w.abort()
    w.abort()
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="closed"):
        w.add(b"b")
    with pytest.raises(TypeError):
        BmzWriter(p, META, 1).add("text")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        BmzWriter(p, META, -1)
    gc.collect()  # an abandoned, unfinished writer removes its temporary file
    assert os.listdir(tmp_path) == []
    w = BmzWriter(p, META, 0)
    w.close()
    w.close()  # idempotent
    w.abort()  # no effect after close
    assert read_all(p) == (META, [])


# --- fuzzing ----------------------------------------------------------------------------------

try:
    import hypothesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - depends on the environment
    hypothesis = None


def _only_format_errors(data: bytes) -> None:
    try:
        with BmzReader(data) as r:
            r.verify()
            for k in range(r.n_slices):
                try:
                    r.chunk(k)
                except ChecksumError as e:
                    assert e.slice_index == k
    except FormatError:
        pass


if hypothesis is not None:

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=200))
    def test_fuzz_random_bytes(data):
        _only_format_errors(data)
        _only_format_errors(MAGIC + data)
        _only_format_errors(MAGIC + struct.pack("<HH", 1, 0) + data)

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def test_fuzz_mutations(draw):
        data = bytearray(small_file())
        for _ in range(draw.draw(st.integers(1, 4))):
            op = draw.draw(st.sampled_from(["set", "cut", "insert"]))
            pos = draw.draw(st.integers(0, max(0, len(data) - 1)))
            if op == "set" and data:
                data[pos] = draw.draw(st.integers(0, 255))
            elif op == "cut":
                del data[pos:pos + draw.draw(st.integers(1, 8))]
            else:
                data[pos:pos] = draw.draw(st.binary(min_size=1, max_size=8))
        _only_format_errors(bytes(data))

else:

    @pytest.mark.skip(reason="hypothesis is not installed (pip install hypothesis): fuzz skipped")
    def test_fuzz_random_bytes():
        pass



# --- version 1.1: the packed index (flag bit 0) -------------------------------------------------


def test_packed_index_saves_8_bytes_per_slice_and_reads_like_1_0():
    chunks = [b"", b"abc", b"", b"d" * 300, b"e"]
    new = pack(META, chunks)
    old = craft(meta_blob=new[32:32 + struct.unpack_from("<Q", new, 16)[0]], chunks=chunks)
    assert len(old) - len(new) == 8 * len(chunks)
    assert read_all(new) == read_all(old) == (META, chunks)
    with BmzReader(new) as r:
        assert r.chunk_sizes() == [len(c) for c in chunks] and r.verify() == []
        assert r.data_start == len(new) - sum(map(len, chunks))


def test_packed_index_damage_is_named():
    data = bytearray(pack(META, CHUNKS))
    with pytest.raises(TruncatedError, match="slice 2 of 3"):
        BmzReader(bytes(data[:-1]))  # the last chunk runs past the end
    data[-1] ^= 0xFF
    with pytest.raises(ChecksumError, match="slice 2 of 3") as e:
        read_all(bytes(data))
    assert e.value.slice_index == 2
    mlen = struct.unpack_from("<Q", data, 16)[0]
    index_pos = 32 + mlen + 4
    data = bytearray(pack(META, CHUNKS))
    data[index_pos] ^= 1  # a chunk length: the index CRC catches it
    with pytest.raises(ChecksumError, match="slice index"):
        BmzReader(bytes(data))
    # a forged index (CRC recomputed) whose lengths run past the data
    forged = craft(minor=1, flags=1, entries=[(5, crc(b"abcde")), (2**32 - 1, 0)], chunks=[])
    with pytest.raises(TruncatedError, match="slice 0 of 2"):
        BmzReader(forged + b"abcd")


def test_packed_index_with_trailing_bytes_and_ancillary_flags():
    data = craft(minor=1, flags=0x00010001, chunks=[b"xy", b"z"], tail=b"ignored")
    with BmzReader(data) as r:
        assert [r.chunk(0), r.chunk(1)] == [b"xy", b"z"] and r.flags == 0x00010001


# --- version 1.2: the attachment after the last chunk -------------------------------------------


def test_attachment_round_trip_and_version(tmp_path):
    chunks = [b"ab", b"", b"cde"]
    plain = pack(META, chunks)
    with_att = pack(META, chunks, attachment=b"kept bytes")
    assert with_att.endswith(b"cde" + b"kept bytes")
    with BmzReader(with_att) as r:
        assert r.version == C.ATTACHMENT_VERSION == (1, 2) and r.has_attachment
        assert r.attachment() == b"kept bytes" and r.verify_attachment()
        assert [r.chunk(k) for k in range(3)] == chunks
        assert r.meta["attachment"] == {"length": 10, "crc32": crc(b"kept bytes")}
    with BmzReader(plain) as r:  # without one: version 1.1, the same bytes as ever
        assert r.version == (1, 1) and not r.has_attachment and r.attachment() is None
    assert pack(META, []) == pack(META, [], attachment=None)
    # a path (atomic) and an empty attachment
    with BmzWriter(tmp_path / "a.bmz", META, 1, attachment=b"") as w:
        w.add(b"x")
    with BmzReader(tmp_path / "a.bmz") as r:
        assert r.attachment() == b"" and r.version == (1, 2)


def test_attachment_damage_is_named():
    data = bytearray(pack(META, CHUNKS, attachment=b"0123456789"))
    with pytest.raises(TruncatedError, match="attachment"):
        BmzReader(bytes(data[:-1]))
    data[-1] ^= 0xFF
    with BmzReader(bytes(data)) as r:  # the slices stay readable
        assert r.chunk(2) == CHUNKS[2] and r.verify() == [] and not r.verify_attachment()
        with pytest.raises(ChecksumError, match="attachment"):
            r.attachment()
    with pytest.raises(ValueError, match="reserved"):
        pack({**META, "attachment": 1}, [])
    forged = pack({"x": 1}, [])  # a malformed "attachment" key is a FormatError
    with pytest.raises(FormatError, match="attachment"):
        BmzReader(craft(meta_blob=xz(json.dumps({"attachment": {"length": -1}}).encode())))
    assert BmzReader(forged).attachment() is None
