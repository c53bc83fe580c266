"""docs/FORMAT.md §10.6 against bmz: an independent decoder written from the specification alone
(tools/spec_residual_decoder.py: plain Python, nothing from bmz.codec.residual*) decodes residual
streams and bounded chunks that bmz wrote — format 3 (nlmix1) lossless and δ = 2, with and
without a base layer, every bounded-error conformance file (formats 3 and 6; the learned ones are
skipped here with that reason: tests/test_spec_decoder.py), and format-6 groups (nlmix3d1: 0x02,
0x05 and a constant slice handing on) — to the same voxels as bmz's decoder, bit for bit. Small slices: the
specification decoder is slow."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from bmz.codec import residual, residual3d
from bmz.codec.chunks import bounded, bounded_inter
from bmz.codec.pipeline import mapping_for_range

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "tests" / "conformance"


def _load_spec():
    spec = importlib.util.spec_from_file_location("spec_residual_decoder",
                                                  ROOT / "tools" / "spec_residual_decoder.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


sd = _load_spec()
C1, C3 = sd.Coder(three_d=False), sd.Coder(three_d=True)


def _volume(n=4, h=32, w=32, seed=0):
    """Smooth structure, noise and a flat dark border: every context kind gets used."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    vol = []
    for k in range(n):
        s = 600 + 400 * np.sin(xx / 4.0 + k / 3) * np.cos(yy / 6.0) + rng.normal(0, 12, (h, w))
        s[:, :3] = 0
        s[h - 4:, :] = rng.integers(0, 4, (4, w))
        vol.append(s)
    return np.clip(np.rint(vol), 0, 1500).astype(np.uint16)


def _np(r):
    return np.array(r, dtype=np.int64)


def test_doc_tables_and_coder_names_match_the_implementation():
    """The names §10.6.3 defines are the CODER_IDs, and the table hashes it lists are the
    shipped arrays'; the squash / stretch / rate tables built from the text are bmz's."""
    assert C1.name() == residual.CODER_ID
    assert C3.name() == residual3d.CODER_ID
    doc = (ROOT / "docs" / "FORMAT.md").read_text()
    for c in (C1, C3):
        for k, a in c.arrays.items():
            h = hashlib.sha256(np.ascontiguousarray(a, dtype="<i8").tobytes()).hexdigest()
            assert f"`{h}`" in doc, k
    for f in ("residual_tables.npz", "residual3d_tables.npz"):
        h = hashlib.sha256((ROOT / "bmz" / "codec" / f).read_bytes()).hexdigest()
        assert h in doc, f
    assert sd.STRETCH == residual.STRETCH.tolist()
    assert [sd.RATE_FAST, sd.RATE_SLOW] == residual.RATES.tolist()
    assert [sd.squash(d) for d in range(-2100, 2100, 7)] == \
        [residual._squash_py(d) for d in range(-2100, 2100, 7)]


@pytest.mark.parametrize("delta", [0, 2])
@pytest.mark.parametrize("with_base", [False, True])
def test_format3_stream_decodes_like_bmz(delta, with_base):
    s = _volume(1)[0].astype(np.int64)
    S = int(s.max())
    base = None
    if with_base:  # any array in [0, S] serves as a base layer for the residual coder
        rng = np.random.default_rng(1)
        base = np.clip(s + rng.integers(-25, 26, s.shape), 0, S)
    data, rec = residual.encode(s, S, delta, base)
    r, _, _ = sd.decode_slice(data, *s.shape, S, delta, C1,
                              b=None if base is None else base.tolist())
    assert np.array_equal(_np(r), rec)
    assert np.array_equal(_np(r), residual.decode(data, s.shape, S, delta, base))
    assert int(np.abs(_np(r) - s).max()) <= delta


@pytest.mark.parametrize("delta", [0, 2])
def test_format3_chunk_decodes_like_bmz(delta):
    """Whole 0x02 chunks (header, residual stream, CRC-32 of the reconstruction)."""
    vol = _volume(2, 24, 40, seed=3) + 100
    mapping = mapping_for_range(int(vol.min()), int(vol.max()))
    enc = bounded.BoundedEncoder(None, mapping, delta, base_quality=0)
    for s in vol:
        chunk = enc.encode_slice(s)
        assert chunk[0] == bounded.KIND
        ours = _np(sd.decode_chunk3(chunk, s.shape, mapping["scale"], delta, C1)) + mapping["min"]
        theirs = bounded.decode_chunk(chunk, s.shape, mapping, delta, lambda: None)
        assert np.array_equal(ours, theirs)
        assert int(np.abs(ours - s.astype(np.int64)).max()) <= delta


def _conformance(name):
    from bmz.bitstream import BmzReader

    rec = json.loads((CONF / "conformance.json").read_text())[name]
    with BmzReader((CONF / name).read_bytes()) as rd:
        meta = rd.meta
        chunks = [rd.chunk(k) for k in range(rd.n_slices)]
    return rec, meta, chunks


#: the chunk formats tools/spec_residual_decoder.py implements: the bounded-error ones (§10.6)
SPEC_FORMATS = (3, 6)
RECORD = json.loads((CONF / "conformance.json").read_text())


def _bases(meta, chunks):
    """The learned base layer (values − min, lists) of every chunk that holds one, decoded by
    bmz's learned decoder (§10.1; not the residual decoder's part), else None."""
    codec = meta["codec"]
    if not any(c[0] == bounded.KIND and c[1] for c in chunks):
        return [None] * len(chunks)
    pytest.importorskip("torch")
    from bmz.codec import zoo

    try:
        model, _ = zoo.load_model(codec["model"], codec["weights_sha256"])
    except Exception as e:  # noqa: BLE001 # pragma: no cover - weights not installed
        pytest.skip(f"weights of the base layer unavailable: {e}")
    shape, mapping = tuple(meta["shape"][-2:]), meta["intensity"]
    return [bounded.base_layer(c, shape, mapping, lambda: model)[0].tolist()
            if c[0] == bounded.KIND and c[1] else None for c in chunks]


def _decode_file(meta, chunks, bases):
    """A format-3 or format-6 file's array (values, int64) by the specification decoder, with the
    base layers ``bases`` (:func:`_bases`)."""
    codec, inten = meta["codec"], meta["intensity"]
    fmt, delta, S, vmin = codec["chunk_format"], codec["max_error"], inten["scale"], inten["min"]
    coder = C1 if fmt == 3 else C3
    assert codec["residual"] == coder.name()
    shape = tuple(meta["shape"][-2:])
    if fmt == 3:
        out = [np.full(shape, int.from_bytes(c[1:9], "little", signed=True) - vmin, np.int64)
               if c[0] == 0 else _np(sd.decode_chunk3(c, shape, S, delta, C1, bases[k]))
               for k, c in enumerate(chunks)]
    else:
        G, out = codec["group"], []
        for a in range(0, len(chunks), G):
            out += sd.decode_group6(chunks[a:a + G], shape, S, delta, C3, vmin, bases[a:a + G])
    return np.array(out, dtype=np.int64) + vmin


@pytest.mark.parametrize("name", sorted(RECORD))
def test_conformance_file_decodes_to_its_record(name):
    """Every bounded-error conformance file (formats 3 and 6, lossless and δ = 2, with and without
    a base layer, container 1.2) by the specification decoder: its residual streams by
    §10.6 alone, its base layers (if any) by bmz's learned decoder."""
    rec = RECORD[name]
    if rec["chunk_format"] not in SPEC_FORMATS:
        pytest.skip(f"tools/spec_residual_decoder.py does not implement chunk format "
                    f"{rec['chunk_format']} (learned chunks: tests/test_spec_decoder.py)")
    _, meta, chunks = _conformance(name)
    bases = _bases(meta, chunks)
    if "_base_" in name:  # the files made to carry one (..._base_qN.bmz) really do
        assert any(b is not None for b in bases)
    arr = np.ascontiguousarray(_decode_file(meta, chunks, bases).astype(np.dtype(rec["dtype"])))
    assert list(arr.shape) == rec["shape"]
    assert hashlib.sha256(arr.tobytes()).hexdigest() == rec["decoded_sha256"]


@pytest.mark.parametrize("delta", [0, 2])
def test_format6_group_decodes_like_bmz(delta):
    """A group of five: 0x02, 0x05, a constant slice (hands on its value, a zero error map and
    the initial state), 0x05, 0x05 — the carried state, error map and previous slice included."""
    vol = _volume(5, 24, 32, seed=5).astype(np.int64)
    vol[2] = 700  # constant
    mapping = mapping_for_range(int(vol.min()), int(vol.max()))
    enc = bounded_inter.GroupEncoder(None, mapping, delta, base_quality=0, group=5)
    chunks = [enc.encode_slice(s) for s in vol]
    assert [c[0] for c in chunks] == [2, 5, 0, 5, 5]
    ours = sd.decode_group6(chunks, vol.shape[1:], mapping["scale"], delta, C3, mapping["min"])
    prev = None
    for k, c in enumerate(chunks):
        if c[0] == 0:
            prev = bounded_inter.constant_context(700 - mapping["min"], vol.shape[1:])
            theirs = np.full(vol.shape[1:], 700)
        else:
            theirs, prev = bounded_inter.decode_chunk(c, vol.shape[1:], mapping, delta,
                                                      lambda: None, prev)
        assert np.array_equal(_np(ours[k]) + mapping["min"], theirs), k
        assert int(np.abs(theirs - vol[k]).max()) <= delta


@pytest.mark.parametrize("delta", [0, 2])
def test_format6_base_reference_decodes_like_bmz(delta):
    """nlmix3d1 with the base-layer reference (σ = 0), then a 0x05 slice after it."""
    vol = _volume(2, 32, 32, seed=7).astype(np.int64)
    S = int(vol.max())
    base = np.clip(vol[0] + np.random.default_rng(2).integers(-25, 26, vol[0].shape), 0, S)
    d0, c0 = residual3d.encode(vol[0], S, delta, base)
    d1, c1 = residual3d.encode(vol[1], S, delta, prev=c0)
    r0, e0, st = sd.decode_slice(d0, 32, 32, S, delta, C3, b=base.tolist())
    assert np.array_equal(_np(r0), c0.rec) and np.array_equal(_np(e0), c0.err)
    r1, e1, _ = sd.decode_slice(d1, 32, 32, S, delta, C3, prev=(r0, e0), state=st)
    assert np.array_equal(_np(r1), c1.rec) and np.array_equal(_np(e1), c1.err)


def test_a_wrong_constant_or_a_damaged_stream_is_caught():
    """The comparison can fail: the specification decoder with one threshold changed no longer
    decodes bmz's stream (wrong voxels or CRC), and a damaged chunk fails its CRC."""
    vol = _volume(1, 24, 40, seed=9)
    mapping = mapping_for_range(int(vol.min()), int(vol.max()))
    chunk = bounded.BoundedEncoder(None, mapping, 0, base_quality=0).encode_slice(vol[0])
    S = mapping["scale"]
    sd.decode_chunk3(chunk, vol.shape[1:], S, 0, C1)  # decodes as is
    bad = bytearray(chunk)
    bad[len(bad) // 2] ^= 0x10
    with pytest.raises(ValueError):
        sd.decode_chunk3(bytes(bad), vol.shape[1:], S, 0, C1)
    saved = sd.E_TH[:]
    try:
        sd.E_TH[3] += 1
        with pytest.raises(ValueError):
            sd.decode_chunk3(chunk, vol.shape[1:], S, 0, C1)
    finally:
        sd.E_TH[:] = saved


@pytest.mark.parametrize("coder", [residual, residual3d])
def test_a_stream_whose_first_byte_is_not_0_is_refused(coder):
    """§10.2 / §10.6.4: encoders always write 0 first (no carry reaches that byte); a reader
    refuses a stream where it is not 0, by bmz's decoder and by the specification's."""
    s = _volume(1, 16, 16)[0].astype(np.int64)
    data = coder.encode(s, 1500, 0)[0]
    assert data[0] == 0
    forged = b"\x01" + data[1:]
    with pytest.raises(ValueError, match="first byte"):
        coder.decode(forged, s.shape, 1500, 0)
    with pytest.raises(sd.Invalid, match="first byte"):
        sd.decode_slice(forged, 16, 16, 1500, 0, C3 if coder is residual3d else C1)
